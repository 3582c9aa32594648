#!/usr/bin/env bash
# Local agent benchmarks, on the >= 1 GiB `big` corpus image (results and
# method: docs/bench-agent.md):
#
#   1. cold lazy reads (lode cat of a few files, empty cache) vs "download
#      everything first", store behind 20 ms per GET and 100 MB/s;
#   2. warm-cache NBD throughput, lode agent vs qemu-nbd serving the same raw
#      image (lode pull output): nbdcopy sequential, fio 4 KiB random reads;
#   3. a real start-up (mount the export's ext4 through nbdfuse + loop, then
#      `python3 -c 'import pandas'` chrooted in it) with --prefetch none vs
#      --prefetch recorded, empty cache, 20 ms + 100 MB/s store.
#
#   4. ("disk") disk-warm reads (issue 14 item 2): lode agent with an 8 MiB
#      memory tier reading its warm disk cache, and with every chunk in
#      memory, vs qemu-nbd on the same raw image; fio's nbd engine,
#      sequential 1 MiB at iodepth 8 and 4 KiB random at iodepth 16 with p99
#      latency; optionally an older lode binary side by side (LODE_BEFORE).
#
#   scripts/bench-agent.sh        (root; builds the corpus first if missing)
#   SECTIONS=disk LODE_BEFORE=/path/to/old/lode scripts/bench-agent.sh
#                                 (no corpus: an ext4 image of /usr/share and
#                                 /usr/bin, or IMAGE=raw-or-ext4-file)
#
# Variants compared are measured side by side in the same run, interleaved,
# REPS times (default 3); tables give every run, then medians and ratios.
# Env: SECTIONS (default "1 2 3 diag disk"; e.g. SECTIONS=2 for the warm-cache
# comparison alone), REPS, FIO_SECS (default 5), LATENCY_MS (20), BANDWIDTH (100000000),
# LODE_CORPUS (target/corpus), BENCH_WORKDIR (default: a temp dir, deleted),
# LODE_BEFORE (section disk: another lode binary to compare), IMAGE (section
# disk alone: the image to serve), CARGO_TARGET_DIR (where the build goes).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
REPS=${REPS:-3}
SECTIONS=${SECTIONS:-"1 2 3 diag disk"}
want() { [[ " $SECTIONS " == *" $1 "* ]]; }
FIO_SECS=${FIO_SECS:-5}
LAT=${LATENCY_MS:-20}
BW=${BANDWIDTH:-100000000}
CORPUS=${LODE_CORPUS:-target/corpus}
T0=$(date +%s)

if [ "$(id -u)" -ne 0 ]; then
  echo "bench-agent.sh: needs root (loop and FUSE mounts, chroot)" >&2
  exit 1
fi
need=()
for pair in nbdcopy:libnbd-bin nbdfuse:libnbd-bin fusermount3:fuse3 qemu-nbd:qemu-utils qemu-img:qemu-utils fio:fio curl:curl losetup:mount; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair##*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
fio --enghelp 2>/dev/null | grep -qw nbd || { echo "bench-agent.sh: this fio has no nbd ioengine" >&2; exit 1; }
# Sections 1-3 and diag read the corpus's `big` image; "disk" alone does not.
CORPUS_SECTIONS=0
for s in 1 2 3 diag; do want "$s" && CORPUS_SECTIONS=1; done
[ "$CORPUS_SECTIONS" = 0 ] || [ -d "$CORPUS/big" ] || scripts/corpus.sh big

cargo build --release -q -p lode-cli
[ "$CORPUS_SECTIONS" = 0 ] || cargo build --release -q -p lode-agent --example bench_agent --example concurrent_cold_reads
BIN=${CARGO_TARGET_DIR:-$REPO/target}/release
L=$BIN/lode
E=$BIN/examples/bench_agent

if [ -n "${BENCH_WORKDIR:-}" ]; then
  W=$BENCH_WORKDIR; mkdir -p "$W"; KEEP=1
else
  W=$(mktemp -d "${TMPDIR:-/var/tmp}/lode-bench-agent.XXXX"); KEEP=0
fi
W=$(realpath "$W")
export LODE_HOME=$W/home
export LODE_LOG=${LODE_LOG:-info} NO_COLOR=1
STORE=$W/store
PIDS=()
MNT=$W/mnt FUSE=$W/fuse LOOP="" NBDFUSE=""
mkdir -p "$MNT" "$FUSE"

