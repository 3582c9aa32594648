#!/usr/bin/env bash
# Image life-cycle benchmarks (issue 12), all measured in one run:
#
#   1. store bytes before and after `lode rm` + `lode gc` on the corpus images,
#      against the same live images pushed to an empty store;
#   2. requests and time of one GC pass as the store grows (it must scale with
#      live manifests plus listed objects);
#   3. migration throughput against push throughput.
#
#   scripts/bench-gc.sh [--sizes "10 100 1000"] [--mib N]
#
# Needs the corpus images debian, python, app-a, app-b (scripts/corpus.sh;
# LODE_CORPUS moves it). Prints markdown tables, also saved to
# ${LODE_BENCH:-target/bench}/gc.md.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZES="10 100 1000"
MIB=1024
while [ $# -gt 0 ]; do
  case $1 in
    --sizes) SIZES=$2; shift 2 ;;
    --mib) MIB=$2; shift 2 ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "bench-gc.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
cargo build --release -q -p lode-cli
L=$(realpath "${CARGO_TARGET_DIR:-target}/release/lode")
CORPUS=$(realpath "${LODE_CORPUS:-target/corpus}")
OUT=${LODE_BENCH:-target/bench}
mkdir -p "$OUT"
W=$(mktemp -d "${TMPDIR:-/var/tmp}/lode-bench-gc.XXXX")
trap 'rm -rf "$W"' EXIT
export LODE_HOME="$W/home"
REPORT="$OUT/gc.md"
: >"$REPORT"
say() { echo "$@" | tee -a "$REPORT"; }

