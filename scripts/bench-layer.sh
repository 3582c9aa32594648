#!/usr/bin/env bash
# Layer-stable overhead (issue 14 item 4): what an image whose top layer
# differs from a sibling's adds to a chunk store, for two lode binaries side
# by side in one run.
#
#   scripts/bench-layer.sh [--baseline LODE] [--lode LODE] [--keep]
#
# For each binary (the baseline first, when given; --lode defaults to
# target/release/lode, or $CARGO_TARGET_DIR/release/lode), flattens the
# corpus images app-a, app-b and app-c (python + a pip top layer each) at one
# size, checks each with e2fsck -fn, and counts app-b's and app-c's non-zero
# 512 KiB chunks not among app-a's (scripts/chunkdiff.py). Targets: the top
# layer's regular files in whole 4 KiB blocks + 2 MiB (issue 14), and for
# app-b also its file bytes + 2 MiB (docs/benchmarks.md §3). Prints markdown;
# images go to $LODE_BENCH (default target/bench) and are deleted unless
# --keep. Needs the corpus (sudo scripts/corpus.sh app-a app-b app-c).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

BASELINE=""
LODE=${CARGO_TARGET_DIR:-$REPO/target}/release/lode
KEEP=0
while [ $# -gt 0 ]; do
  case $1 in
    --baseline) BASELINE=$2; shift ;;
    --lode) LODE=$2; shift ;;
    --keep) KEEP=1 ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "bench-layer.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done

CORPUS=$(realpath "${LODE_CORPUS:-target/corpus}")
mkdir -p "${LODE_BENCH:-target/bench}"
BENCH=$(realpath "${LODE_BENCH:-target/bench}")
CHUNKDIFF="python3 $REPO/scripts/chunkdiff.py"
for i in app-a app-b app-c; do
  [ -f "$CORPUS/$i/index.json" ] || { echo "bench-layer.sh: no $CORPUS/$i; run sudo scripts/corpus.sh app-a app-b app-c" >&2; exit 1; }
done
for bin in $BASELINE "$LODE"; do
  [ -x "$bin" ] || { echo "bench-layer.sh: $bin is not an executable lode" >&2; exit 1; }
done

# layer_stats NAME -> "files dirs file_bytes rounded_bytes" of the layer blob.
layer_stats() {
  python3 - "$CORPUS/layers/$1.blob" <<'EOF'
import sys, tarfile
files = dirs = size = rounded = 0
with tarfile.open(sys.argv[1], "r:*") as t:
    for m in t:
        if m.isdir():
            dirs += 1
        elif m.isreg():
            files += 1
            size += m.size
            rounded += (m.size + 4095) // 4096 * 4096
print(files, dirs, size, rounded)
EOF
}
mib() { python3 -c "import sys; print(f'{int(sys.argv[1]) / 2**20:.2f}')" "$1"; }
ratio() { python3 -c "import sys; print(f'{int(sys.argv[1]) / int(sys.argv[2]):.2f}')" "$1" "$2"; }
field() { python3 -c 'import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"; }

# One size for every image: the largest any binary picks by itself.
size=0
declare -A OUT
n=0
for bin in $BASELINE "$LODE"; do
  n=$((n + 1))
  for i in app-a app-b app-c; do
    f=$BENCH/layer.$n.$i.ext4
    "$bin" flatten "oci:$CORPUS/$i:latest" -o "$f" >/dev/null 2>"$f.log" || { cat "$f.log" >&2; exit 1; }
    s=$(stat -c %s "$f"); [ "$s" -le "$size" ] || size=$s
    OUT[$n.$i]=$f
  done
done
n=0
for bin in $BASELINE "$LODE"; do
  n=$((n + 1))
  for i in app-a app-b app-c; do
    f=${OUT[$n.$i]}
    [ "$(stat -c %s "$f")" -eq "$size" ] || "$bin" flatten "oci:$CORPUS/$i:latest" -o "$f" --size "$size" >/dev/null 2>"$f.log" || { cat "$f.log" >&2; exit 1; }
    rm -f "$f.log"
    e2fsck -fn "$f" >"$f.fsck.log" 2>&1 || { echo "bench-layer.sh: e2fsck failed on $f (see $f.fsck.log)" >&2; exit 1; }
    rm -f "$f.fsck.log"
  done
done

echo "Every image $(mib "$size") MiB; e2fsck -fn clean. New chunks: the image's non-zero 512 KiB chunks not among app-a's."
echo ""
echo "| lode | image | top layer: files, dirs | file bytes (MiB) | in 4 KiB blocks (MiB) | new chunks | new MiB | × (blocks + 2 MiB) | meets | × (file bytes + 2 MiB) |"
echo "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |"
n=0
for bin in $BASELINE "$LODE"; do
  n=$((n + 1))
  label=$([ -n "$BASELINE" ] && [ "$n" -eq 1 ] && echo "baseline" || echo "this")
  for i in app-b app-c; do
    read -r files dirs bytes rounded < <(layer_stats "$i")
    res=$($CHUNKDIFF --json "${OUT[$n.app-a]}" "${OUT[$n.$i]}")
    chunks=$(field "$res" new_distinct_not_in_base)
    ub=$(field "$res" unique_bytes)
    target=$((rounded + 2 * 1048576))
    echo "| $label (\`$(basename "$bin")\`) | $i | $files, $dirs | $(mib "$bytes") | $(mib "$rounded") | $chunks | $(mib "$ub") | $(ratio "$ub" "$target") | $([ "$ub" -le "$target" ] && echo yes || echo no) | $(ratio "$ub" $((bytes + 2 * 1048576))) |"
  done
done
[ "$KEEP" -eq 1 ] || rm -f "$BENCH"/layer.*.ext4