unmount_start() {
  mountpoint -q "$MNT" && umount "$MNT" || true
  [ -n "$LOOP" ] && losetup -d "$LOOP" 2>/dev/null || true
  LOOP=""
  mountpoint -q "$FUSE" && { fusermount3 -u "$FUSE" 2>/dev/null || fusermount -u "$FUSE" 2>/dev/null || umount -l "$FUSE"; } || true
  [ -n "$NBDFUSE" ] && stop "$NBDFUSE"
  NBDFUSE=""
}
stop() { # stop PID (one we started), wait for it, forget it
  local p keep=()
  kill "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
  for p in "${PIDS[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
  PIDS=("${keep[@]}")
}
cleanup() {
  unmount_start
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  [ "$KEEP" = 1 ] || rm -rf "$W"
}
trap cleanup EXIT

now_ns() { date +%s%N; }
ms_since() { echo $(( ($(now_ns) - $1) / 1000000 )); }
median() { sort -g | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a/b}'; }
cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
TCK=$(getconf CLK_TCK)
metric() { # PORT 'series{labels}' -> value (0 if absent)
  curl -s "http://127.0.0.1:$1/metrics" | awk -v k="$2 " 'index($0, k) == 1 {v = substr($0, length(k) + 1)} END {print v + 0}'
}
PORT_BASE=$((20000 + RANDOM % 20000))
start_agent() { # NAME SOCK CACHEDIR PORT extra-args... ; sets AGENT (binary: $AGENT_BIN, default $L)
  local name=$1 sock=$2 cache=$3 port=$4; shift 4
  rm -f "$sock"
  "${AGENT_BIN:-$L}" agent --listen "unix:$sock" --dev-open-exports --state-dir "$W/state-$name" --control "unix:$W/ctl-$name.sock" --store "$STORE" --cache-dir "$cache" --overlay-dir "$W/overlays" \
    --metrics "127.0.0.1:$port" "$@" >"$W/$name.log" 2>&1 &
  AGENT=$!
  PIDS+=("$AGENT")
  for _ in $(seq 200); do
    [ -S "$sock" ] && curl -s "http://127.0.0.1:$port/metrics" >/dev/null 2>&1 && return 0
    sleep 0.05
  done
  echo "agent $name did not start:" >&2; cat "$W/$name.log" >&2; exit 1
}

echo "# lode agent benchmarks"
echo
echo "- machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $(awk '/MemTotal/ {printf "%.0f GiB RAM", $2/1048576}' /proc/meminfo), kernel $(uname -r), $(. /etc/os-release; echo "$PRETTY_NAME")"
echo "- load average at start: $(cut -d' ' -f1-3 /proc/loadavg) (the machine is shared: compare ratios, not absolute numbers)"
echo "- tools: $(nbdcopy --version | head -1), $(qemu-nbd --version | head -1), $(fio --version), $(nbdfuse --version 2>&1 | head -1)"
echo "- lode $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$REPO" diff --quiet 2>/dev/null || echo ' (+ uncommitted changes)'), REPS=$REPS, store tier: ${LAT} ms per GET, ${BW} B/s"
echo