# objects BYTES of a local store (lock file and staging files excluded); $2: only chunks
census() {
  local filter=(-type f ! -name .lode-cas.lock)
  [ "${2:-}" = chunks ] && filter+=(-path '*/chunks/*')
  find "$1" "${filter[@]}" -printf '%s\n' 2>/dev/null | awk '{n++; s+=$1} END {printf "%d %d\n", n, s}'
}
# field of a `lode gc --json` report
field() { python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); v=r
for k in sys.argv[2].split("."): v=v[k]
print(v)' "$1" "$2"; }
gc_pass() { local store=$1 json=$2; shift 2; $L gc --store "$store" --json "$@" >"$json"; }
requests() { python3 -c 'import json,sys; q=json.load(open(sys.argv[1]))["requests"]
tot=q["gets"]+q["heads"]+q["puts"]+max(q["lists"],-(-q["listed"]//1000))+(-(-q["deletes"]//1000))+q["copies"]
print(tot, q["gets"], q["heads"], q["puts"], q["lists"], q["listed"], q["deletes"])' "$1"; }
mib() { python3 -c "print(f'{$1/2**20:.1f}')"; }

say "# lode gc benchmarks — $(date -u +%Y-%m-%d), lode $(git rev-parse --short HEAD)"
say ""
say "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load $(cut -d' ' -f1-3 /proc/loadavg)"
say ""

# ------------------------------------------------------------------ 1. corpus
say "## 1. Store bytes before and after rm + gc (corpus images)"
say ""
for img in debian python app-a app-b; do
  [ -d "$CORPUS/$img" ] || { echo "bench-gc.sh: no corpus image $img in $CORPUS (run scripts/corpus.sh)" >&2; exit 1; }
  $L flatten "oci:$CORPUS/$img:latest" -o "$W/$img.img" >/dev/null
done
S=$W/corpus-store
for img in debian python app-a app-b; do $L push "ext4:$W/$img.img" --tenant t --name "$img" --store "$S" >/dev/null; done
$L push "ext4:$W/app-a.img" --tenant u --name app-a --store "$S" >/dev/null
read -r pn pb < <(census "$S"); read -r pcn pcb < <(census "$S" chunks)
$L rm python --tenant t --store "$S" >/dev/null
$L rm app-b --tenant t --store "$S" >/dev/null
read -r rn rb < <(census "$S"); read -r rcn rcb < <(census "$S" chunks)
gc_pass "$S" "$W/gc1.json" --rotate-after 0s --retire-after 0s --expire-after 0s
read -r g1n g1b < <(census "$S"); read -r g1cn g1cb < <(census "$S" chunks)
gc_pass "$S" "$W/gc2.json" --retire-after 0s --expire-after 0s
read -r g2n g2b < <(census "$S"); read -r g2cn g2cb < <(census "$S" chunks)
R=$W/reference-store
for img in debian app-a; do $L push "ext4:$W/$img.img" --tenant t --name "$img" --store "$R" >/dev/null; done
$L push "ext4:$W/app-a.img" --tenant u --name app-a --store "$R" >/dev/null
read -r fn fb < <(census "$R"); read -r fcn fcb < <(census "$R" chunks)
say "Images: t/debian, t/python, t/app-a, t/app-b, u/app-a (flattened from \`$CORPUS\`); then \`lode rm\` of t/python and t/app-b; then \`lode gc --rotate-after 0s --retire-after 0s --expire-after 0s\` and \`lode gc --retire-after 0s --expire-after 0s\`. Reference: the three live images pushed to an empty store."
say ""
say "| stage | objects | MiB | chunk objects | chunk MiB | ÷ reference |"
say "| --- | ---: | ---: | ---: | ---: | ---: |"
ratio() { python3 -c "print(f'{$1/$2:.3f}')"; }
say "| after 5 pushes | $pn | $(mib "$pb") | $pcn | $(mib "$pcb") | $(ratio "$pb" "$fb") |"
say "| after 2 × rm | $rn | $(mib "$rb") | $rcn | $(mib "$rcb") | $(ratio "$rb" "$fb") |"
say "| after gc pass 1 (rotate, migrate 3 images, expire old root) | $g1n | $(mib "$g1b") | $g1cn | $(mib "$g1cb") | $(ratio "$g1b" "$fb") |"
say "| after gc pass 2 (delete old root, unreferenced manifests) | $g2n | $(mib "$g2b") | $g2cn | $(mib "$g2cb") | $(ratio "$g2b" "$fb") |"
say "| reference: live images pushed to an empty store | $fn | $(mib "$fb") | $fcn | $(mib "$fcb") | 1.000 |"
say ""
say "gc pass 1: $(field "$W/gc1.json" migration.images) images migrated, $(field "$W/gc1.json" migration.chunks_reencrypted) chunks re-encrypted ($(mib "$(field "$W/gc1.json" migration.bytes_reencrypted)") MiB), $(field "$W/gc1.json" migration.chunks_shared) chunk references shared, $(field "$W/gc1.json" seconds | cut -c1-5) s, $(requests "$W/gc1.json" | cut -d' ' -f1) requests; pass 2: $(field "$W/gc2.json" seconds | cut -c1-5) s, $(requests "$W/gc2.json" | cut -d' ' -f1) requests, $(requests "$W/gc2.json" | cut -d' ' -f7) objects deleted."
say ""
rm -rf "$W"/*.img "$S" "$R"

# ------------------------------------------------------------------ 2. scaling
say "## 2. One GC pass as the store grows"
say ""
say "Each store: N live images (one 64 KiB chunk each, unique), 10 % of them pushed twice (an unreferenced older manifest each) and 10 % more pushed and removed. *quiet*: a pass with nothing to do (\`--retire-after 1d --expire-after 1d\`); *rotating*: a pass that rotates and migrates every image (\`--rotate-after 0s\`). Requests = GET + HEAD + PUT + listing pages (1,000 per page) + delete batches."
say ""
say "| live images | objects | quiet: requests | GET/HEAD/PUT/LIST | listed | per live image | s | rotating: requests | GET/HEAD/PUT/LIST | per live image | s |"
say "| ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | --- | ---: | ---: |"
for n in $SIZES; do
  S=$W/scale-$n
  extra=$(( n / 10 ))
  for i in $(seq 1 $((n + extra))); do
    head -c 65536 /dev/urandom >"$W/one.img"
    $L push "ext4:$W/one.img" --tenant t --name "img-$i" --store "$S" >/dev/null
  done
  for i in $(seq 1 "$extra"); do
    head -c 65536 /dev/urandom >"$W/one.img"
    $L push "ext4:$W/one.img" --tenant t --name "img-$i" --store "$S" >/dev/null
    $L rm "img-$((n + i))" --tenant t --store "$S" >/dev/null
  done
  read -r on _ < <(census "$S")
  gc_pass "$S" "$W/q.json" --retire-after 1d --expire-after 1d
  read -r qt qg qh qp ql qd _ < <(requests "$W/q.json")
  gc_pass "$S" "$W/r.json" --rotate-after 0s --retire-after 1d --expire-after 1d
  read -r rt rg rh rp rl _ _ < <(requests "$W/r.json")
  say "| $n | $on | $qt | $qg/$qh/$qp/$ql | $qd | $(python3 -c "print(f'{$qt/$n:.2f}')") | $(field "$W/q.json" seconds | cut -c1-5) | $rt | $rg/$rh/$rp/$rl | $(python3 -c "print(f'{$rt/$n:.2f}')") | $(field "$W/r.json" seconds | cut -c1-5) |"
  rm -rf "$S"
done
say ""

# ------------------------------------------------------------------ 3. throughput
say "## 3. Migration throughput against push throughput"
say ""
say "One ${MIB} MiB image of random data (no holes, no dedup): pushed to an empty local store, then migrated by \`lode gc --rotate-after 0s\` (read, verify, decrypt, re-encrypt under the new salt, store). Best of 2 rounds, interleaved."
say ""
head -c $((MIB * 1024 * 1024)) /dev/urandom >"$W/random.img"
sync
best_push=0; best_mig=0
for round in 1 2; do
  S=$W/tp-$round
  t0=$(date +%s.%N)
  $L push "ext4:$W/random.img" --tenant t --name r --store "$S" >/dev/null
  t1=$(date +%s.%N)
  push=$(python3 -c "print($MIB*1024**2/1e6/($t1-$t0))")
  gc_pass "$S" "$W/m.json" --rotate-after 0s --retire-after 1d --expire-after 1d
  mig=$(python3 -c "import json; r=json.load(open('$W/m.json')); print(r['migration']['bytes_reencrypted']/1e6/r['seconds'])")
  echo "round $round: push $(printf %.0f "$push") MB/s, migration $(printf %.0f "$mig") MB/s" >&2
  best_push=$(python3 -c "print(max($best_push,$push))"); best_mig=$(python3 -c "print(max($best_mig,$mig))")
  rm -rf "$S"
done
say "| operation | MB/s | ÷ push |"
say "| --- | ---: | ---: |"
say "| push (read, encrypt, store) | $(printf %.0f "$best_push") | 1.00 |"
say "| migration (read, verify, decrypt, re-encrypt, store) | $(printf %.0f "$best_mig") | $(python3 -c "print(f'{$best_mig/$best_push:.2f}')") |"
say ""
echo "saved to $REPORT" >&2
