#!/usr/bin/env bash
# Micro-VM boot + command: `lode run --via nbd` vs `--via vhost-user` on the
# same image, interleaved (results: docs/benchmarks.md, "NBD vs
# vhost-user-blk"). Each round runs, per via, a cold start (empty host disk
# cache) then a warm one (the same cache), and prints the timings line.
#
#   scripts/bench-vm-via.sh        (after scripts/demo.sh pushed app-a)
#
# Env: IMAGE (app-a), TENANT (demo), STORE (the default store), REPS (4),
# LODE (target/release/lode), CMD (the demo app's command).
set -euo pipefail
cd "$(dirname "$0")/.."
LODE=${LODE:-target/release/lode}
IMAGE=${IMAGE:-app-a}
TENANT=${TENANT:-demo}
REPS=${REPS:-4}
CMD=${CMD:-env PYTHONDONTWRITEBYTECODE=1 python3 /app/app.py}
store=(); [ -n "${STORE:-}" ] && store=(--store "$STORE")
[ -x "$LODE" ] || cargo build --release -p lode-cli
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
for i in $(seq "$REPS"); do
  for via in nbd vhost-user; do
    for mode in cold warm; do
      [ "$mode" = cold ] && rm -rf "$work/cache-$via"
      # shellcheck disable=SC2086
      err=$("$LODE" run "$IMAGE" --tenant "$TENANT" "${store[@]}" --cache-dir "$work/cache-$via" \
        --via "$via" -- $CMD 2>&1 >/dev/null) || { echo "$via $mode $i failed: $err" >&2; exit 1; }
      echo "$via $mode $i: $(sed -n 's/^lode run: //p' <<<"$err")"
    done
  done
done