if [ "$CORPUS_SECTIONS" = 1 ]; then
# ------------------------------------------------------------------ image
"$L" flatten "oci:$CORPUS/big:latest" -o "$W/big.img" >/dev/null 2>&1
"$L" push "ext4:$W/big.img" --tenant bench --name big --store "$STORE" >"$W/push.log" 2>&1
"$L" pull big --tenant bench --store "$STORE" -o "$W/raw.img" 2>>"$W/push.log"
cmp "$W/big.img" "$W/raw.img"
rm -f "$W/big.img"
SIZE=$(stat -c %s "$W/raw.img")
CHUNKS=$(( (SIZE + 524287) / 524288 ))
STORED=$(sed -n 's/.*uploaded \([0-9]*\), bytes uploaded \([0-9]*\).*/\1 \2/p' "$W/push.log")
UNIQUE=${STORED% *}; STORED_BYTES=${STORED#* }
# The data region: the image's first extent (layer sections are laid out from the start; the tail is holes).
DATA_END=$(qemu-img map -f raw --output=json "$W/raw.img" | python3 -c 'import json,sys; m=json.load(sys.stdin); print(m[0]["length"] if m and m[0]["data"] and m[0]["start"] == 0 else 0)')
HOLE_LEN=$(( SIZE - DATA_END < DATA_END ? SIZE - DATA_END : DATA_END ))
echo "Image: \`big\` (python + toolchain + sci layers), $(awk -v s="$SIZE" 'BEGIN {printf "%.2f GiB", s/2^30}') ext4, $CHUNKS chunks of 512 KiB, $UNIQUE unique stored chunks ($(awk -v s="$STORED_BYTES" 'BEGIN {printf "%.2f GiB", s/2^30}')), the rest holes."
echo

WARMCACHE=$W/c-warm  # section 1 replaces it with its download-first cache
fi
# ------------------------------------------------------------------ 1
if want 1; then
FILES=(/etc/os-release /usr/bin/python3.11
       /usr/local/lib/python3.11/dist-packages/numpy/core/_multiarray_umath.cpython-311-x86_64-linux-gnu.so)
INJECT=(--inject-store-latency-ms "$LAT" --inject-store-bandwidth "$BW")
cats() { # CACHEDIR -> "chunks_fetched_from_store"; files to /dev/null
  local n=0 f c
  for f in "${FILES[@]}"; do
    c=$("$L" cat big "$f" --tenant bench --store "$STORE" --cache-dir "$1" "${INJECT[@]}" 2>&1 >/dev/null \
        | sed -n 's/.*chunks fetched \([0-9]*\) \/.*/\1/p')
    n=$((n + ${c:-0}))
  done
  echo "$n"
}
echo "## 1. Cold lazy reads vs download-first (store: ${LAT} ms per GET, $((BW / 1000000)) MB/s)"
echo
echo "Files: ${FILES[*]} (one \`lode cat\` process each, sharing one cache dir that starts empty)."
echo "Download-first = \`bench_agent fetch-all\` (every unique stored chunk through the same ChunkReader path, 16 in flight, into the disk cache) + the same \`lode cat\`s from that cache."
echo "Both slow the store with lode's \`Delayed\` tier (what \`--inject-store-*\` builds): ${LAT} ms per GET, GETs in flight waiting in parallel, then one shared $((BW / 1000000)) MB/s link."
echo
echo "| run | lazy: wall ms | lazy: chunks fetched | download-first: fetch s + cats ms |"
echo "| --- | ---: | ---: | ---: |"
LAZY=() LAZYC=() DL=()
for r in $(seq "$REPS"); do
  rm -rf "$W/c-lazy"
  t=$(now_ns); c=$(cats "$W/c-lazy"); lazy=$(ms_since "$t")
  row="| $r | $lazy | $c"
  rm -rf "$W/c-dl"
  t=$(now_ns)
  out=$("$E" fetch-all --store "$STORE" --tenant bench --name big --cache-dir "$W/c-dl" \
        --latency-ms "$LAT" --bandwidth "$BW" --concurrency 16)
  fetch=$(ms_since "$t")
  echo "$out" >>"$W/fetch-all.log"
  t=$(now_ns); c2=$(cats "$W/c-dl"); catms=$(ms_since "$t")
  [ "$c2" = 0 ] || echo "warning: cats after download fetched $c2 chunks" >&2
  total=$((fetch + catms))
  row="$row | $(awk -v f="$fetch" 'BEGIN {printf "%.1f", f/1000}') s + $catms ms = $(awk -v f="$total" 'BEGIN {printf "%.1f", f/1000}') s"
  DL+=("$total")
  LAZY+=("$lazy"); LAZYC+=("$c")
  echo "$row |"
done
rm -rf "$W/c-lazy"
mL=$(printf '%s\n' "${LAZY[@]}" | median); mC=$(printf '%s\n' "${LAZYC[@]}" | median)
mD=$(printf '%s\n' "${DL[@]}" | median)
echo
echo "| median | wall | chunks fetched | bytes fetched / image size | bytes fetched / stored bytes | download-first ÷ lazy |"
echo "| --- | ---: | ---: | ---: | ---: | ---: |"
echo "| lazy (\`lode cat\` ×${#FILES[@]}) | $mL ms | $mC / $CHUNKS | $(awk -v c="$mC" -v s="$SIZE" 'BEGIN {printf "%.2f %%", c*524288*100/s}') | $(awk -v c="$mC" -v s="$STORED_BYTES" 'BEGIN {printf "%.2f %%", c*524288*100/s}') | 1 |"
echo "| download-first | $mD ms | $UNIQUE / $CHUNKS | $(awk -v c="$STORED_BYTES" -v s="$SIZE" 'BEGIN {printf "%.1f %%", c*100/s}') | 100 % | **$(ratio "$mD" "$mL")×** |"
echo
echo "fetch-all lines: "; sed 's/^/    /' "$W/fetch-all.log"
echo
# The last download-first cache holds every chunk: reused below.
WARMCACHE=$W/c-dl

fi
# ------------------------------------------------------------------ 2
if want 2; then
echo "## 2. Warm cache: lode agent vs qemu-nbd, same raw image, same clients"
echo
S1=$W/lode-mem.sock S2=$W/lode-disk.sock Q=$W/qnbd.sock
start_agent lode-mem "$S1" "$WARMCACHE" $((PORT_BASE + 1)) --prefetch none --memory-cache 4G
AMEM=$AGENT
qemu-nbd -f raw -r -t -k "$Q" -e 8 "$W/raw.img" >"$W/qemu-nbd.log" 2>&1 &
QP=$!; PIDS+=("$QP")
for _ in $(seq 100); do [ -S "$Q" ] && break; sleep 0.05; done
U_MEM="nbd+unix:///bench/big?socket=$S1" U_DISK="nbd+unix:///bench/big?socket=$S2" U_Q="nbd+unix:///?socket=$Q"
# Warm up: every chunk into lode-mem's memory cache, the raw file into the page cache.
nbdcopy --no-extents "$U_MEM" null:
# Started after lode-mem's warm-up filled the disk cache (when section 1 did not).
start_agent lode-disk "$S2" "$WARMCACHE" $((PORT_BASE + 2)) --prefetch none
ADISK=$AGENT
nbdcopy --no-extents "$U_DISK" null:
cat "$W/raw.img" >/dev/null
memchunks=$(metric $((PORT_BASE + 1)) 'lode_cache_chunks{tier="memory"}')
echo "Warm-up done: lode-mem holds $memchunks / $UNIQUE chunks in memory (\`--memory-cache 4G\`); lode-disk (default 256 MiB memory cache) reads its chunks from the disk cache (page-cached ciphertext, re-hashed and decrypted on every read); qemu-nbd \`-f raw -r -t -e 8\` on the \`lode pull\` output, page-cached."
echo "Holes: $((CHUNKS - UNIQUE)) of $CHUNKS chunks ($(awk -v h=$((CHUNKS - UNIQUE)) -v c="$CHUNKS" 'BEGIN {printf "%.0f", h*100/c}') % of the image); the data region is the first $DATA_END bytes. Both servers negotiate structured replies with these libnbd clients and answer reads of holes with NBD_REPLY_TYPE_OFFSET_HOLE (no payload); both answer NBD_CMD_BLOCK_STATUS (base:allocation), which the \`seqext\` case uses to skip holes."
echo
declare -A SRV_PID=([lode-mem]=$AMEM [lode-disk]=$ADISK [qemu-nbd]=$QP)
declare -A SRV_URI=([lode-mem]=$U_MEM [lode-disk]=$U_DISK [qemu-nbd]=$U_Q)
declare -A RES
run_case() { # CASE SERVER -> prints "value cpu_s"
  local case=$1 srv=$2 uri=${SRV_URI[$2]} pid=${SRV_PID[$2]} c0 t v
  c0=$(cpu_ticks "$pid"); t=$(now_ns)
  case $case in
    seq1) nbdcopy -C 1 --no-extents "$uri" null:; v=$(awk -v s="$SIZE" -v t=$(( $(now_ns) - t )) 'BEGIN {printf "%.0f", s/1e6/(t/1e9)}') ;;
    seqext) nbdcopy "$uri" null:; v=$(awk -v s="$SIZE" -v t=$(( $(now_ns) - t )) 'BEGIN {printf "%.0f", s/1e6/(t/1e9)}') ;;
    seqdef) nbdcopy --no-extents "$uri" null:; v=$(awk -v s="$SIZE" -v t=$(( $(now_ns) - t )) 'BEGIN {printf "%.0f", s/1e6/(t/1e9)}') ;;
    seqdata|seqholes)
      local off=0 len=$DATA_END; [ "$case" = seqholes ] && off=$((SIZE - HOLE_LEN)) len=$HOLE_LEN
      v=$(fio --name=s --ioengine=nbd --uri="$uri" --rw=read --bs=256k --iodepth=16 --offset="$off" --size="$len" \
            --output-format=terse --terse-version=3 2>/dev/null | awk -F';' 'NF > 40 {printf "%.0f", $7*1024/1e6}') ;;
    rand|randdata)
      local sz=$SIZE; [ "$case" = randdata ] && sz=$DATA_END
      v=$(fio --name=r --ioengine=nbd --uri="$uri" --rw=randread --bs=4k --iodepth=16 --runtime="$FIO_SECS" \
            --time_based --size="$sz" --output-format=terse --terse-version=3 2>/dev/null \
          | awk -F';' 'NF > 40 {printf "%.0f", $8}') ;;
  esac
  echo "$v $(awk -v c=$(( $(cpu_ticks "$pid") - c0 )) -v k="$TCK" 'BEGIN {printf "%.2f", c/k}')"
}
CASES=(seq1 seqdef seqext seqdata seqholes rand randdata)
declare -A CASE_NAME=(
  [seq1]="sequential, whole image: \`nbdcopy -C 1 --no-extents URI null:\` (MB/s)"
  [seqdef]="sequential, whole image: \`nbdcopy --no-extents URI null:\`, nbdcopy's default connections (MB/s)"
  [seqext]="sequential, whole image: \`nbdcopy URI null:\` (default: extents from BLOCK_STATUS skip holes) (MB/s)"
  [seqdata]="sequential 256 KiB reads, data region only (first $(awk -v s="$DATA_END" 'BEGIN {printf "%.2f GiB", s/2^30}')): fio nbd engine, iodepth 16 (MB/s)"
  [seqholes]="sequential 256 KiB reads, hole region only (last $(awk -v s="$HOLE_LEN" 'BEGIN {printf "%.2f GiB", s/2^30}')): fio nbd engine, iodepth 16 (MB/s)"
  [rand]="4 KiB random reads, whole image: fio nbd engine, iodepth 16, ${FIO_SECS} s (IOPS)"
  [randdata]="4 KiB random reads, data region only (first $(awk -v s="$DATA_END" 'BEGIN {printf "%.2f GiB", s/2^30}'), no holes): fio as above (IOPS)"
)
declare -A CASE_SRVS=([seq1]="lode-mem lode-disk qemu-nbd" [seqdef]="lode-mem qemu-nbd" [seqext]="lode-mem qemu-nbd" [seqdata]="lode-mem qemu-nbd" [seqholes]="lode-mem qemu-nbd" [rand]="lode-mem lode-disk qemu-nbd" [randdata]="lode-mem qemu-nbd")
for c in "${CASES[@]}"; do
  echo "### ${CASE_NAME[$c]}"
  echo
  srvs=(${CASE_SRVS[$c]})
  hdr="| run"; sep="| ---"
  for s in "${srvs[@]}"; do hdr="$hdr | $s | $s CPU s"; sep="$sep | ---: | ---:"; done
  echo "$hdr |"; echo "$sep |"
  for r in $(seq "$REPS"); do
    row="| $r"
    # Alternate the order each run.
    order=("${srvs[@]}"); [ $((r % 2)) = 0 ] && order=($(printf '%s\n' "${srvs[@]}" | tac))
    for s in "${order[@]}"; do RES[$c.$s.$r]=$(run_case "$c" "$s"); done
    for s in "${srvs[@]}"; do set -- ${RES[$c.$s.$r]}; row="$row | $1 | $2"; done
    echo "$row |"
  done
  row="| median"
  for s in "${srvs[@]}"; do
    m=$(for r in $(seq "$REPS"); do set -- ${RES[$c.$s.$r]}; echo "$1"; done | median)
    mc=$(for r in $(seq "$REPS"); do set -- ${RES[$c.$s.$r]}; echo "$2"; done | median)
    RES[$c.$s.med]=$m
    row="$row | **$m** | $mc"
  done
  echo "$row |"
  echo
  for s in "${srvs[@]}"; do
    [ "$s" = qemu-nbd ] && continue
    echo "- $s ÷ qemu-nbd (median): **$(ratio "${RES[$c.$s.med]}" "${RES[$c.qemu-nbd.med]}")×**"
  done
  echo
