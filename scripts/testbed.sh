#!/usr/bin/env bash
# A multi-host test bed on loopback: K hosts, 5 cache nodes (+1 to add), one
# S3-compatible server (moto), each in its own process group; runs scenarios
# and prints a Markdown table.
#
#   scripts/testbed.sh [--hosts K] [--latency MS] [--memcached]
#
# Addresses (loopback only; nothing else is ever addressed):
#   S3 server     127.0.3.1:PORT
#   cache node N  127.0.2.N:7000   (N = 1..5; node 6 is the one added)
#   host K        a `lode cat` process (the agent's reader and tier chain:
#                 memory → disk → fleet → store) with its own LODE_HOME and
#                 cache directory under the work dir; lode has no option to
#                 pick a source address, so its connections come from 127.0.0.1.
# Latency: the store link gets --latency ms per GET (default 20) through
# lode's injected store latency; links to cache nodes have none added.
#
# Scenarios, each reading one file of a new image on every host at once:
#   herd       cold hosts, empty fleet
#   node-kill  node 3 SIGKILLed 200 ms into the herd (then restarted empty)
#   node-add   node 6 added to the node list of every host
#   store-slow the store at 10× the latency
#   store-down the S3 server stopped: every host must fail, in bounded time
set -euo pipefail
cd "$(dirname "$0")/.."
K=8 LAT=20 MC=0
while [ $# -gt 0 ]; do
  case $1 in
    --hosts) K=$2; shift ;;
    --latency) LAT=$2; shift ;;
    --memcached) MC=1 ;;
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
    *) echo "testbed.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
T=${CARGO_TARGET_DIR:-$PWD/target}
if [ -z "${LODE:-}" ]; then
  if [ -x "$T/release/lode" ]; then LODE=$T/release/lode; else cargo build -q -p lode-cli; LODE=$T/debug/lode; fi
