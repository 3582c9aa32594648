#!/usr/bin/env bash
# Per-node figures for docs/capacity.md: CPU seconds per GB served and GETs
# per second of one `lode agent` reading an image through a 5-node cache
# fleet, and of the cache nodes serving it, from /proc/PID/stat of each
# process (user + system time) around the read.
#
#   scripts/bench-node-cpu.sh [--mib 512] [--rounds 3]
#
# Release build (CARGO_TARGET_DIR/release/lode; built if missing). Loopback
# only: 5 `lode cache-node` on 127.0.2.1-5:7000, one agent, a local file
# store. Per round: the agent restarted with empty caches reads the whole
# image (`nbdcopy` of its export) once from a fleet the previous round
# warmed (fleet hits: 4 of 5 stripes per chunk), and the bytes are checked.
set -euo pipefail
cd "$(dirname "$0")/.."
MIB=512 ROUNDS=3
while [ $# -gt 0 ]; do
  case $1 in
    --mib) MIB=$2; shift ;;
    --rounds) ROUNDS=$2; shift ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "bench-node-cpu.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
T=${CARGO_TARGET_DIR:-$PWD/target}
LODE=${LODE:-$T/release/lode}
[ -x "$LODE" ] || cargo build -q --release -p lode-cli
command -v nbdcopy >/dev/null || { echo "bench-node-cpu.sh: needs nbdcopy (libnbd-bin)" >&2; exit 1; }
W=$(mktemp -d /tmp/lode-nodecpu.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT
export LODE_HOME=$W/home
mkdir -p "$LODE_HOME"
TICK=$(getconf CLK_TCK)
cpu() { awk -v t="$TICK" '{print ($14 + $15) / t}' "/proc/$1/stat"; }
wait_tcp() { for _ in $(seq 200); do (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null && return 0; sleep 0.05; done; echo "no $1:$2" >&2; exit 1; }

head -c 32 /dev/urandom | base64 >"$W/key"
NODES=()
for n in 1 2 3 4 5; do
  "$LODE" cache-node --listen "127.0.2.$n:7000" --memory 2G --write-key "$W/key" 2>"$W/node$n.log" &
  NODES+=($!); PIDS+=($!)
done
for n in 1 2 3 4 5; do wait_tcp "127.0.2.$n" 7000; done
SPEC=$(printf '127.0.2.%s:7000,' 1 2 3 4 5); SPEC=${SPEC%,}
head -c $((MIB << 20)) /dev/urandom >"$W/img"
"$LODE" push "ext4:$W/img" --tenant bench --name img --store "$W/store" >/dev/null

agent() { # starts a cold agent; sets APID
  rm -rf "$W/agent"; mkdir -p "$W/agent"
  "$LODE" agent --control "unix:$W/agent/sock" --state-dir "$W/agent/state" --store "$W/store" \
    --cache-dir "$W/agent/cache" --cache-nodes "$SPEC" --fleet-key "$W/key" --prefetch none 2>"$W/agent.log" &
  APID=$!; PIDS+=($APID)
  for _ in $(seq 200); do "$LODE" volumes --agent "$W/agent/sock" >/dev/null 2>&1 && return; sleep 0.05; done
  echo "agent did not start" >&2; cat "$W/agent.log" >&2; exit 1
}
read_all() { # reads the image through the agent; prints seconds
  local a sock exp t0 t1
  a=$("$LODE" attach bench/img --agent "$W/agent/sock")
  read -r sock exp < <(python3 -c 'import json,sys; a=json.loads(sys.argv[1]); print(a["socket"], a["export"])' "$a")
  t0=$(date +%s%N)
  nbdcopy "nbd+unix:///$exp?socket=$sock" "$W/out"
  t1=$(date +%s%N)
  cmp -s "$W/out" "$W/img" || { echo "bench-node-cpu.sh: wrong bytes read" >&2; exit 1; }
  echo $(((t1 - t0) / 1000000))
}
# Warm the fleet (store reads, fills).
agent; read_all >/dev/null; sleep 1; kill "$APID"; wait "$APID" 2>/dev/null || true

GB=$(awk -v m="$MIB" 'BEGIN {print m / 1024}')
STRIPES=$((MIB * 2 * 4)) # 4 stripes of 128 KiB read per 512 KiB chunk
echo "| round | read ms | GB/s | agent CPU s/GB | nodes CPU s/GB (5 together) | node GETs/s (each) |"
echo "|---:|---:|---:|---:|---:|---:|"
for r in $(seq "$ROUNDS"); do
  agent
  n0=0; for p in "${NODES[@]}"; do n0=$(awk -v a="$n0" -v b="$(cpu "$p")" 'BEGIN {print a + b}'); done
  a0=$(cpu "$APID")
  ms=$(read_all)
  a1=$(cpu "$APID")
  n1=0; for p in "${NODES[@]}"; do n1=$(awk -v a="$n1" -v b="$(cpu "$p")" 'BEGIN {print a + b}'); done
  awk -v r="$r" -v ms="$ms" -v gb="$GB" -v a="$(awk -v x="$a1" -v y="$a0" 'BEGIN {print x - y}')" \
      -v n="$(awk -v x="$n1" -v y="$n0" 'BEGIN {print x - y}')" -v s="$STRIPES" \
      'BEGIN {printf "| %d | %d | %.2f | %.2f | %.2f | %.0f |\n", r, ms, gb / (ms / 1000), a / gb, n / gb, s / 5 / (ms / 1000)}'
  kill "$APID"; wait "$APID" 2>/dev/null || true
done
echo
echo "lode $(git rev-parse --short HEAD), $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg), image $MIB MiB of random data"
echo "node memory: $(for p in "${NODES[@]}"; do awk '/VmRSS/ {printf "%d MiB ", $2 / 1024}' "/proc/$p/status"; done)(RSS of each node holding the image's stripes)"
