#!/usr/bin/env bash
# Flatten benchmarks: lode flatten side by side with mkfs.ext4 -d, in one run.
#
#   scripts/bench-flatten.sh [--runs N] [--skip-corpus]
#
# Prints markdown (also saved to $LODE_BENCH/results.md, default
# target/bench) with three benchmarks:
#   1. throughput: lode flatten of the `big` corpus image vs mkfs.ext4 -d of
#      the same merged tree, same image size, best of N (default 3)
#   2. peak RSS of both (/usr/bin/time -v)
#   3. dedup: bytes of app-b's 512 KiB chunks (non-zero) not among app-a's
#      chunks, for lode, mkfs.ext4 1.47.0 -d (fixed UUID/hash seed/time),
#      mke2fs 1.47.2 -d LAYER-ORDERED.tar (bookworm-backports, private
#      copy, system e2fsprogs untouched) and mkext4 0.0.3 (crates.io)
# SECTIONS="1 2 3" (the default) picks the benchmarks to run.
# Needs root for the corpus build (scripts/corpus.sh); the benchmark itself
# writes only under $LODE_BENCH.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

RUNS=3
SKIP_CORPUS=0
while [ $# -gt 0 ]; do
  case $1 in
    --runs) RUNS=$2; shift ;;
    --skip-corpus) SKIP_CORPUS=1 ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "bench-flatten.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done

mkdir -p "${LODE_CORPUS:-target/corpus}" "${LODE_BENCH:-target/bench}"
CORPUS=$(realpath "${LODE_CORPUS:-target/corpus}")
BENCH=$(realpath "${LODE_BENCH:-target/bench}")
TOOLS=$REPO/target/tools
LODE=$REPO/target/release/lode
OCI="python3 $REPO/scripts/ocilayout.py"
CHUNKDIFF="python3 $REPO/scripts/chunkdiff.py"
RESULTS=$BENCH/results.md
EPOCH=1704067200
FIXED_UUID=6c6f6465-0000-4000-8000-000000000001
FIXED_SEED=6c6f6465-0000-4000-8000-000000000002

log() { printf '\033[1m== %s\033[0m\n' "$*" >&2; }
out() { printf '%s\n' "$*" | tee -a "$RESULTS"; }
now() { date +%s.%N; }
# mb BYTES SECONDS -> MB/s (10^6 bytes)
mbps() { python3 -c "import sys; print(f'{int(sys.argv[1]) / 1e6 / float(sys.argv[2]):.0f}')" "$1" "$2"; }
mib() { python3 -c "import sys; print(f'{int(sys.argv[1]) / 2**20:.1f}')" "$1"; }
ratio() { python3 -c "import sys; a, b = float(sys.argv[1]), float(sys.argv[2]); print(f'{a / b:.2f}' if b else 'n/a')" "$1" "$2"; }
jq_() { python3 -c "import json, sys; d = json.load(open(sys.argv[1])); print(eval(sys.argv[2], {}, {'d': d}))" "$@"; }

# ---------------------------------------------------------------- setup

