#!/usr/bin/env bash
# Installs what `lode run` needs on Debian bookworm: QEMU 10 from
# bookworm-backports (plain bookworm's 7.2 would replace the backports
# qemu-utils), and busybox-static. Uses the machine's configured Debian mirror.
set -euo pipefail
if command -v qemu-system-x86_64 >/dev/null 2>&1 && command -v xz >/dev/null 2>&1 && dpkg -s busybox-static >/dev/null 2>&1; then exit 0; fi
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
URI=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
if [ -n "$URI" ] && ! apt-cache policy 2>/dev/null | grep -q bookworm-backports; then
  printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' "$URI" \
    | $SUDO tee /etc/apt/sources.list.d/lode-backports.sources >/dev/null
fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq -t bookworm-backports --no-install-recommends \
  qemu-system-x86 qemu-system-common qemu-system-data seabios busybox-static xz-utils
