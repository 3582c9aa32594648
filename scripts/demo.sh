#!/usr/bin/env bash
# lode's main job, end to end, on the embedded defaults:
#
#   deps     install what the job needs (QEMU 10 and busybox-static through
#            scripts/vm-deps.sh, e2fsprogs, curl); nothing when present
#   corpus   build the `app-a` corpus image if needed (scripts/corpus.sh)
#   build    cargo build --release
#   flatten  lode flatten oci:target/corpus/app-a:latest -o target/demo/app-a.ext4
#   fsck     e2fsck -fn on the image
#   push     lode push to the embedded default store ($LODE_HOME/store)
#   fleet    start 5 lode cache-node processes on loopback (the AZ cache fleet)
#   cat      lode cat of the image's interpreter, in process, empty host cache:
#            only the chunks it needs are fetched (store, then the fleet)
#   boot     lode vm prepare (prints the kernel package, version and digests
#            it used) + lode run: a QEMU micro-VM boots on the image served
#            lazily over NBD and runs the image's program; prints the
#            start-up timings and chunks per tier. A boot that fails says
#            which stage it reached, with the guest console's last lines.
#   function lode serve (agent, manager, one worker, the Lambda API in one
#            process); boto3 creates a function from the `fn` corpus image
#            (app-a + AWS's runtime client awslambdaric) and invokes it cold,
#            then warm, printing where the time went.
#
# Prints the time and the sizes of every step. Steps are functions run in
# order by main(); later issues add push / serve / boot steps the same way.
# Env: LODE_CORPUS (default target/corpus), LODE_DEMO (default target/demo),
#      LODE_DEMO_IMAGE (default app-a).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

IMAGE=${LODE_DEMO_IMAGE:-app-a}
mkdir -p "${LODE_CORPUS:-target/corpus}" "${LODE_DEMO:-target/demo}"
CORPUS=$(realpath "${LODE_CORPUS:-target/corpus}")
DEMO=$(realpath "${LODE_DEMO:-target/demo}")
LODE=$REPO/target/release/lode
EXT4=$DEMO/$IMAGE.ext4
MNT=$DEMO/mnt
IS_ROOT=0; [ "$(id -u)" -eq 0 ] && IS_ROOT=1

STEPS=()      # "name|seconds|note" per finished step
MOUNTED=""

bold() { printf '\033[1m%s\033[0m\n' "$*"; }
human() { numfmt --to=iec-i --suffix=B --format='%.1f' "$1"; }

# step NAME FUNCTION: runs FUNCTION, records its wall time and its note.
NOTE=""
step() {
  local name=$1 fn=$2 t0 t1
  bold "== $name"
  NOTE=""
  t0=$(date +%s.%N)
  "$fn"
  t1=$(date +%s.%N)
  STEPS+=("$name|$(python3 -c "print(f'{$t1 - $t0:.2f}')")|$NOTE")
}

FLEET_PIDS=""
SERVE_PID=""
FLEET_PORTS="7301 7302 7303 7304 7305"
FLEET=$(for p in $FLEET_PORTS; do printf '127.0.0.1:%s,' "$p"; done | sed 's/,$//')

cleanup() {
  local m
  for m in $MOUNTED; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done
  for p in $FLEET_PIDS; do kill "$p" 2>/dev/null || true; done
  [ -z "$SERVE_PID" ] || kill "$SERVE_PID" 2>/dev/null || true
}
trap cleanup EXIT

# ---------------------------------------------------------------- steps

