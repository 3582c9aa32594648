#!/usr/bin/env bash
# A multi-host test bed on loopback: K hosts, each a real `lode agent`, 5 cache
# nodes (+1 to add), one S3-compatible server (moto), every link with an
# injected one-way delay; each process in its own process group. Runs
# scenarios and prints a Markdown table; `--bench R` instead measures cold
# reads during a node kill and a node add against quiet runs (R rounds).
#
#   scripts/testbed.sh [--hosts K] [--node-delay-ms D] [--store-delay-ms S]
#                      [--file-mib M] [--memcached] [--bench ROUNDS]
#
# Addresses (loopback only; nothing else is ever addressed):
#   S3 server     127.0.3.1:PORT
#   cache node N  127.0.2.N:7000   (N = 1..5; node 6 is the one added)
#   host K        127.0.1.K: everything host K listens on. Its agent (own
#                 LODE_HOME copy, cache and state directories, control socket
#                 $W/hK/agent.sock, metrics on 127.0.1.K:9100) reaches node N
#                 through 127.0.1.K:700N and the store through 127.0.1.K:9000:
#                 `lode-linkproxy` processes (lode-testkit) that delay every
#                 byte of each direction by D ms (node links, default 1) or S ms
#                 (the store link, default 10); its --cache-nodes name each
#                 node by its own address (`127.0.2.N:7000=127.0.1.K:700N`),
#                 so all hosts place stripes alike. The kernel's netem would do
#                 this in network namespaces, but it is not built on the
#                 machines this runs on; the proxies need nothing but loopback.
#                 A host reads an image through its agent: `lode attach`, then
#                 `nbdcopy` of the NBD export, compared with `lode pull`.
# Every scenario restarts the agents with empty caches (cold hosts).
#
# Scenarios, each reading a whole image (a file of M MiB, default 6) on every
# host at once:
#   herd       cold hosts, empty fleet
#   node-kill  node 3 SIGKILLed 200 ms into the herd (then restarted empty)
#   node-add   node 6 added to every host's fleet (`lode fleet set`) as the herd starts
#   store-slow the store link at 10× its delay
#   store-down the S3 server stopped: every host must fail, in bounded time
# --bench R: R rounds of quiet / node-kill / node-add (order rotated per
# round), each on 5 fresh nodes and a new image warmed into the fleet by one
# host; then host read times p50/p99 per scenario, their ratio to quiet, and
# the stripes moved to node 6 by read repair over all stripes.
set -euo pipefail
cd "$(dirname "$0")/.."
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg) STARTED=$(date -u +%Y-%m-%dT%H:%MZ)
K=8 ND=1 SD=10 MC=0 MIB=6 BENCH=0
while [ $# -gt 0 ]; do
  case $1 in
    --hosts) K=$2; shift ;;
    --node-delay-ms) ND=$2; shift ;;
    --store-delay-ms) SD=$2; shift ;;
    --file-mib) MIB=$2; shift ;;
    --memcached) MC=1 ;;
    --bench) BENCH=$2; shift ;;
    -h|--help) sed -n '2,38p' "$0"; exit 0 ;;
    *) echo "testbed.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
[ "$K" -ge 1 ] && [ "$K" -le 250 ] || { echo "testbed.sh: --hosts 1..250" >&2; exit 2; }
[ $BENCH -eq 0 ] || [ $MC -eq 0 ] || { echo "testbed.sh: --bench measures lode cache nodes, not --memcached" >&2; exit 2; }
T=${CARGO_TARGET_DIR:-$PWD/target}
if [ -z "${LODE:-}" ]; then
  if [ -x "$T/release/lode" ]; then LODE=$T/release/lode; PROFILE=release; else LODE=$T/debug/lode; PROFILE=debug; fi
  if [ $PROFILE = debug ]; then cargo build -q -p lode-cli; fi
fi
PROXY=${LINKPROXY:-$(dirname "$LODE")/lode-linkproxy}
[ -x "$PROXY" ] || cargo build -q -p lode-testkit --bin lode-linkproxy $([ "${PROFILE:-}" = release ] && echo --release)
for t in moto_server nbdcopy curl; do
  command -v $t >/dev/null || { echo "testbed.sh: needs $t (moto: pip install 'moto[server]'; nbdcopy: apt-get install libnbd-bin)" >&2; exit 1; }
