#!/usr/bin/env bash
# Runs lode's whole test suite on a fresh Debian machine: installs what the
# tests drive (e2fsprogs, skopeo, umoci, ...) and then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

# Every stage names itself, and a failure names the stage it broke in.
STAGE="start"
stage() { STAGE="$*"; echo "== scripts/test.sh: $STAGE ($(date -u +%H:%M:%S))"; }
trap 'echo "scripts/test.sh: FAILED in stage: $STAGE" >&2' ERR

# A full disk kills the linker with SIGBUS, far from the cause: say up front
# how much room the build has (a fresh target needs about 5 GB).
stage "checking disk space"
mkdir -p target
avail_kb=$(df -Pk target | awk 'NR==2 {print $4}')
df -h target | sed 's/^/  /'
if [ "${avail_kb:-0}" -lt $((6 * 1024 * 1024)) ]; then
  echo "scripts/test.sh: warning: only $((avail_kb / 1024)) MiB free for target/; a fresh build needs about 5 GB" >&2
fi

stage "installing test dependencies (apt, PyPI)"

need_apt=()
# openssl: test certificates for NBD over TLS; setpriv/prlimit: socket
# isolation under other uids and fd-limit tests of the agent; fio: the
# agent's benchmarks (crates/lode-cli/benches/service); docker-registry and
# htpasswd: the registry (docker://) ingest tests, a real distribution
# registry on loopback with TLS and basic auth.
for pair in time:time e2fsck:e2fsprogs skopeo:skopeo umoci:umoci qemu-img:qemu-utils qemu-io:qemu-utils nbdinfo:libnbd-bin nbdfuse:libnbd-bin fusermount3:fuse3 bsdtar:libarchive-tools openssl:openssl setpriv:util-linux prlimit:util-linux fio:fio docker-registry:docker-registry htpasswd:apache2-utils; do
  cmd=${pair%%:*}; pkg=${pair##*:}
  # `time` is a shell keyword: the tests need the program /usr/bin/time.
  [ "$cmd" = time ] && cmd=/usr/bin/time
  command -v "$cmd" >/dev/null 2>&1 || need_apt+=("$pkg")
done

# A Python venv with moto, the S3-compatible server the chunk-store tests run
# against (crates/lode-store/tests/store_support/store_s3.rs), and the real
# AWS clients the function tests drive (boto3, which moto brings, and the AWS
# CLI; crates/lode-cli/tests/common_lambda). Installed from PyPI on first use.
MOTO_VENV=/opt/lode-test-venv
have_venv() {
  [ -x "$MOTO_VENV/bin/moto_server" ] && [ -x "$MOTO_VENV/bin/aws" ] &&
    "$MOTO_VENV/bin/python3" -c 'import boto3, moto.server' >/dev/null 2>&1
}
if ! have_venv; then
  need_apt+=(python3 python3-venv)
fi
# pip: the worker's Python runtime test (crates/lode-cli/tests/worker_vm.rs)
# installs AWS's runtime interface client (awslambdaric) from PyPI with
# `pip install --target` and boots it on this host's Python.
python3 -m pip --version >/dev/null 2>&1 || [ -x "$MOTO_VENV/bin/pip" ] || need_apt+=(python3-pip)

SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing: ${need_apt[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi
# memcached: the AZ cache fleet tests run plain memcached servers as nodes
# (crates/lode-cli/tests/fleet_memcached.rs, crates/lode-fleet/tests/tier_conformance.rs,
# scripts/bench-fleet.sh).
command -v memcached >/dev/null 2>&1 || { $SUDO apt-get update -qq; DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends memcached; }
if ! have_venv; then
  echo "installing moto[server], boto3 and the AWS CLI into $MOTO_VENV (PyPI)"
  [ -x "$MOTO_VENV/bin/pip" ] || $SUDO python3 -m venv "$MOTO_VENV"
  $SUDO "$MOTO_VENV/bin/pip" install -q --disable-pip-version-check 'moto[server]>=5,<6' 'boto3>=1.34' 'awscli>=1.32' ||
    { echo "scripts/test.sh: installing the test venv from PyPI failed" >&2; exit 1; }
fi
export PATH="$MOTO_VENV/bin:$PATH"

# QEMU, busybox-static and xz for the micro-VM end-to-end tests (tests/vm_e2e.rs).
stage "installing the micro-VM dependencies (scripts/vm-deps.sh)"
./scripts/vm-deps.sh
# The VM tests boot the kernel package apt serves today, prepared from
# nothing (no cached .deb) on every run: what CI boots is what a new user gets.
rm -rf target/tmp/lode-vm

stage "building and running the workspace tests (cargo test --workspace)"
cargo test --workspace "$@"
stage "done"
