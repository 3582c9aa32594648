#!/usr/bin/env bash
# Chunk format v2 (issue 14): bytes a store holds for scripts/corpus.sh's
# images — format v1 (every distinct non-zero 512 KiB chunk stored raw) and
# format v2 (zstd when it saves an eighth) — against the registry's blob
# bytes for the same images (each distinct blob once: layers, configs,
# manifests), in one run; the zstd level table on the python image's
# chunks; and the push time of each image.
#
#   scripts/bench-compress.sh        (needs the corpus: sudo scripts/corpus.sh debian python app-a app-b)
set -euo pipefail
cd "$(dirname "$0")/.."
CORPUS=${LODE_CORPUS:-target/corpus}
T=${CARGO_TARGET_DIR:-target}
cargo build --release -q -p lode-cli
cargo build --release -q -p lode-chunk --example codec_levels
L=$T/release/lode
W=$(mktemp -d "${TMPDIR:-/var/tmp}/lode-bench-compress.XXXX")
trap 'rm -rf "$W"' EXIT
export LODE_HOME="$W/home"
IMAGES=(debian python app-a app-b)
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
for i in "${IMAGES[@]}"; do
  $L flatten "oci:$CORPUS/$i:latest" -o "$W/$i.img" >/dev/null 2>&1
done
echo
echo "## zstd level on the python image's chunks"
"$T/release/examples/codec_levels" "$W/python.img" 1 3 6
echo
echo "## Push (format v2) into one file:// store, in corpus order"
echo "| image | chunks uploaded | bytes uploaded | seconds |"
echo "|---|---|---|---|"
for i in "${IMAGES[@]}"; do
  out=$($L push "ext4:$W/$i.img" --tenant t --name "$i" --store "file://$W/store")
  echo "$out" | sed -n 's/^pushed t\/\([^:]*\):.*uploaded \([0-9]*\), bytes uploaded \([0-9]*\), \([0-9.]*\) s.*/| \1 | \2 | \3 | \4 |/p'
done
echo
for i in "${IMAGES[@]}"; do
  $L inspect "$i" --tenant t --store "file://$W/store" | sed -n "s/^\(bytes\|codecs\) */$i \1: /p"
done
echo
python3 - "$CORPUS" "$W" "$W/store" "${IMAGES[@]}" <<'PY'
import hashlib, json, os, sys
corpus, work, store, images = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
CS = 512 * 1024
# Registry: every distinct blob the images reference (manifest, config, layers).
blobs = {}
for i in images:
    idx = json.load(open(os.path.join(corpus, i, "index.json")))
    for m in idx["manifests"]:
        blobs[m["digest"]] = m["size"]
        man = json.load(open(os.path.join(corpus, i, "blobs", *m["digest"].split(":"))))
        for d in [man["config"]] + man["layers"]:
            blobs[d["digest"]] = d["size"]
registry = sum(blobs.values())
# Format v1: each distinct non-zero chunk once, raw (what lode stored before).
seen, v1 = set(), 0
for i in images:
    with open(os.path.join(work, f"{i}.img"), "rb") as f:
        while True:
            c = f.read(CS)
            if not c:
                break
            if c.count(0) == len(c):
                continue
            h = hashlib.sha256(c).digest()
            if h not in seen:
                seen.add(h)
                v1 += len(c)
# Format v2: the chunk objects in the store, as written.
v2 = n = 0
for root, _, files in os.walk(store):
    if "/chunks/" in root + "/":
        for f in files:
            v2 += os.path.getsize(os.path.join(root, f))
            n += 1
print("## Store bytes for " + " + ".join(images) + " (one store, dedup across images)")
print("| | bytes | ÷ registry |")
print("|---|---|---|")
print(f"| registry blobs (distinct layers, configs, manifests) | {registry:,} | 1.00 |")
print(f"| lode store, chunk format v1 (distinct non-zero chunks, raw) | {v1:,} | {v1/registry:.2f} |")
print(f"| lode store, chunk format v2 ({n} chunk objects as pushed) | {v2:,} | {v2/registry:.2f} |")
print(f"v2 ÷ v1 = {v2/v1:.3f} ({v1/v2:.2f}x fewer bytes)")
PY