done
echo
stop "$AMEM"; stop "$ADISK"; stop "$QP"

fi
# ------------------------------------------------------------------ 3
if want 3; then
START_CMD=${START_CMD:-"import pandas"}
echo "## 3. Start-up with and without the recorded working-set prefetch (store: ${LAT} ms per GET, $((BW / 1000000)) MB/s)"
echo
echo "A start = connect \`nbdfuse\` to the export, \`losetup -r\` its file, \`mount -o ro\` the ext4, then \`chroot MNT /usr/bin/python3 -c '$START_CMD'\`: the kernel's ext4 reads exactly what a start of this Python app reads, through NBD, from a fresh agent with an empty cache (wall time from connect to the end of python). The working set was recorded once with \`--record --prefetch none\` (no injected latency) on the same start."
echo
the_start() { # SOCK -> sets START_MOUNT_MS, START_MS; leaves everything mounted
  local t
  t=$(now_ns)
  nbdfuse -r "$FUSE/img" "nbd+unix:///bench/big?socket=$1" >>"$W/nbdfuse.log" 2>&1 &
  NBDFUSE=$!; PIDS+=("$NBDFUSE")
  for _ in $(seq 1000); do [ -e "$FUSE/img" ] && break; sleep 0.005; done
  LOOP=$(losetup -f --show -r "$FUSE/img")
  mount -o ro "$LOOP" "$MNT"
  START_MOUNT_MS=$(ms_since "$t")
  chroot "$MNT" /usr/bin/python3 -c "$START_CMD" >/dev/null
  START_MS=$(ms_since "$t")
}
RS=$W/rec.sock
start_agent record "$RS" "$W/c-rec" $((PORT_BASE + 3)) --prefetch none --record
the_start "$RS"; rec_ms=$START_MS
rec_chunks=$(metric $((PORT_BASE + 3)) 'lode_tier_hits_total{tier="store"}')
unmount_start
for _ in $(seq 100); do grep -q "working set recorded" "$W/record.log" && break; sleep 0.05; done
ws=$(sed 's/\x1b\[[0-9;]*m//g' "$W/record.log" | grep "working set recorded" | sed -n 's/.*chunks=\([0-9]*\).*/\1/p' | tail -1)
stop "$AGENT"; rm -rf "$W/c-rec"
echo "Recorded working set: ${ws:-?} chunks ($rec_chunks fetched during the recording run, ${rec_ms} ms without injected latency)."
echo
echo "| run | prefetch none: mount ms / total ms / store fetches | prefetch recorded: mount ms / total ms / store fetches | warm disk cache: total ms |"
echo "| --- | ---: | ---: | ---: |"
NONE=() RECD=() WARM=()
for r in $(seq "$REPS"); do
  order=(none recorded warm); [ $((r % 2)) = 0 ] && order=(recorded none warm)
  declare -A cell=()
  for v in "${order[@]}"; do
    case $v in none) k=0 ;; recorded) k=1 ;; *) k=2 ;; esac
    sock=$W/s3-$v.sock port=$((PORT_BASE + 10 + r * 3 + k))
    case $v in
      warm) start_agent "s3-$v" "$sock" "$WARMCACHE" "$port" --prefetch none "${INJECT[@]}" ;;
      *) rm -rf "$W/c-s3"; start_agent "s3-$v" "$sock" "$W/c-s3" "$port" --prefetch "$v" "${INJECT[@]}" ;;
    esac
    the_start "$sock"; m=$START_MOUNT_MS tot=$START_MS
    f=$(metric "$port" 'lode_tier_hits_total{tier="store"}')
    unmount_start
    stop "$AGENT"
    if [ "$v" = warm ]; then cell[$v]=$tot; else cell[$v]="$m / $tot / $f"; fi
    case $v in none) NONE+=("$tot") ;; recorded) RECD+=("$tot") ;; warm) WARM+=("$tot") ;; esac
  done
  echo "| $r | ${cell[none]} | ${cell[recorded]} | ${cell[warm]} |"
