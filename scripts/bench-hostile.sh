#!/usr/bin/env bash
# Benchmarks of the bounds against hostile input (issue 17), as Markdown:
#
#   scripts/bench-hostile.sh [BASE]
#
# BASE is the commit to compare with (default: the merge base with main);
# it is exported with `git archive` and built in release mode beside this
# tree (same CARGO_TARGET_DIR, so dependencies build once).
#
# 1. flatten scaling (this tree and BASE, same inputs): peak RSS
#    (/usr/bin/time) and wall time against the number of entries (empty
#    files, 1,000 per directory), the depth (directories nested in one
#    chain) and the number of layers (100 files each); least-squares slopes.
# 2. the cost of the bounds on the normal paths, BASE and this tree
#    interleaved, REPS runs each (default 3): push of a 1 GiB random image
#    to a file store, pull of it (every chunk read from the store), and
#    cache-node GETs (one node of each build, one client:
#    crates/lode-fleet/examples/getbench.rs).
#
# Env: REPS, SECTIONS (default "1 2"), BENCH_WORKDIR (default a temp dir,
# deleted), OUT (default target/bench-hostile/report.md).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
BASE=${1:-$(git merge-base HEAD main)}
REPS=${REPS:-3}
SECTIONS=${SECTIONS:-"1 2"}
want() { [[ " $SECTIONS " == *" $1 "* ]]; }
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
OUT=${OUT:-target/bench-hostile/report.md}
mkdir -p "$(dirname "$OUT")"
: > "$OUT"
W=${BENCH_WORKDIR:-$(mktemp -d "${TMPDIR:-/var/tmp}/lode-bench-hostile.XXXX")}
[ -n "${BENCH_WORKDIR:-}" ] || trap 'rm -rf "$W"' EXIT
mkdir -p "$W"
out() { printf '%s\n' "$*" | tee -a "$OUT"; }
log() { printf '\033[1m== %s\033[0m\n' "$*" >&2; }

log "building this tree and $BASE (release)"
cargo build --release -q -p lode-cli
cargo build --release -q -p lode-fleet --example getbench
cp "$CARGO_TARGET_DIR/release/lode" "$W/lode-new"
cp "$CARGO_TARGET_DIR/release/examples/getbench" "$W/getbench"
rm -rf "$W/base-src" && mkdir -p "$W/base-src"
git archive "$BASE" | tar -x -C "$W/base-src"
(cd "$W/base-src" && cargo build --release -q -p lode-cli)
cp "$CARGO_TARGET_DIR/release/lode" "$W/lode-base"
NEW=$W/lode-new
OLD=$W/lode-base

out "# Bounds against hostile input: benchmarks"
out ""
out "$(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); this tree $(git rev-parse --short HEAD) vs base $(git rev-parse --short "$BASE"); \`scripts/bench-hostile.sh\`, $(date -u +%F)."
out ""

# gen KIND N DIR: an OCI layout of uncompressed layers (stdlib only).
gen() {
  python3 - "$@" <<'EOF'
import hashlib, io, json, os, sys, tarfile
kind, n, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
blobs = os.path.join(out, "blobs", "sha256")
os.makedirs(blobs, exist_ok=True)
def put(b):
    d = hashlib.sha256(b).hexdigest()
    open(os.path.join(blobs, d), "wb").write(b)
    return d
def layer(entries):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for name, isdir in entries:
            ti = tarfile.TarInfo(name)
            ti.type = tarfile.DIRTYPE if isdir else tarfile.REGTYPE
            ti.mode = 0o755 if isdir else 0o644
            ti.mtime = 1700000000
            t.addfile(ti)
    return buf.getvalue()
layers = []
if kind == "files":
    ents = []
    for i in range(n):
        if i % 1000 == 0:
            ents.append((f"d{i // 1000:05}", True))
        ents.append((f"d{i // 1000:05}/f{i:07}", False))
    layers.append(layer(ents))
elif kind == "depth":
    ents, p = [], "d"
    for i in range(n):
        ents.append((p, True))
        p += "/d"
    layers.append(layer(ents))
elif kind == "layers":
    for l in range(n):
        layers.append(layer([(f"l{l:04}", True)] + [(f"l{l:04}/f{i:03}", False) for i in range(100)]))
descs = []
for b in layers:
    d = put(b)
    descs.append({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": "sha256:" + d, "size": len(b)})
cfg = json.dumps({"architecture": "amd64", "os": "linux",
                  "rootfs": {"type": "layers", "diff_ids": [x["digest"] for x in descs]}}).encode()
c = put(cfg)
man = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                  "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": "sha256:" + c, "size": len(cfg)},
                  "layers": descs}).encode()
m = put(man)
json.dump({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
           "digest": "sha256:" + m, "size": len(man)}]}, open(os.path.join(out, "index.json"), "w"))
open(os.path.join(out, "oci-layout"), "w").write('{"imageLayoutVersion":"1.0.0"}')
EOF
}

