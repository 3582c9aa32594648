#!/usr/bin/env bash
# Herd benchmark: K cold hosts read one new file at the same moment through
# an empty 5-node fleet; how many store GETs does the herd cost per distinct
# chunk? Fill leases on (the default) against off (`--fleet-lease-ms 0`: the
# behaviour before fill leases, every host that misses goes to the store),
# over lode cache nodes and plain memcached, interleaved in one run.
#
#   scripts/bench-herd.sh [--hosts "8 16 32"] [--reps N] [--latency MS]
#
# A host is one `lode cat` process with its own empty cache directory; the
# store is a local directory with LATENCY ms (default 20) added to every GET;
# the file is 6 MiB of random bytes in a new image. Each row starts 5 fresh
# (empty) cache nodes. Prints a Markdown table. Uses target/release/lode if
# it exists (LODE=... to choose), else target/debug/lode: store GET counts do
# not depend on the build profile; the times do. FLEET_ARGS: fleet options
# given to every host, LEASE_ARGS to hosts with fill leases (see below).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
HOSTS="8 16 32" REPS=1 LAT=20
# Fleet options of every host, both variants. The defaults of the timeouts
# suit a host with CPUs of its own; K processes sharing this machine's cores
# are slower by far, so the bench gives the fleet and the lease more time.
FLEET_ARGS=${FLEET_ARGS:---fleet-timeout-ms 5000}
LEASE_ARGS=${LEASE_ARGS:---fleet-lease-ms 10000 --fleet-lease-wait-ms 30000}
while [ $# -gt 0 ]; do
  case $1 in
    --hosts) HOSTS=$2; shift ;;
    --reps) REPS=$2; shift ;;
    --latency) LAT=$2; shift ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "bench-herd.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
T=${CARGO_TARGET_DIR:-$REPO/target}
if [ -z "${LODE:-}" ]; then
  if [ -x "$T/release/lode" ]; then LODE=$T/release/lode; else
    cargo build -q -p lode-cli; LODE=$T/debug/lode; fi
fi
# Copied, so a rebuild during the run does not change the binary under it.
W=$(mktemp -d /tmp/lode-bench-herd.XXXXXX)
cp "$LODE" "$W/lode"; LODE_SRC=$LODE; LODE=$W/lode
command -v memcached >/dev/null || { echo "bench-herd.sh: needs memcached (apt-get install memcached)" >&2; exit 1; }

PIDS=()
stop_all() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  PIDS=()
}
trap 'stop_all; rm -rf "$W"' EXIT
export LODE_HOME=$W/home
STORE=$W/store
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
MC_USER=(); [ "$(id -u)" -eq 0 ] && MC_USER=(-u root)

# fleet lode|memcached -> SPEC: 5 fresh, empty nodes
fleet() {
  local list=() i port
  for ((i = 0; i < 5; i++)); do
    port=$(free_port)
    if [ "$1" = lode ]; then
      "$LODE" cache-node --listen "127.0.0.1:$port" --memory 512M >"$W/node$i.log" 2>&1 &
    else
      memcached -p "$port" -l 127.0.0.1 -I 1m -m 256 -U 0 "${MC_USER[@]}" &
    fi
    PIDS+=($!)
    list+=("127.0.0.1:$port")
  done
  for a in "${list[@]}"; do
    for _ in $(seq 200); do (exec 3<>"/dev/tcp/${a%:*}/${a#*:}") 2>/dev/null && break; sleep 0.05; done
  done
  SPEC=$(IFS=,; echo "${list[*]}")
  [ "$1" = memcached ] && SPEC="memcached://$SPEC"
  return 0
}

# herd K TAG ARGS... -> prints "store_gets p50_ms p99_ms failures"
herd() {
  local k=$1 tag=$2 i; shift 2
  local d=$W/$tag; mkdir -p "$d"
  for ((i = 0; i < k; i++)); do
    "$LODE" cat herd /data/file.bin --tenant bench --store "$STORE" --cache-dir "$d/c$i" \
      --inject-store-latency-ms "$LAT" $FLEET_ARGS "$@" >"$d/out$i" 2>"$d/err$i" &
    echo $! >"$d/pid$i"
  done
  local fail=0
  for ((i = 0; i < k; i++)); do
    wait "$(cat "$d/pid$i")" || fail=$((fail + 1))
    cmp -s "$d/out$i" "$W/file.bin" || fail=$((fail + 1))
  done
  cat "$d"/err* | python3 -c '
import re, sys
gets, times = 0, []
for l in sys.stdin:
    if l.startswith("lode cat:"):
        m = re.search(r"store (\d+)", l); gets += int(m.group(1)) if m else 0
        times.append(float(re.search(r"total ([0-9.]+) ms", l).group(1)))
times.sort()
p = lambda q: times[min(len(times) - 1, int(q * len(times)))] if times else 0
print(gets, round(p(0.5)), round(p(0.99)), end=" ")'
  echo "$fail"
  rm -rf "$d"
}

# ------------------------------------------------------------------ image
mkdir -p "$W/src/data" "$LODE_HOME"
head -c $((6 << 20)) /dev/urandom >"$W/src/data/file.bin"
cp "$W/src/data/file.bin" "$W/file.bin"
python3 scripts/ocilayout.py layer --src "$W/src" --out "$W/layer" --compress none >/dev/null
python3 scripts/ocilayout.py image --out "$W/oci" --name herd "$W/layer.json" >/dev/null
"$LODE" flatten "oci:$W/oci:latest" -o "$W/img.ext4" >/dev/null 2>&1
"$LODE" push "ext4:$W/img.ext4" --tenant bench --name herd --store "$STORE" >/dev/null 2>&1
rm -rf "$W/oci" "$W/layer".* "$W/img.ext4" "$W/src"
# Distinct chunks: what one cold host reads (no fleet).
DISTINCT=$(herd 1 solo | cut -d' ' -f1)

echo "# Herd: store GETs per distinct chunk"
echo
echo "- $(date -u +%Y-%m-%dT%H:%MZ), lode $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet 2>/dev/null || echo ' (+ uncommitted changes)'), binary $LODE_SRC"
echo "- machine: $(nproc) CPUs, load average at start $(cut -d' ' -f1-3 /proc/loadavg), $(memcached -V)"
echo "- one 6 MiB file of a new image: $DISTINCT distinct chunks; store +$LAT ms per GET; 5 empty cache nodes per row; REPS=$REPS; every host: \`$FLEET_ARGS\`; with fill leases: \`$LEASE_ARGS\`; without: \`--fleet-lease-ms 0\`"
echo
echo "| hosts | fleet | fill coordination | store GETs | GETs per distinct chunk | host time p50 / p99 (ms) | failed hosts |"
echo "|---:|---|---|---:|---:|---:|---:|"
for k in $HOSTS; do
  for rep in $(seq "$REPS"); do
    for variant in "lode off" "lode on" "memcached off" "memcached on"; do
      kind=${variant% *} mode=${variant#* }
      fleet "$kind"
      if [ "$mode" = off ]; then extra=(--fleet-lease-ms 0); label="off (main before leases)"; else read -ra extra <<<"$LEASE_ARGS"; label="fill leases"; fi
      read -r gets p50 p99 fail < <(herd "$k" "h$k-$kind-$mode-$rep" --cache-nodes "$SPEC" "${extra[@]}")
      stop_all
      ratio=$(awk -v g="$gets" -v d="$DISTINCT" 'BEGIN {printf "%.2f", g / d}')
      echo "| $k | $kind | $label | $gets | $ratio | $p50 / $p99 | $fail |"
    done
  done
done
