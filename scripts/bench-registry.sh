#!/usr/bin/env bash
# Registry ingest benchmark (issue 13): wall time of `lode push docker://...`
# until the image's manifest and pointer are stored, side by side in one run
# with `skopeo copy docker://... oci:DIR` (just the download) from the same
# registry and image; also `lode flatten docker://...`. Peak RSS (GNU time)
# and peak extra disk (sampled every 0.1 s) for each.
#
#   scripts/bench-registry.sh [OCI_LAYOUT[:REF]]
#   LODE_BASELINE=/path/to/older/lode scripts/bench-registry.sh   # adds its rows
#
# The registry is Debian's docker-registry on loopback with TLS (a test CA)
# and htpasswd basic auth. Without an argument the image is the corpus's
# `big` image if scripts/corpus.sh built it, else three layers made from
# this machine's /usr/bin (gzip), /usr/lib/x86_64-linux-gnu (zstd) and
# /usr/share/doc (plain tar) with scripts/ocilayout.py.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
for t in docker-registry skopeo htpasswd openssl /usr/bin/time; do
  command -v "$t" >/dev/null || { echo "missing $t (scripts/test.sh installs it)"; exit 1; }
done
cargo build --release -q -p lode-cli
L=${CARGO_TARGET_DIR:-target}/release/lode
W=$(mktemp -d "${TMPDIR:-/var/tmp}/lode-bench-registry.XXXX")
REG_PID=""
cleanup() { [ -n "$REG_PID" ] && kill "$REG_PID" 2>/dev/null; rm -rf "$W"; }
trap cleanup EXIT

CORPUS=${LODE_CORPUS:-target/corpus}
if [ $# -ge 1 ]; then
  SRC=$1
elif [ -d "$CORPUS/big" ]; then
  SRC="$CORPUS/big:latest"
else
  O=$REPO/scripts/ocilayout.py
  python3 "$O" layer --src /usr/bin --out "$W/l1" --compress gzip >/dev/null
  python3 "$O" layer --src /usr/lib/x86_64-linux-gnu --out "$W/l2" --compress zstd >/dev/null
  python3 "$O" layer --src /usr/share/doc --out "$W/l3" --compress none >/dev/null
  python3 "$O" image --out "$W/src" --name bench --ref latest "$W/l1.json" "$W/l2.json" "$W/l3.json" >/dev/null
  rm -f "$W"/l?.blob
  SRC="$W/src:latest"
fi

# TLS from a test CA, basic auth.
cd "$W"
openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 2 -subj "/CN=lode bench CA" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -keyout srv.key -out srv.csr -subj "/CN=127.0.0.1" 2>/dev/null
printf "subjectAltName=IP:127.0.0.1,DNS:localhost\n" > ext.cnf
openssl x509 -req -in srv.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out srv.crt -days 2 -extfile ext.cnf 2>/dev/null
htpasswd -Bbc htpasswd bench benchpw 2>/dev/null
mkdir -p certs.d && cp ca.crt certs.d/
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > config.yml <<CFG
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $W/data
http:
  addr: 127.0.0.1:$PORT
  tls:
    certificate: $W/srv.crt
    key: $W/srv.key
auth:
  htpasswd:
    realm: bench
    path: $W/htpasswd
CFG
docker-registry serve config.yml 2>registry.log &
REG_PID=$!
for _ in $(seq 100); do (echo > /dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.1; done
cd "$REPO"
skopeo copy --quiet --dest-cert-dir "$W/certs.d" --dest-creds bench:benchpw "oci:$SRC" "docker://127.0.0.1:$PORT/bench:1"
REF="docker://127.0.0.1:$PORT/bench:1"
AUTH=(--cert-dir "$W/certs.d" --creds bench:benchpw)

# measure KEY NAME DIR CMD...: runs CMD measuring wall time, peak RSS and
# the peak size of DIR; the wall time is kept in $W/secs.KEY.
measure() {
  local key=$1 name=$2 watch=$3; shift 3
  local peak=0 pid
  /usr/bin/time -f "%e %M %U %S" -o "$W/time" "$@" >"$W/out" 2>"$W/err" &
  pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    local d; d=$(du -sB1 "$watch" 2>/dev/null | cut -f1); d=${d:-0}
    [ "$d" -gt "$peak" ] && peak=$d
    sleep 0.1
  done
  wait "$pid" || { echo "$name failed:"; cat "$W/err"; exit 1; }
  read -r secs kib usr sys < <(tail -1 "$W/time")
  printf "| %-46s | %8.2f | %8.2f | %9d | %10d |\n" "$name" "$secs" "$(awk "BEGIN{print $usr + $sys}")" "$((kib / 1024))" "$((peak / 1048576))"
  echo "$secs" > "$W/secs.$key"
}

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "image: $SRC ($(du -sh "${SRC%%:*}" | cut -f1) stored), registry 127.0.0.1:$PORT (TLS, basic auth)"
echo
echo "| command | wall s | CPU s | peak RSS MiB | peak extra disk MiB |"
echo "|---|---:|---:|---:|---:|"
mkdir -p "$W/dl" "$W/flat" "$W/home"
sync
measure skopeo "skopeo copy docker:// oci:DIR (download only)" "$W/dl" \
  skopeo copy --quiet --src-cert-dir "$W/certs.d" --src-creds bench:benchpw "$REF" "oci:$W/dl/img:latest"
rm -rf "$W/dl"
measure flatten "lode flatten docker:// -o FILE" "$W/flat" \
  "$L" flatten "$REF" -o "$W/flat/img.ext4" "${AUTH[@]}"
rm -rf "$W/flat"
mkdir -p "$W/flat"
measure local "lode flatten oci:DIR -o FILE (same image, local)" "$W/flat" \
  "$L" flatten "oci:$SRC" -o "$W/flat/img.ext4"
rm -rf "$W/flat"
measure push "lode push docker:// (to manifest + pointer stored)" "$W/home" \
  env LODE_HOME="$W/home" "$L" push "$REF" --tenant bench --name img --store "file://$W/store" "${AUTH[@]}"
if [ -n "${LODE_BASELINE:-}" ]; then
  mkdir -p "$W/flat" "$W/home0"
  measure base_flatten "baseline: lode flatten docker:// -o FILE" "$W/flat" \
    "$LODE_BASELINE" flatten "$REF" -o "$W/flat/img.ext4" "${AUTH[@]}"
  rm -rf "$W/flat"
  measure base_push "baseline: lode push docker://" "$W/home0" \
    env LODE_HOME="$W/home0" "$LODE_BASELINE" push "$REF" --tenant bench --name img --store "file://$W/store0" "${AUTH[@]}"
fi
echo
s=$(cat "$W/secs.skopeo")
p=$(cat "$W/secs.push")
f=$(cat "$W/secs.flatten")
o=$(cat "$W/secs.local")
python3 -c "print(f'lode push / skopeo download = {$p/$s:.2f}x; lode flatten docker:// / skopeo download = {$f/$s:.2f}x (goal <= 1.2x); lode flatten docker:// / lode flatten oci: = {$f/$o:.2f}x')"
if [ -n "${LODE_BASELINE:-}" ]; then
  b=$(cat "$W/secs.base_push")
  python3 -c "print(f'lode push / baseline lode push = {$p/$b:.2f}x; baseline push / skopeo download = {$b/$s:.2f}x')"
fi
echo "(peak extra disk of lode push = its flattened image under \$LODE_HOME/tmp, allocated blocks; the store is not counted)"