ensure_tools() {
  local need=()
  [ -x /usr/bin/time ] || need+=(time)
  command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
  command -v zstd >/dev/null || need+=(zstd)
  ldconfig -p | grep -q 'libarchive\.so\.13' || need+=(libarchive13)
  if [ ${#need[@]} -gt 0 ]; then
    log "installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
  fi
}

# e2fsprogs 1.47.2 from bookworm-backports, unpacked into $TOOLS/e2fsprogs-bpo
# with a private apt configuration: the system's e2fsprogs and apt sources
# are not touched. The mirror is the one this machine's apt uses.
MKE2FS_BPO=""
ensure_e2fs_backports() {
  local dir=$TOOLS/e2fsprogs-bpo apt=$TOOLS/apt-bpo mirror
  MKE2FS_BPO=$dir/sbin/mke2fs
  if [ -x "$MKE2FS_BPO" ] && bpo_mke2fs -V >/dev/null 2>&1; then return; fi
  log "e2fsprogs from bookworm-backports (private copy)"
  mirror=$(awk '/^URIs:/ { print $2; exit }' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  [ -n "$mirror" ] || mirror=$(awk '$1 == "deb" { print $2; exit }' /etc/apt/sources.list)
  rm -rf "$apt" "$dir"
  mkdir -p "$apt/parts" "$apt/lists/partial" "$apt/cache/archives/partial" "$apt/debs" "$dir"
  printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
    "$mirror" >"$apt/parts/backports.sources"
  local o=(-o "Dir::Etc::SourceList=/dev/null" -o "Dir::Etc::SourceParts=$apt/parts"
           -o "Dir::State::Lists=$apt/lists" -o "Dir::Cache=$apt/cache" -o APT::Sandbox::User=root)
  apt-get "${o[@]}" update -qq
  (cd "$apt/debs" && apt-get "${o[@]}" download -qq e2fsprogs/bookworm-backports libext2fs2/bookworm-backports)
  local deb
  for deb in "$apt"/debs/*.deb; do dpkg-deb -x "$deb" "$dir"; done
  [ -x "$MKE2FS_BPO" ] || { echo "no mke2fs in the backports e2fsprogs" >&2; exit 1; }
}
bpo_mke2fs() {
  local d=$TOOLS/e2fsprogs-bpo
  LD_LIBRARY_PATH=$d/lib/x86_64-linux-gnu:$d/usr/lib/x86_64-linux-gnu MKE2FS_CONFIG=$d/etc/mke2fs.conf \
    "$d/sbin/mke2fs" "$@"
}

# mkext4 0.0.3 is a library; its examples/mkfs.rs is the `mke2fs -d`
# equivalent. Built from crates.io into $TOOLS/mkext4-mkfs (optional).
MKEXT4=""
ensure_mkext4() {
  local crate=$TOOLS/mkext4-mkfs
  MKEXT4=$crate/target/release/mkext4-mkfs
  [ -x "$MKEXT4" ] && return
  log "building mkext4 0.0.3's mkfs example"
  mkdir -p "$crate/src"
  cat >"$crate/Cargo.toml" <<'EOF'
[package]
name = "mkext4-mkfs"
version = "0.0.0"
edition = "2021"
publish = false

[dependencies]
mkext4 = "=0.0.3"

[workspace]
EOF
  echo 'fn main() {}' >"$crate/src/main.rs"
  if ! (cd "$crate" && cargo fetch -q); then MKEXT4=""; return; fi
  local src
  src=$(cd "$crate" && cargo metadata --format-version 1 -q |
        python3 -c 'import json, sys; print([p["manifest_path"] for p in json.load(sys.stdin)["packages"] if p["name"] == "mkext4"][0])')
  cp "$(dirname "$src")/examples/mkfs.rs" "$crate/src/main.rs"
  (cd "$crate" && cargo build --release -q) || MKEXT4=""
}

# ---------------------------------------------------------------- helpers

# best_of N OUTFILE CMD...: runs CMD N times (OUTFILE removed before each
# run), prints the best wall time in seconds. The time includes fsync of
# OUTFILE (`sync FILE`): lode and mke2fs sync their output themselves,
# mkext4's example does not, and unsynced page cache is not an image yet.
best_of() {
  local n=$1 outf=$2; shift 2
  local best="" i t0 t1 t
  for ((i = 0; i < n; i++)); do
    rm -f "$outf"
    sync
    t0=$(now); "$@" >/dev/null 2>&1; sync "$outf"; t1=$(now)
    t=$(python3 -c "print(f'{$t1 - $t0:.3f}')")
    echo "    run $((i + 1)): $t s" >&2
    if [ -z "$best" ] || python3 -c "import sys; sys.exit(not ($t < $best))"; then best=$t; fi
  done
  echo "$best"
}

# peak_rss_kib CMD...: peak RSS of CMD in KiB.
peak_rss_kib() {
  local f=$BENCH/time-v.txt
  /usr/bin/time -v -o "$f" "$@" >/dev/null 2>&1
  awk -F': ' '/Maximum resident set size/ { print $2 }' "$f"
}

lode_flatten() { "$LODE" flatten "$@"; }
# mkfs_d TREE OUT SIZE: mkfs.ext4 1.47.0 -d with fixed UUID, hash seed and time.
mkfs_d() {
  truncate -s "$3" "$2"
  E2FSPROGS_FAKE_TIME=$EPOCH SOURCE_DATE_EPOCH=$EPOCH \
    mkfs.ext4 -q -F -b 4096 -O ^has_journal -U "$FIXED_UUID" -E "root_owner=0:0,hash_seed=$FIXED_SEED" -d "$1" "$2"
}
mkfs_tar_bpo() {
  truncate -s "$3" "$2"
  E2FSPROGS_FAKE_TIME=$EPOCH SOURCE_DATE_EPOCH=$EPOCH \
    bpo_mke2fs -q -F -t ext4 -b 4096 -O ^has_journal -U "$FIXED_UUID" -E "root_owner=0:0,hash_seed=$FIXED_SEED" -d "$1" "$2"
}
mkext4_d() { "$MKEXT4" "$1" "$2" "$3"; }
export -f mkfs_d mkfs_tar_bpo bpo_mke2fs
export EPOCH FIXED_UUID FIXED_SEED TOOLS

# extract IMAGE: merged, layer-ordered tar and its extracted tree under $BENCH/IMAGE.
extract() {
  local img=$1 d=$BENCH/$1
  if [ -f "$d/.done" ]; then return; fi
  log "extracting $img (merged tree, OCI whiteouts applied)"
  rm -rf "$d"; mkdir -p "$d/tree"
  $OCI merged "$CORPUS/$img" "$d/merged.tar" >&2
  # Directories come before entries that later layers add to them: restore
  # their times only at the end.
  tar -xpf "$d/merged.tar" -C "$d/tree" --numeric-owner --delay-directory-restore
  $OCI stats "$CORPUS/$img" >"$d/stats.json"
  touch "$d/.done"
}

# ---------------------------------------------------------------- benchmarks

machine() {
  local cpu mem kern fs
  cpu=$(lscpu | awk -F': *' '/^Model name/ { print $2; exit }')
  mem=$(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo)
  kern=$(uname -r)
  fs=$(df -T "$BENCH" | awk 'NR == 2 { print $2 }')
  out "Machine: $(nproc) × $cpu, $mem RAM, Linux $kern, $(. /etc/os-release; echo "$PRETTY_NAME"), output on $fs (page cache warm)."
  out "Load average at start: $(cut -d' ' -f1-3 /proc/loadavg) (other work on the machine shows up here; runs are interleaved so it hits every tool alike)."
  out "lode $(git -C "$REPO" rev-parse --short HEAD)$(git -C "$REPO" diff --quiet HEAD -- crates 2>/dev/null || echo '+changes'), $(mkfs.ext4 -V 2>&1 | head -1), backports $(bpo_mke2fs -V 2>&1 | head -1)."
  out ""
}

bench_throughput() {
  local img=big
  extract "$img"
  local d=$BENCH/$img bytes files size t_lode t_plain t_mkfs t_tar t_mkext4 img_out=$BENCH/$img.lode.ext4
  bytes=$(jq_ "$d/stats.json" 'd["tar_bytes"]')
  files=$(jq_ "$d/stats.json" 'd["file_bytes"]')
  lode_flatten "oci:$CORPUS/$img:latest" -o "$img_out" >/dev/null 2>&1   # warm-up, and the size
  size=$(stat -c %s "$img_out")
  e2fsck -fn "$img_out" >"$BENCH/$img.fsck.log" 2>&1 || { echo "e2fsck failed on lode's $img image, see $BENCH/$img.fsck.log" >&2; exit 1; }
  # The same image with uncompressed layers: lode without gzip/zstd.
  local plain=$BENCH/$img.plain
  [ -f "$plain/index.json" ] || $OCI decompress "$CORPUS/$img" "$plain" >&2
  local mk_out=$BENCH/$img.mkfs.ext4 tar_out=$BENCH/$img.tar.ext4 mx_out=$BENCH/$img.mkext4.ext4
  mkfs_d "$d/tree" "$mk_out" "$size"   # warm the tree's page cache
  # Runs are interleaved (round i of every tool, then round i+1) so that
  # whatever else the machine does hits every tool alike.
  local tools=(lode plain mkfs tar) t i
  [ -z "$MKEXT4" ] || tools+=(mkext4)
  declare -A best=()
  for ((i = 1; i <= RUNS; i++)); do
    for t in "${tools[@]}"; do
      log "throughput: round $i/$RUNS: $t"
      case $t in
        lode) best[$t]=$(best_of 1 "$img_out" lode_flatten "oci:$CORPUS/$img:latest" -o "$img_out") ;;
        plain) best[$t]=$(best_of 1 "$img_out" lode_flatten "oci:$plain:latest" -o "$img_out") ;;
        mkfs) best[$t]=$(best_of 1 "$mk_out" mkfs_d "$d/tree" "$mk_out" "$size") ;;
        tar) best[$t]=$(best_of 1 "$tar_out" mkfs_tar_bpo "$d/merged.tar" "$tar_out" "$size") ;;
        mkext4) best[$t]=$(best_of 1 "$mx_out" mkext4_d "$d/tree" "$mx_out" "$size") ;;
      esac
      echo "${best[$t]}" >>"$BENCH/runs.$t"
    done
  done
  for t in "${tools[@]}"; do best[$t]=$(sort -g "$BENCH/runs.$t" | head -1); rm -f "$BENCH/runs.$t"; done
  t_lode=${best[lode]} t_plain=${best[plain]} t_mkfs=${best[mkfs]} t_tar=${best[tar]} t_mkext4=${best[mkext4]:-}

  out "## 1. Flatten throughput: \`$img\` image"
  out ""
  out "Image \`$img\`: $(jq_ "$d/stats.json" 'len(d["layers"])') layers, $(mib "$bytes") MiB of uncompressed layer tar ($bytes bytes), $(mib "$files") MiB in regular files;"
  out "image size $(mib "$size") MiB for every tool. MB/s = uncompressed layer bytes / wall time (10^6 B/s), wall time up to the output being fsynced. Best of $RUNS interleaved rounds."
  out ""
  out "| tool | input | wall time (s) | MB/s | time vs lode |"
  out "| --- | --- | ---: | ---: | ---: |"
  out "| \`lode flatten\` | OCI layout (gzip + zstd layers, decompressed and digest-checked on the fly) | $t_lode | $(mbps "$bytes" "$t_lode") | 1.00 |"
  out "| \`lode flatten\` | the same OCI layout with uncompressed layers | $t_plain | $(mbps "$bytes" "$t_plain") | $(ratio "$t_plain" "$t_lode") |"
  out "| \`mkfs.ext4 -d\` 1.47.0 | extracted merged tree (extraction not timed) | $t_mkfs | $(mbps "$bytes" "$t_mkfs") | $(ratio "$t_mkfs" "$t_lode") |"
  out "| \`mke2fs -d merged.tar\` 1.47.2 | one uncompressed layer-ordered tar of the merged tree | $t_tar | $(mbps "$bytes" "$t_tar") | $(ratio "$t_tar" "$t_lode") |"
  [ -z "$t_mkext4" ] || out "| mkext4 0.0.3 (\`examples/mkfs.rs\`) | extracted merged tree | $t_mkext4 | $(mbps "$bytes" "$t_mkext4") | $(ratio "$t_mkext4" "$t_lode") |"
  out ""
  BIG_SIZE=$size
}

bench_rss() {
  local img=big d=$BENCH/big size=$BIG_SIZE
  log "peak RSS"
  local r_lode r_mkfs r_tar r_mkext4=""
  r_lode=$(peak_rss_kib "$LODE" flatten "oci:$CORPUS/$img:latest" -o "$BENCH/$img.lode.ext4")
  r_mkfs=$(peak_rss_kib bash -c '"$@"' _ mkfs_d "$d/tree" "$BENCH/$img.mkfs.ext4" "$size")
  r_tar=$(peak_rss_kib bash -c '"$@"' _ mkfs_tar_bpo "$d/merged.tar" "$BENCH/$img.tar.ext4" "$size")
  [ -z "$MKEXT4" ] || r_mkext4=$(peak_rss_kib "$MKEXT4" "$d/tree" "$BENCH/$img.mkext4.ext4" "$size")
  out "## 2. Peak RSS: flattening \`$img\` (the largest corpus image)"
  out ""
  out "\`/usr/bin/time -v\`, Maximum resident set size."
  out ""
  out "| tool | peak RSS (MiB) |"
  out "| --- | ---: |"
  out "| \`lode flatten\` | $(mib $((r_lode * 1024))) |"
  out "| \`mkfs.ext4 -d\` 1.47.0 | $(mib $((r_mkfs * 1024))) |"
  out "| \`mke2fs -d merged.tar\` 1.47.2 | $(mib $((r_tar * 1024))) |"
  [ -z "$r_mkext4" ] || out "| mkext4 0.0.3 | $(mib $((r_mkext4 * 1024))) |"
  out ""
}

bench_dedup() {
  local a=app-a b=app-b
  extract "$a"; extract "$b"
  log "dedup: $a vs $b"
  local la=$BENCH/dedup.$a.lode.ext4 lb=$BENCH/dedup.$b.lode.ext4 sa sb size
  lode_flatten "oci:$CORPUS/$a:latest" -o "$la" >/dev/null 2>&1
  lode_flatten "oci:$CORPUS/$b:latest" -o "$lb" >/dev/null 2>&1
  sa=$(stat -c %s "$la"); sb=$(stat -c %s "$lb")
  size=$((sa > sb ? sa : sb))
  if [ "$sa" -ne "$sb" ]; then
    lode_flatten "oci:$CORPUS/$a:latest" -o "$la" --size "$size" >/dev/null 2>&1
    lode_flatten "oci:$CORPUS/$b:latest" -o "$lb" --size "$size" >/dev/null 2>&1
  fi
  local f
  for f in "$la" "$lb"; do
    e2fsck -fn "$f" >"$f.fsck.log" 2>&1 || { echo "e2fsck failed on $f, see $f.fsck.log" >&2; exit 1; }
  done
  mkfs_d "$BENCH/$a/tree" "$BENCH/dedup.$a.mkfs.ext4" "$size"
  mkfs_d "$BENCH/$b/tree" "$BENCH/dedup.$b.mkfs.ext4" "$size"
  mkfs_tar_bpo "$BENCH/$a/merged.tar" "$BENCH/dedup.$a.tar.ext4" "$size"
  mkfs_tar_bpo "$BENCH/$b/merged.tar" "$BENCH/dedup.$b.tar.ext4" "$size"
  if [ -n "$MKEXT4" ]; then
    mkext4_d "$BENCH/$a/tree" "$BENCH/dedup.$a.mkext4.ext4" "$size"
    mkext4_d "$BENCH/$b/tree" "$BENCH/dedup.$b.mkext4.ext4" "$size"
  fi
  local top_bytes
  top_bytes=$(jq_ "$BENCH/$b/stats.json" 'd["layers"][-1]["file_bytes"]')
  local target=$((top_bytes + 2 * 1048576))

  out "## 3. Dedup: \`$a\` → \`$b\` (same base + python layers, different top layer)"
  out ""
  out "Bytes of $b's 512 KiB chunks (all-zero chunks excluded) whose content is not among $a's chunks"
  out "(\`scripts/chunkdiff.py A B\`, distinct chunks × 512 KiB). Every image $(mib "$size") MiB."
  out "$b's top layer holds $(mib "$top_bytes") MiB ($top_bytes bytes) in regular files; lode's target is ≤ that + 2 MiB = $(mib "$target") MiB."
  out ""
  out "| tool | $b chunks (non-zero) | not in $a | new bytes (MiB) | × top-layer file bytes | meets lode target |"
  out "| --- | ---: | ---: | ---: | ---: | --- |"
  local tool name res n u ub
  for tool in lode:"\`lode flatten\`" mkfs:"\`mkfs.ext4 -d\` 1.47.0 (merged tree)" tar:"\`mke2fs -d merged.tar\` 1.47.2 (layer-ordered tar)" mkext4:"mkext4 0.0.3 (merged tree)"; do
    name=${tool%%:*}
    [ -f "$BENCH/dedup.$b.$name.ext4" ] || continue
    res=$($CHUNKDIFF --json "$BENCH/dedup.$a.$name.ext4" "$BENCH/dedup.$b.$name.ext4")
    n=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["new_chunks_nonzero"])' "$res")
    u=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["new_distinct_not_in_base"])' "$res")
    ub=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["unique_bytes"])' "$res")
    out "| ${tool#*:} | $n | $u | $(mib "$ub") | $(ratio "$ub" "$top_bytes") | $([ "$ub" -le "$target" ] && echo yes || echo no) |"
  done
  out ""
}

# ---------------------------------------------------------------- main

ensure_tools
[ "$SKIP_CORPUS" -eq 1 ] || "$REPO/scripts/corpus.sh" big app-a app-b
log "building lode (release)"
cargo build --release -q -p lode-cli
ensure_e2fs_backports
ensure_mkext4
: >"$RESULTS"
out "# lode flatten benchmarks ($(date -u +%Y-%m-%d))"
out ""
out "Command: \`scripts/bench-flatten.sh --runs $RUNS\`"
out ""
machine
SECTIONS=${SECTIONS:-1 2 3}
case " $SECTIONS " in *" 1 "*) bench_throughput ;; esac
case " $SECTIONS " in *" 2 "*) bench_rss ;; esac
case " $SECTIONS " in *" 3 "*) bench_dedup ;; esac
out "Load average at end: $(cut -d' ' -f1-3 /proc/loadavg)."
log "results in $RESULTS"
