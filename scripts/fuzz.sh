#!/usr/bin/env bash
# Fuzzes every parser of untrusted input with cargo fuzz (libFuzzer, nightly).
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# Runs each target (default: all of `cargo fuzz list`) for SECONDS (default
# 60), starting from fuzz/corpus/<target> (checked-in seed-* files plus what
# earlier runs found), with debug assertions and overflow checks on. Fails if
# any target crashes; the crashing input is in fuzz/artifacts/<target>/ and
# the log in fuzz/logs/<target>.log. Reproduce with
#   cargo +nightly fuzz run -a TARGET fuzz/artifacts/TARGET/crash-...
# and shrink with `cargo +nightly fuzz tmin -a TARGET ...`.
# The same bodies run on stable in `cargo test -p lode-fuzz` (CI).
set -euo pipefail
cd "$(dirname "$0")/.."

secs=${1:-60}
shift || true

if ! rustup toolchain list | grep -q '^nightly'; then
    rustup toolchain install nightly --profile minimal
fi
if ! cargo +nightly fuzz --help >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

if [ $# -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo +nightly fuzz list)
fi

cargo +nightly fuzz build -a

mkdir -p fuzz/logs
failed=()
for t in "${targets[@]}"; do
    echo "== $t: ${secs}s"
    set +e
    cargo +nightly fuzz run -a "$t" -- \
        -max_total_time="$secs" -timeout=30 -rss_limit_mb=4096 \
        -print_final_stats=1 >"fuzz/logs/$t.log" 2>&1
    rc=$?
    set -e
    grep -E '^stat::number_of_executed_units|^#[0-9]+ +DONE' "fuzz/logs/$t.log" | tail -2 || true
    if [ $rc -ne 0 ]; then
        echo "!! $t failed (exit $rc); see fuzz/logs/$t.log and fuzz/artifacts/$t/"
        grep -E 'panicked at|ERROR: |SUMMARY' "fuzz/logs/$t.log" | head -5 || true
        failed+=("$t")
    fi
done

if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzzing found crashes in: ${failed[*]}"
    exit 1
fi
echo "all ${#targets[@]} targets ran ${secs}s each without a crash"