done
rm -rf "$W/c-s3"
mN=$(printf '%s\n' "${NONE[@]}" | median); mR=$(printf '%s\n' "${RECD[@]}" | median); mW=$(printf '%s\n' "${WARM[@]}" | median)
echo
echo "| median start | wall ms | ÷ warm |"
echo "| --- | ---: | ---: |"
echo "| prefetch none | $mN | $(ratio "$mN" "$mW")× |"
echo "| prefetch recorded | $mR | $(ratio "$mR" "$mW")× |"
echo "| warm cache (floor) | $mW | 1× |"
echo
echo "- none ÷ recorded (median): **$(ratio "$mN" "$mR")×** faster with the recorded working set"
echo
fi
if want diag; then
echo "## Diagnostic: concurrent cold reads of one chunk (crates/lode-agent/examples/concurrent_cold_reads.rs)"
echo
echo "R readers per chunk, first 256 stored chunks of \`big\`, fresh reader, store behind 20 ms (no bandwidth cap), no disk cache:"
echo
"$REPO/target/release/examples/concurrent_cold_reads" "$STORE" bench big 256
echo
fi
# ------------------------------------------------------------------ disk
if want disk; then
echo "## Disk-warm reads (issue 14 item 2): lode agent vs qemu-nbd, fio's nbd engine"
echo
DIMG=$W/disk-raw.img
if [ -n "${IMAGE:-}" ]; then
  cp --sparse=always "$IMAGE" "$DIMG"
  what="\`$IMAGE\`"