step_deps() {
  if [ "$IS_ROOT" -ne 1 ] && ! command -v sudo >/dev/null 2>&1; then
    echo "installing the demo's packages needs root: re-run with sudo" >&2
    exit 1
  fi
  local SUDO="" need=() pair cmd pkg
  [ "$IS_ROOT" -eq 1 ] || SUDO=sudo
  for pair in e2fsck:e2fsprogs curl:curl numfmt:coreutils; do
    cmd=${pair%%:*}; pkg=${pair##*:}
    command -v "$cmd" >/dev/null 2>&1 || need+=("$pkg")
  done
  # python3-venv: the function step's boto3 (PyPI) lives in a venv.
  python3 -c 'import ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
  if [ ${#need[@]} -gt 0 ]; then
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
  fi
  # QEMU 10 (bookworm-backports), busybox-static, xz; refreshes apt's lists,
  # which `lode vm prepare` reads to find today's kernel package.
  "$REPO/scripts/vm-deps.sh"
  NOTE="$(qemu-system-x86_64 --version | head -n 1)"
}

step_corpus() {
  if [ -f "$CORPUS/stamps/image-$IMAGE" ]; then
    NOTE="exists"
  elif [ "$IS_ROOT" -eq 1 ]; then
    "$REPO/scripts/corpus.sh" "$IMAGE"
  else
    echo "building the corpus needs root (debootstrap, chroot): run sudo scripts/corpus.sh $IMAGE" >&2
    exit 1
  fi
  local blobs
  blobs=$(du -sbl "$CORPUS/$IMAGE" | cut -f1)
  NOTE="oci:$CORPUS/$IMAGE:latest, $(human "$blobs") of blobs"
}

step_build() {
  cargo build --release -q -p lode-cli
  NOTE="$LODE"
}

step_flatten() {
  "$LODE" flatten "oci:$CORPUS/$IMAGE:latest" -o "$EXT4"
  local apparent allocated
  apparent=$(stat -c %s "$EXT4")
  allocated=$(( $(stat -c %b "$EXT4") * $(stat -c %B "$EXT4") ))
  NOTE="$EXT4: $(human "$apparent") image, $(human "$allocated") allocated (sparse)"
}

step_fsck() {
  e2fsck -fn "$EXT4"
  NOTE="clean"
}

step_run() {
  if [ "$IS_ROOT" -ne 1 ]; then
    echo "not root: skipping the loop mount and the chroot run (re-run with sudo)"
    NOTE="skipped (not root)"
    return
  fi
  mkdir -p "$MNT"
  mount -o loop,ro "$EXT4" "$MNT"
  MOUNTED=$MNT
  # The image is mounted read-only; give the program a writable /tmp.
  mount -t tmpfs tmpfs "$MNT/tmp"
  MOUNTED="$MNT/tmp $MNT"
  local cmd
  cmd=$(python3 - "$CORPUS/$IMAGE" <<'EOF'
import json, os, shlex, sys
d = sys.argv[1]
blob = lambda desc: os.path.join(d, "blobs", *desc["digest"].split(":", 1))
idx = json.load(open(os.path.join(d, "index.json")))
man = json.load(open(blob(idx["manifests"][0])))
cfg = json.load(open(blob(man["config"])))["config"]
print(shlex.join((cfg.get("Entrypoint") or []) + (cfg.get("Cmd") or [])))
EOF
)
  echo "\$ chroot $MNT $cmd   (from the image config)"
  # -B: the image is read-only, Python must not try to write .pyc files.
  # shellcheck disable=SC2086
  chroot "$MNT" /usr/bin/env -i PATH=/usr/local/bin:/usr/bin:/bin LANG=C.UTF-8 PYTHONDONTWRITEBYTECODE=1 $cmd
  umount "$MNT/tmp" "$MNT"
  MOUNTED=""
  NOTE="ran '$cmd' from the mounted image"
}

image_cmd() {
  python3 - "$CORPUS/$IMAGE" <<'EOF'
import json, os, shlex, sys
d = sys.argv[1]
blob = lambda desc: os.path.join(d, "blobs", *desc["digest"].split(":", 1))
idx = json.load(open(os.path.join(d, "index.json")))
man = json.load(open(blob(idx["manifests"][0])))
cfg = json.load(open(blob(man["config"])))["config"]
print(shlex.join((cfg.get("Entrypoint") or []) + (cfg.get("Cmd") or [])))
EOF
}

step_push() {
  local out
  out=$("$LODE" push "oci:$CORPUS/$IMAGE:latest" --tenant demo --name "$IMAGE")
  echo "$out"
  NOTE=$(echo "$out" | sed -n 's/.*: \(chunks total.*\) (manifest.*/\1/p')
}

step_fleet() {
  local p
  for p in $FLEET_PORTS; do
    "$LODE" cache-node --listen "127.0.0.1:$p" --memory 512M >"$DEMO/node-$p.log" 2>&1 &
    FLEET_PIDS="$FLEET_PIDS $!"
  done
  for p in $FLEET_PORTS; do
    for _ in $(seq 50); do curl -sf "http://127.0.0.1:$p/health" >/dev/null 2>&1 && break; sleep 0.1; done
  done
  NOTE="5 nodes: $FLEET"
}

step_cat() {
  local cache="$DEMO/cat-cache"
  rm -rf "$cache"
  # First from the store (this also fills the fleet), then with a new empty
  # host cache from the fleet.
  "$LODE" cat "$IMAGE" /usr/bin/python3 --tenant demo --cache-dir "$cache" --cache-nodes "$FLEET" >/dev/null
  sleep 1
  rm -rf "$cache"
  local err
  err=$("$LODE" cat "$IMAGE" /usr/bin/python3 --tenant demo --cache-dir "$cache" --cache-nodes "$FLEET" 2>&1 >/dev/null)
  echo "$err"
  NOTE=$(echo "$err" | sed 's/^lode cat: //')
}

step_boot() {
  local prep kernel
  prep=$("$LODE" vm prepare)
  echo "$prep"
  kernel=$(echo "$prep" | sed -n 's/^kernel package \([^ ]* [^ ]*\).*/\1/p')
  local cmd err
  cmd=$(image_cmd)
  rm -rf "$DEMO/boot-cache"
  echo "\$ lode run $IMAGE --tenant demo --cache-nodes ... -- env PYTHONDONTWRITEBYTECODE=1 $cmd"
  # shellcheck disable=SC2086
  err=$("$LODE" run "$IMAGE" --tenant demo --cache-dir "$DEMO/boot-cache" --cache-nodes "$FLEET" -- env PYTHONDONTWRITEBYTECODE=1 $cmd 2> >(tee "$DEMO/run.err" >&2))
  echo "$err"
  NOTE="$(sed -n 's/^lode run: //p' "$DEMO/run.err"); guest kernel $kernel"
}

step_function() {
  if [ ! -f "$CORPUS/stamps/image-fn" ]; then
    [ "$IS_ROOT" -eq 1 ] || { echo "building the fn image needs root: run sudo scripts/corpus.sh fn" >&2; exit 1; }
    "$REPO/scripts/corpus.sh" fn
  fi
  "$LODE" push "oci:$CORPUS/fn:latest" --tenant demo --name fn | tail -n 1
  local venv=$DEMO/venv
  if ! "$venv/bin/python3" -c 'import boto3' >/dev/null 2>&1; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check 'boto3>=1.34'
  fi
  local creds addr=""
  creds=$("$LODE" credentials add --tenant demo)
  "$LODE" serve --listen 127.0.0.1:0 >"$DEMO/serve.log" 2>&1 &
  SERVE_PID=$!
  for _ in $(seq 600); do
    addr=$(sed -n 's/^lode serve listening on //p' "$DEMO/serve.log")
    [ -n "$addr" ] && break
    kill -0 "$SERVE_PID" 2>/dev/null || break
    sleep 0.1
  done
  [ -n "$addr" ] || { echo "lode serve did not start:" >&2; cat "$DEMO/serve.log" >&2; exit 1; }
  sed -n 's/^lode serve: //p' "$DEMO/serve.log"
  "$venv/bin/python3" "$REPO/scripts/demo-function.py" "http://$addr" "$creds" | tee "$DEMO/function.out"
  kill -TERM "$SERVE_PID"; wait "$SERVE_PID" || true; SERVE_PID=""
  NOTE=$(sed -n 's/^function: //p' "$DEMO/function.out")
}

summary() {
  bold "== summary ($IMAGE)"
  local s name secs note
  printf '%-10s %9s  %s\n' step seconds notes
  for s in "${STEPS[@]}"; do
    IFS='|' read -r name secs note <<<"$s"
    printf '%-10s %9s  %s\n' "$name" "$secs" "$note"
  done
}

main() {
  step deps step_deps
  step corpus step_corpus
  step build step_build
  step flatten step_flatten
  step fsck step_fsck
  step push step_push
  step fleet step_fleet
  step cat step_cat
  step boot step_boot
  step function step_function
  summary
}

main "$@"