# measure BIN LAYOUT [ARGS...] -> "seconds peak_kib" (or "fail" / "timeout")
measure() {
  local bin=$1 layout=$2; shift 2
  rm -f "$W/img"
  if timeout 600 /usr/bin/time -f "%e %M" -o "$W/time" "$bin" flatten "oci:$layout" -o "$W/img" "$@" 2>"$W/err" >/dev/null; then
    tail -1 "$W/time"
  elif [ $? -eq 124 ]; then echo "timeout"; else echo "fail: $(tail -1 "$W/err")"; fi
}

# slope: reads "x seconds kib" lines; prints bytes per x and µs per x.
slope() {
  python3 -c '
import sys
rows = [l.split() for l in sys.stdin if l.strip()]
rows = [(float(x), float(s), float(k) * 1024) for x, s, k in rows]
def fit(pts):
    n = len(pts); mx = sum(p[0] for p in pts) / n; my = sum(p[1] for p in pts) / n
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    return sum((p[0] - mx) * (p[1] - my) for p in pts) / sxx if sxx else 0
print(f"{fit([(x, k) for x, s, k in rows]):.0f} bytes and {fit([(x, s) for x, s, k in rows]) * 1e6:.1f} µs")'
}

NOLIMITS=(--max-entries 100000000 --max-inodes 16000000 --max-device-size 16T --max-layers 100000)
if want 1; then
  out "## 1. Flatten: peak memory and time against entries, depth and layers"
  out ""
  for kind in files depth layers; do
    case $kind in
      files) sizes="50000 100000 200000 400000"; what="entries (empty files)";;
      depth) sizes="1000 2000 4000 8000"; what="depth (nested directories)";;
      layers) sizes="16 32 64 128"; what="layers (100 files each)";;
    esac
    out "### $what"
    out ""
    out "| $kind | this tree: s | peak MiB | base: s | peak MiB |"
    out "|---:|---:|---:|---:|---:|"
    : > "$W/fit-new"; : > "$W/fit-old"
    for n in $sizes; do
      log "flatten $kind $n"
      rm -rf "$W/oci" && gen "$kind" "$n" "$W/oci"
      r_new=$(measure "$NEW" "$W/oci" "${NOLIMITS[@]}")
      r_old=$(measure "$OLD" "$W/oci")
      cell() { case $1 in fail*|timeout) echo "$1 | –";; *) set -- $1; echo "$1 | $(( $2 / 1024 ))";; esac; }
      out "| $n | $(cell "$r_new") | $(cell "$r_old") |"
      [[ $r_new == fail* || $r_new == timeout ]] || echo "$n $r_new" >> "$W/fit-new"
      [[ $r_old == fail* || $r_old == timeout ]] || echo "$n $r_old" >> "$W/fit-old"
    done
    unit=${kind%s}; [ "$kind" = depth ] && unit=level
    out ""
    out "Slope per $unit: this tree $(slope < "$W/fit-new"); base $(slope < "$W/fit-old")."
    out ""
  done
fi

median() { python3 -c 'import sys, statistics; print(f"{statistics.median(float(x) for x in sys.argv[1:]):.3f}")' "$@"; }

if want 2; then
  out "## 2. The cost of the bounds on the normal paths (base and this tree interleaved, $REPS runs)"
  out ""
  log "1 GiB random image"
  head -c $((1 << 30)) /dev/urandom > "$W/random.img"
  export LODE_HOME=$W/home
  declare -A push pull
  for i in $(seq "$REPS"); do
    for v in base new; do
      bin=$OLD; [ $v = new ] && bin=$NEW
      rm -rf "$W/store-$v"
      /usr/bin/time -f %e -o "$W/t" "$bin" push "ext4:$W/random.img" --tenant b --name r --store "$W/store-$v" >/dev/null 2>&1
      push[$v]="${push[$v]:-} $(tail -1 "$W/t")"
      rm -f "$W/pulled"
      /usr/bin/time -f %e -o "$W/t" "$bin" pull r --tenant b --store "$W/store-$v" -o "$W/pulled" >/dev/null 2>&1
      pull[$v]="${pull[$v]:-} $(tail -1 "$W/t")"
    done
  done
  out "| path | base: s per run | median | this tree: s per run | median | this / base |"
  out "|---|---|---:|---|---:|---:|"
  for p in push pull; do
    declare -n t=$p
    mb=$(median ${t[base]}); mn=$(median ${t[new]})
    out "| $p 1 GiB (file store) |${t[base]} | $mb |${t[new]} | $mn | $(python3 -c "print(f'{$mn / $mb:.3f}')") |"
  done
  out ""
  log "cache-node GETs"
  pa=$((20000 + RANDOM % 10000)); pb=$((pa + 1))
  "$OLD" cache-node --listen "127.0.0.1:$pa" --memory 1G 2>/dev/null & na=$!
  "$NEW" cache-node --listen "127.0.0.1:$pb" --memory 1G 2>/dev/null & nb=$!
  sleep 1
  out "Cache-node GETs: node a = base, node b = this tree."
  out ""
  "$W/getbench" --a "127.0.0.1:$pa" --b "127.0.0.1:$pb" | tee -a "$OUT"
  kill $na $nb; wait $na $nb 2>/dev/null || true
fi
log "report: $OUT"
