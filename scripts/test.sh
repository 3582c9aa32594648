#!/usr/bin/env bash
# Runs lode's whole test suite on a fresh Debian machine: installs what the
# tests drive (e2fsprogs, skopeo, umoci, ...) and then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
for pair in e2fsck:e2fsprogs skopeo:skopeo umoci:umoci; do
  cmd=${pair%%:*}; pkg=${pair##*:}
  command -v "$cmd" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing: ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi

cargo test --workspace "$@"