fi
command -v moto_server >/dev/null || { echo "testbed.sh: needs moto (pip install 'moto[server]')" >&2; exit 1; }
[ $MC -eq 0 ] || command -v memcached >/dev/null || { echo "testbed.sh: --memcached needs memcached" >&2; exit 1; }
W=$(mktemp -d /tmp/lode-testbed.XXXXXX)
cp "$LODE" "$W/lode"; LODE_SRC=$LODE; LODE=$W/lode
declare -A PGID
stop() { # stop NAME: SIGKILL its process group
  [ -n "${PGID[$1]:-}" ] && kill -KILL -- "-${PGID[$1]}" 2>/dev/null || true
  unset "PGID[$1]"
}
cleanup() { for n in "${!PGID[@]}"; do stop "$n"; done; rm -rf "$W"; }
trap cleanup EXIT
start() { # start NAME CMD...: own process group (setsid), log in $W/NAME.log
  local name=$1; shift
  setsid "$@" >"$W/$name.log" 2>&1 &
  PGID[$name]=$!
  disown  # killed on purpose: no "Killed" job reports
}
wait_tcp() { for _ in $(seq 300); do (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null && return 0; sleep 0.05; done; echo "nothing on $1:$2" >&2; exit 1; }

S3_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.3.1",0)); print(s.getsockname()[1])')
start s3 moto_server -H 127.0.3.1 -p "$S3_PORT"
wait_tcp 127.0.3.1 "$S3_PORT"
export AWS_ACCESS_KEY_ID=testbed AWS_SECRET_ACCESS_KEY=testbed AWS_REGION=us-east-1 AWS_ENDPOINT_URL=http://127.0.3.1:$S3_PORT
curl -sf -X PUT "$AWS_ENDPOINT_URL/testbed" >/dev/null
STORE=s3://testbed/lode
MC_USER=(); [ "$(id -u)" -eq 0 ] && MC_USER=(-u root)
node() { # node N: start cache node N on 127.0.2.N:7000 (empty)
  if [ $MC -eq 1 ]; then
    start "node$1" memcached -l "127.0.2.$1" -p 7000 -I 1m -m 256 -U 0 "${MC_USER[@]}"
  else
    start "node$1" "$LODE" cache-node --listen "127.0.2.$1:7000" --memory 512M --write-key "$W/fleet.key"
  fi
  wait_tcp "127.0.2.$1" 7000
}
head -c 32 /dev/urandom | base64 >"$W/fleet.key"
for n in 1 2 3 4 5; do node $n; done
spec() { local l=(); for n in "$@"; do l+=("127.0.2.$n:7000"); done; local s; s=$(IFS=,; echo "${l[*]}"); [ $MC -eq 1 ] && s="memcached://$s"; echo "$s"; }
KEYARG=(--fleet-key "$W/fleet.key"); [ $MC -eq 1 ] && KEYARG=()
export LODE_HOME=$W/home; mkdir -p "$LODE_HOME"

IMG=0
new_image() { # a new image with a 6 MiB random file; sets IMG
  IMG=$((IMG + 1))
  local d=$W/img$IMG; mkdir -p "$d/src/data"
  head -c $((6 << 20)) /dev/urandom >"$d/src/data/file.bin"
  cp "$d/src/data/file.bin" "$W/want$IMG"
  python3 scripts/ocilayout.py layer --src "$d/src" --out "$d/layer" --compress none >/dev/null
  python3 scripts/ocilayout.py image --out "$d/oci" --name "img$IMG" "$d/layer.json" >/dev/null
  "$LODE" flatten "oci:$d/oci:latest" -o "$d/fs.ext4" >/dev/null 2>&1
  "$LODE" push "ext4:$d/fs.ext4" --tenant bed --name "img$IMG" --store "$STORE" >"$d/push.log" 2>&1
  # Hosts share the tenant key (one LODE_HOME's keys, copied per host).
  rm -rf "$d"
}

# herd SPEC LATENCY [DURING] -> "store_gets fleet_chunks p50 p99 errors wall_ms"
herd() {
  local sp=$1 lat=$2 during=${3:-} i t0 t1
  local d=$W/herd$IMG; mkdir -p "$d"
  t0=$(date +%s%N)
  for ((i = 1; i <= K; i++)); do
    mkdir -p "$d/h$i"; cp -r "$LODE_HOME/." "$d/h$i/home/" 2>/dev/null || mkdir -p "$d/h$i/home"
    setsid env LODE_HOME="$d/h$i/home" "$LODE" cat "img$IMG" /data/file.bin --tenant bed \
      --store "$STORE" --cache-dir "$d/h$i/cache" --cache-nodes "$sp" "${KEYARG[@]}" \
      --inject-store-latency-ms "$lat" --store-timeout 5 --store-retries 1 --fleet-lease-wait-ms 10000 \
      >"$d/h$i.out" 2>"$d/h$i.err" &
    PGID[host$i]=$!
  done
  [ -n "$during" ] && { sleep 0.2; $during; }
  local err=0
  for ((i = 1; i <= K; i++)); do
    # A host fails if it exits non-zero or prints the wrong bytes.
    if wait "${PGID[host$i]}" 2>/dev/null; then
      cmp -s "$d/h$i.out" "$W/want$IMG" || err=$((err + 1))
    else
      err=$((err + 1))
    fi
    unset "PGID[host$i]"
  done
  t1=$(date +%s%N)
  cat "$d"/h*.err | python3 -c '
import re, sys
gets = fleet = 0; times = []
for l in sys.stdin:
    if l.startswith("lode cat:"):
        m = re.search(r"store (\d+)", l); gets += int(m.group(1)) if m else 0
        m = re.search(r"fleet(?:-memcached)? (\d+)", l); fleet += int(m.group(1)) if m else 0
        times.append(float(re.search(r"total ([0-9.]+) ms", l).group(1)))
times.sort()
p = lambda q: times[min(len(times) - 1, int(q * len(times)))] if times else 0
print(gets, fleet, round(p(0.5)), round(p(0.99)), end=" ")'
  echo "$err $(( (t1 - t0) / 1000000 ))"
  rm -rf "$d"
}

row() { # row SCENARIO RESULT
  read -r gets fleet p50 p99 err wall <<<"$2"
  echo "| $1 | $K | $gets | $fleet | $p50 / $p99 | $err | $wall |"
}

echo "# lode test bed"
echo
echo "- $(date -u +%Y-%m-%dT%H:%MZ), $K hosts, 5 cache nodes ($([ $MC -eq 1 ] && echo memcached || echo 'lode cache-node, write key')), moto S3 on 127.0.3.1, store +$LAT ms per GET, binary $LODE_SRC"
echo "- each scenario reads one 6 MiB file of a new image on every host at once; chunks: store = fetched from S3, fleet = from the cache nodes"
echo
echo "| scenario | hosts | store GETs | fleet chunks | host time p50 / p99 (ms) | failed hosts | wall (ms) |"
echo "|---|---:|---:|---:|---:|---:|---:|"
new_image; row herd "$(herd "$(spec 1 2 3 4 5)" "$LAT")"
kill3() { stop node3; node 3; }
new_image; row "node-kill (node 3 killed at 200 ms, restarted empty)" "$(herd "$(spec 1 2 3 4 5)" "$LAT" kill3)"
row "the same image again after node-kill (warm fleet)" "$(herd "$(spec 1 2 3 4 5)" "$LAT")"
node 6
row "node-add (node 6 joins; same image, warm fleet)" "$(herd "$(spec 1 2 3 4 5 6)" "$LAT")"
new_image; row "store-slow ($((LAT * 10)) ms per GET)" "$(herd "$(spec 1 2 3 4 5 6)" "$((LAT * 10))")"
new_image; stop s3
row "store-down (S3 server stopped; every host must fail)" "$(herd "$(spec 1 2 3 4 5 6)" "$LAT")"