done
[ $MC -eq 0 ] || command -v memcached >/dev/null || { echo "testbed.sh: --memcached needs memcached" >&2; exit 1; }
W=$(mktemp -d /tmp/lode-testbed.XXXXXX)
# Copies, so a rebuild during the run does not change the binaries under it.
cp "$LODE" "$W/lode"; cp "$PROXY" "$W/lode-linkproxy"; LODE_SRC=$LODE; LODE=$W/lode; PROXY=$W/lode-linkproxy
declare -A PGID
stop() { # stop NAME: SIGKILL its process group, and wait until it is gone
  local g=${PGID[$1]:-}
  if [ -n "$g" ]; then
    kill -KILL -- "-$g" 2>/dev/null || true
    for _ in $(seq 200); do kill -0 -- "-$g" 2>/dev/null || break; sleep 0.01; done
  fi
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
node_stripes() { # node_stripes N: stripes node N holds (lode nodes)
  { curl -sf "http://127.0.2.$1:7000/metrics" || true; } | awk '/^lode_node_stripes\{/ {s += $2} END {print s + 0}'
}
head -c 32 /dev/urandom | base64 >"$W/fleet.key"
for n in 1 2 3 4 5; do node $n; done
KEYARG=(--fleet-key "$W/fleet.key"); [ $MC -eq 1 ] && KEYARG=()
export LODE_HOME=$W/home; mkdir -p "$LODE_HOME"

# ------------------------------------------------------------------ links
links() { # links K STORE_DELAY: host K's delayed links to the 6 nodes and the store
  stop "links$1"; stop "storelink$1"
  local l=() n
  for n in 1 2 3 4 5 6; do l+=("127.0.1.$1:700$n=127.0.2.$n:7000"); done
  start "links$1" "$PROXY" --delay-ms "$ND" "${l[@]}"
  start "storelink$1" "$PROXY" --delay-ms "$2" "127.0.1.$1:9000=127.0.3.1:$S3_PORT"
  wait_tcp "127.0.1.$1" 7001; wait_tcp "127.0.1.$1" 9000
}
for ((i = 1; i <= K; i++)); do links $i "$SD"; done
spec() { # spec K N...: host K's --cache-nodes for nodes N...
  # Named by their own address (placement hashes names), reached through host K's link.
  local k=$1 l=() n s; shift
  for n in "$@"; do l+=("127.0.2.$n:7000=127.0.1.$k:700$n"); done
  s=$(IFS=,; echo "${l[*]}"); [ $MC -eq 1 ] && s="memcached://$s"; echo "$s"
}

# ------------------------------------------------------------------ hosts
host() { # host K N...: (re)start host K's agent, empty caches, fleet = nodes N...
  local k=$1; shift
  local d=$W/h$k
  stop "host$k"; rm -rf "$d"; mkdir -p "$d"; cp -r "$LODE_HOME" "$d/home"
  start "host$k" env LODE_HOME="$d/home" AWS_ENDPOINT_URL="http://127.0.1.$k:9000" \
    "$LODE" agent --control "unix:$d/agent.sock" --state-dir "$d/state" --store "$STORE" \
    --cache-dir "$d/cache" --cache-nodes "$(spec "$k" "$@")" "${KEYARG[@]}" --prefetch none \
    --fleet-timeout-ms 5000 --fleet-lease-wait-ms 10000 --store-timeout 5 --store-retries 1 \
    --metrics "127.0.1.$k:9100"
}
hosts_up() { # waits until every agent answers on its control socket
  local i
  for ((i = 1; i <= K; i++)); do
    for _ in $(seq 400); do "$LODE" volumes --agent "$W/h$i/agent.sock" >/dev/null 2>&1 && break; sleep 0.05; done
    "$LODE" volumes --agent "$W/h$i/agent.sock" >/dev/null || { echo "host $i did not start:" >&2; cat "$W/host$i.log" >&2; exit 1; }
    wait_tcp "127.0.1.$i" 9100
  done
}
hosts() { # hosts N...: every host restarted cold with fleet nodes N...
  local i; for ((i = 1; i <= K; i++)); do host $i "$@"; done; hosts_up
}
metric() { # metric K NAME: a counter of host K's agent (0 if absent)
  { curl -sf "http://127.0.1.$1:9100/metrics" || true; } | awk -v n="$2" '$1 == n {print $2; f = 1} END {if (!f) print 0}'
}
settled() { # settled K: waits until host K's fills are done (fills + dropped >= store chunks)
  for _ in $(seq 400); do
    local s f d
    s=$(metric "$1" 'lode_tier_hits_total{tier="store"}')
    f=$(metric "$1" lode_fleet_fills_total); d=$(metric "$1" lode_fleet_fills_dropped_total)
    awk -v s="$s" -v f="$f" -v d="$d" 'BEGIN {exit !(f + d >= s)}' && return 0
    sleep 0.05
  done
}
read_image() { # read_image K: host K reads image $IMG through its agent
  # -> "$W/hK/time": "ATTACH_MS READ_MS OK" (read: nbdcopy of the whole export)
  local k=$1 d=$W/h$1 t0 t1 t2 a sock exp id ok=1
  t0=$(date +%s%N); t1=$t0
  if a=$("$LODE" attach "bed/img$IMG" --agent "$d/agent.sock" 2>"$d/attach.err"); then
    read -r sock exp id < <(python3 -c 'import json,sys; a=json.loads(sys.argv[1]); print(a["socket"], a["export"], a["id"])' "$a")
    t1=$(date +%s%N)
    nbdcopy "nbd+unix:///$exp?socket=$sock" "$d/out.raw" 2>"$d/read.err" || ok=0
    t2=$(date +%s%N)
    cmp -s "$d/out.raw" "$W/want$IMG" || ok=0
    "$LODE" detach "$id" --agent "$d/agent.sock" 2>/dev/null || true
  else
    ok=0; t2=$(date +%s%N)
  fi
  echo "$(( (t1 - t0) / 1000000 )) $(( (t2 - t1) / 1000000 )) $ok" >"$d/time"
  rm -f "$d/out.raw"
}

IMG=0
new_image() { # a new image with an M MiB random file; sets IMG; $W/wantIMG = lode pull of it
  IMG=$((IMG + 1))
  local d=$W/img$IMG; mkdir -p "$d/src/data"
  head -c $((MIB << 20)) /dev/urandom >"$d/src/data/file.bin"
  python3 scripts/ocilayout.py layer --src "$d/src" --out "$d/layer" --compress none >/dev/null
  python3 scripts/ocilayout.py image --out "$d/oci" --name "img$IMG" "$d/layer.json" >/dev/null
  "$LODE" flatten "oci:$d/oci:latest" -o "$d/fs.ext4" >/dev/null 2>&1
  # Hosts share the tenant key (one LODE_HOME's keys, copied per host).
  "$LODE" push "ext4:$d/fs.ext4" --tenant bed --name "img$IMG" --store "$STORE" >"$d/push.log" 2>&1
  "$LODE" pull "img$IMG" --tenant bed --store "$STORE" -o "$W/want$IMG" 2>/dev/null
  rm -rf "$d"
}

# herd [DURING]: every host reads image $IMG at once, DURING runs meanwhile;
# sets RES="store_gets fleet_chunks p50 p99 failed wall_ms" (times in $W/times).
# Not in $(...): processes started there would be lost to cleanup.
herd() {
  local during=${1:-} i t0 t1
  t0=$(date +%s%N)
  for ((i = 1; i <= K; i++)); do rm -f "$W/h$i/time"; read_image $i & done
  [ -n "$during" ] && $during
  wait
  t1=$(date +%s%N)
  local gets=0 fleet=0 err=0 g f
  : >"$W/times"; : >"$W/attach-times"
  for ((i = 1; i <= K; i++)); do
    read -r am ms ok <"$W/h$i/time"
    echo "$ms" >>"$W/times"; echo "$am" >>"$W/attach-times"
    [ "$ok" = 1 ] || err=$((err + 1))
    g=$(metric $i 'lode_tier_hits_total{tier="store"}'); gets=$((gets + ${g%.*}))
    f=$(metric $i "lode_tier_hits_total{tier=\"$([ $MC -eq 1 ] && echo fleet-memcached || echo fleet)\"}"); fleet=$((fleet + ${f%.*}))
  done
  RES="$gets $fleet $(pct 50 <"$W/times") $(pct 99 <"$W/times") $err $(( (t1 - t0) / 1000000 )) $(pct 50 <"$W/attach-times")"
}
pct() { sort -n | awk -v q="$1" '{v[NR] = $1} END {i = int(q / 100 * NR); if (i >= NR) i = NR - 1; print NR ? v[i + 1] : 0}'; }

kill3() { sleep 0.2; stop node3; node 3; }
add6() { local i; for ((i = 1; i <= K; i++)); do "$LODE" fleet set "$(spec $i 1 2 3 4 5 6)" --agent "$W/h$i/agent.sock" >/dev/null 2>&1; done; }

header() {
  echo "- $STARTED, lode $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet 2>/dev/null || echo ' (+ uncommitted changes)'), binary $LODE_SRC"
  echo "- machine: $(nproc) CPUs, load average at start $LOAD0, at the end $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "- $K hosts (\`lode agent\` each, reading through \`lode attach\` + \`nbdcopy\`), 5 cache nodes ($([ $MC -eq 1 ] && echo memcached || echo 'lode cache-node, write key')), moto S3; one-way delay per link: host→node $ND ms, host→store $SD ms; image: one $MIB MiB random file"
}

if [ "$BENCH" -eq 0 ]; then
  echo "# lode test bed"
  echo
  header
  echo "- store GETs / fleet chunks: chunks the hosts' agents fetched from S3 / from the cache nodes; attach: \`lode attach\` (opens the manifest); read: \`nbdcopy\` of the whole export"
  echo
  echo "| scenario | hosts | store GETs | fleet chunks | read p50 / p99 (ms) | attach p50 (ms) | failed hosts | wall (ms) |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|"
  row() { # row SCENARIO: the last herd's result
    read -r gets fleet p50 p99 err wall attach <<<"$RES"
    echo "| $1 | $K | $gets | $fleet | $p50 / $p99 | $attach | $err | $wall |"
  }
  new_image; hosts 1 2 3 4 5; herd; row herd
  new_image; hosts 1 2 3 4 5; herd kill3; row "node-kill (node 3 killed at 200 ms, restarted empty)"
  hosts 1 2 3 4 5; herd; row "the same image again after node-kill (warm fleet, cold hosts)"
  node 6
  hosts 1 2 3 4 5; herd add6; row "node-add (node 6 joins as the herd starts; same image)"
  new_image; for ((i = 1; i <= K; i++)); do links $i $((SD * 10)); done
  hosts 1 2 3 4 5 6; herd; row "store-slow (store link $((SD * 10)) ms each way)"
  for ((i = 1; i <= K; i++)); do links $i "$SD"; done
  new_image; hosts 1 2 3 4 5 6; stop s3
  herd; row "store-down (S3 server stopped; every host must fail)"
  exit 0
fi

# ------------------------------------------------------------------ bench
fresh_fleet() { local n; stop node6; for n in 1 2 3 4 5; do stop "node$n"; node $n; done; }
warm() { # one host reads the new image and fills the fleet; BEFORE = stripes held
  local k=$K n; host 1 1 2 3 4 5; K=1; hosts_up; K=$k
  read_image 1; settled 1
  BEFORE=0; for n in 1 2 3 4 5; do BEFORE=$((BEFORE + $(node_stripes $n))); done
}
for s in quiet node-kill node-add; do : >"$W/bench-$s"; done
MOVED=0 ON6=0 STRIPES=0 FAILED=0
for ((r = 0; r < BENCH; r++)); do
  order=(quiet node-kill node-add)
  order=("${order[@]:$((r % 3))}" "${order[@]:0:$((r % 3))}")
  for s in "${order[@]}"; do
    fresh_fleet; new_image
    warm
    [ "$s" = node-add ] && node 6
    hosts 1 2 3 4 5
    case $s in
      quiet) herd ;;
      node-kill) herd kill3 ;;
      node-add) herd add6 ;;
    esac
    cat "$W/times" >>"$W/bench-$s"
    read -r _ _ _ _ err _ <<<"$RES"; FAILED=$((FAILED + err))
    if [ "$s" = node-add ]; then
      # Read repair writes node 6's stripes in the background: wait until steady.
      last=-1; for _ in $(seq 100); do now=$(node_stripes 6); [ "$now" = "$last" ] && break; last=$now; sleep 0.3; done
      # Every stripe written now is one that moved (to node 6, or to an old
      # node that won another stripe of the chunk).
      after=0; for n in 1 2 3 4 5 6; do after=$((after + $(node_stripes $n))); done
      MOVED=$((MOVED + after - BEFORE)); ON6=$((ON6 + now)); STRIPES=$((STRIPES + BEFORE))
    fi
    echo "round $r $s: $RES (fleet stripes before $BEFORE)" >&2
  done
done
echo "# Cold reads during fleet churn"
echo
header
echo "- $BENCH rounds; each scenario: 5 fresh nodes, a new image warmed into the fleet by one host, then all $K hosts restarted cold read it at once; read time: \`nbdcopy\` of the whole export through the host's agent (fleet hits, 4 of 5 stripes), after \`lode attach\`; order rotated per round"
echo "- node-kill: node 3 SIGKILLed 200 ms into the reads, restarted empty; node-add: node 6 added to every host's fleet with \`lode fleet set\` as the reads start"
echo "- failed host reads over all rounds: $FAILED"
echo
echo "| scenario | reads | read p50 (ms) | read p99 (ms) | p50 / quiet | p99 / quiet |"
echo "|---|---:|---:|---:|---:|---:|"
q50=$(pct 50 <"$W/bench-quiet"); q99=$(pct 99 <"$W/bench-quiet")
for s in quiet node-kill node-add; do
  p50=$(pct 50 <"$W/bench-$s"); p99=$(pct 99 <"$W/bench-$s")
  awk -v s="$s" -v n="$(wc -l <"$W/bench-$s")" -v a="$p50" -v b="$p99" -v qa="$q50" -v qb="$q99" \
    'BEGIN {printf "| %s | %d | %d | %d | %.2f | %.2f |\n", s, n, a, b, a / qa, b / qb}'
done
echo
awk -v m="$MOVED" -v s="$ON6" -v t="$STRIPES" 'BEGIN {printf "Stripes moved by the join of node 6 (5 → 6 nodes), i.e. written by read repair: %d of %d (%.3f; 1/N = %.3f, bound 1.5/N = %.3f), %d of them to node 6\n", m, t, m / t, 1 / 6, 1.5 / 6, s}'