else
  # A real file tree: /usr/share and /usr/bin of this machine as ext4.
  rm -rf "$W/tree"; mkdir -p "$W/tree"
  cp -a /usr/share /usr/bin "$W/tree/"
  tree_kib=$(du -sk "$W/tree" | cut -f1)
  mke2fs -q -F -t ext4 -d "$W/tree" "$DIMG" "$(( tree_kib * 23 / 20 / 1024 + 64 ))M" >/dev/null
  rm -rf "$W/tree"
  what="ext4 (mke2fs -d) of this machine's /usr/share and /usr/bin"
fi
"$L" push "ext4:$DIMG" --tenant bench --name disk --store "$STORE" >"$W/disk-push.log" 2>&1
"$L" pull disk --tenant bench --store "$STORE" -o "$W/disk-pulled.img" 2>>"$W/disk-push.log"
cmp "$DIMG" "$W/disk-pulled.img"; rm -f "$W/disk-pulled.img"
DSIZE=$(stat -c %s "$DIMG")
echo "Image: $what, $(awk -v s="$DSIZE" 'BEGIN {printf "%.2f GiB", s/2^30}'), $(( (DSIZE + 524287) / 524288 )) chunks of 512 KiB; $(sed -n 's/.*uploaded \([0-9]*\), bytes uploaded.*/\1/p' "$W/disk-push.log") unique stored chunks."
echo
DQ=$W/disk-q.sock
qemu-nbd -f raw -r -t -k "$DQ" -e 16 "$DIMG" >"$W/disk-qemu-nbd.log" 2>&1 &
DQP=$!; PIDS+=("$DQP")
for _ in $(seq 100); do [ -S "$DQ" ] && break; sleep 0.05; done
cat "$DIMG" >/dev/null
declare -A DURI=([qemu-nbd]="nbd+unix:///?socket=$DQ") DPORT=() DPID=()
DSRVS_DISK=() DSRVS_MEM=()
variants=(after); [ -n "${LODE_BEFORE:-}" ] && variants=(before after)
port=$((PORT_BASE + 40))
for v in "${variants[@]}"; do
  bin=$L; [ "$v" = before ] && bin=$LODE_BEFORE
  for tier in disk mem; do
    n=$v-$tier port=$((port + 1)) sock=$W/d-$v-$tier.sock
    mem=8M; [ "$tier" = mem ] && mem=4G
    AGENT_BIN=$bin start_agent "$n" "$sock" "$W/c-$n" "$port" --prefetch none --memory-cache "$mem"
    DPID[$n]=$AGENT DPORT[$n]=$port DURI[$n]="nbd+unix:///bench/disk?socket=$sock"
    # Warm-up: every chunk through the agent (into its disk cache, or memory).
    nbdcopy --no-extents "${DURI[$n]}" null:
    for _ in $(seq 600); do
      [ "$(metric "$port" 'lode_cache_writes_pending{tier="disk"}')" = 0 ] && break; sleep 0.05
    done
    if [ "$tier" = disk ]; then
      nbdcopy --no-extents "${DURI[$n]}" null:  # the page cache holds the cache files, as it holds qemu-nbd's image
      DSRVS_DISK+=("lode-$n")
    else
      DSRVS_MEM+=("lode-$n")
    fi
    DURI[lode-$n]=${DURI[$n]} DPID[lode-$n]=$AGENT DPORT[lode-$n]=$port
  done
