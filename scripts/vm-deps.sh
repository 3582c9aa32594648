#!/usr/bin/env bash
# Installs what `lode run` needs on Debian bookworm: QEMU 10 from
# bookworm-backports (plain bookworm's 7.2 would replace the backports
# qemu-utils), busybox-static and xz. Uses the machine's configured Debian
# mirror. Also keeps apt's package lists fresh (under 6 hours old): `lode vm
# prepare` reads them to find today's kernel package, and a stale list names
# a package the mirror no longer has.
set -euo pipefail
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
URI=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
added=0
if [ -n "$URI" ] && [ ! -f /etc/apt/sources.list.d/lode-backports.sources ] && ! apt-cache policy 2>/dev/null | grep -q bookworm-backports; then
  printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' "$URI" \
    | $SUDO tee /etc/apt/sources.list.d/lode-backports.sources >/dev/null
  added=1
fi
# Fresh lists: none newer than 6 hours, or a source just added.
if [ "$added" -eq 1 ] || [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*_Packages*' -mmin -360 2>/dev/null | head -n 1)" ]; then
  echo "vm-deps: apt-get update"
  $SUDO apt-get update -qq
fi
if command -v qemu-system-x86_64 >/dev/null 2>&1 && command -v xz >/dev/null 2>&1 && dpkg -s busybox-static >/dev/null 2>&1; then exit 0; fi
echo "vm-deps: installing QEMU (bookworm-backports), busybox-static, xz"
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq -t bookworm-backports --no-install-recommends \
  qemu-system-x86 qemu-system-common qemu-system-data seabios busybox-static xz-utils