done
for v in "${variants[@]}"; do
  echo "- lode-$v-disk: \`--memory-cache 8M\`, disk cache warm ($(metric "${DPORT[lode-$v-disk]}" 'lode_cache_chunks{tier="disk"}') chunks on disk, $(du -sh "$W/c-$v-disk" | cut -f1)); lode-$v-mem: \`--memory-cache 4G\` holding $(metric "${DPORT[lode-$v-mem]}" 'lode_cache_chunks{tier="memory"}') chunks; binary: $([ "$v" = before ] && echo "$LODE_BEFORE" || echo "this tree")"
done
echo "- qemu-nbd \`-f raw -r -t -e 16\` on the same image, page-cached."
echo
dfio() { # URI RW BS QD -> "MB/s IOPS p99_ms"
  fio --name=d --ioengine=nbd --uri="$1" --rw="$2" --bs="$3" --iodepth="$4" --size="$DSIZE" \
    --runtime="$FIO_SECS" --time_based --output-format=json --output="$W/fio.json" >/dev/null 2>&1
  python3 -c 'import json,sys; r=json.load(open(sys.argv[1]))["jobs"][0]["read"]; print("%.0f %.0f %.3f" % (r["bw_bytes"]/1e6, r["iops"], r["clat_ns"]["percentile"]["99.000000"]/1e6))' "$W/fio.json"
}
declare -A DRES
DCASES=(seq rand memrand)
declare -A DCASE_NAME=(
  [seq]="disk-warm, sequential 1 MiB reads, iodepth 8 (MB/s; p99 ms)"
  [rand]="disk-warm, 4 KiB random reads, iodepth 16 (IOPS; p99 ms)"
  [memrand]="memory-warm, 4 KiB random reads, iodepth 16 (IOPS; p99 ms)"
)
for c in "${DCASES[@]}"; do
  case $c in seq) srvs=(qemu-nbd "${DSRVS_DISK[@]}") ;; rand) srvs=(qemu-nbd "${DSRVS_DISK[@]}") ;; memrand) srvs=(qemu-nbd "${DSRVS_MEM[@]}") ;; esac
  echo "### ${DCASE_NAME[$c]}"
  echo
  hdr="| run"; sep="| ---"
  for s in "${srvs[@]}"; do hdr="$hdr | $s | p99 ms"; sep="$sep | ---: | ---:"; done
  echo "$hdr |"; echo "$sep |"
  for r in $(seq "$REPS"); do
    order=("${srvs[@]}"); [ $((r % 2)) = 0 ] && order=($(printf '%s\n' "${srvs[@]}" | tac))
    for s in "${order[@]}"; do
      case $c in seq) set -- $(dfio "${DURI[$s]}" read 1m 8); DRES[$c.$s.$r]="$1 $3" ;;
                 *) set -- $(dfio "${DURI[$s]}" randread 4k 16); DRES[$c.$s.$r]="$2 $3" ;; esac
    done
    row="| $r"
    for s in "${srvs[@]}"; do set -- ${DRES[$c.$s.$r]}; row="$row | $1 | $2"; done
    echo "$row |"
  done
  row="| median"
  for s in "${srvs[@]}"; do
    m=$(for r in $(seq "$REPS"); do set -- ${DRES[$c.$s.$r]}; echo "$1"; done | median)
    p=$(for r in $(seq "$REPS"); do set -- ${DRES[$c.$s.$r]}; echo "$2"; done | median)
    DRES[$c.$s.med]=$m DRES[$c.$s.p99]=$p
    row="$row | **$m** | **$p**"
  done
  echo "$row |"
  echo
  for s in "${srvs[@]}"; do
    [ "$s" = qemu-nbd ] && continue
    echo "- $s ÷ qemu-nbd (median): **$(ratio "${DRES[$c.$s.med]}" "${DRES[$c.qemu-nbd.med]}")×**, p99 ${DRES[$c.$s.p99]} ms vs ${DRES[$c.qemu-nbd.p99]} ms"
  done
  echo
done
for s in "${DSRVS_DISK[@]}"; do
  p=${DPORT[$s]}
  echo "- $s: disk tier hits $(metric "$p" 'lode_tier_hits_total{tier="disk"}'), store fetches $(metric "$p" 'lode_tier_hits_total{tier="store"}'), refused files $(metric "$p" 'lode_cache_corrupt_discarded_total{tier="disk"}')"
done
echo
for s in "${DSRVS_DISK[@]}" "${DSRVS_MEM[@]}"; do stop "${DPID[$s]}"; done
stop "$DQP"
rm -rf "$W"/c-before-* "$W"/c-after-* "$DIMG"
fi
echo "Total benchmark time: $(( $(date +%s) - T0 )) s; load average at end: $(cut -d' ' -f1-3 /proc/loadavg)."
