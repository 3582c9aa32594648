#!/usr/bin/env python3
"""Chunk-level dedup between block images.

  chunkdiff.py [--chunk 524288] [--json] BASE... NEW

Cuts every image into fixed chunks (default 512 KiB, lode's chunk size),
hashes each with SHA-256, leaves out all-zero chunks (holes: never stored),
and reports how many of NEW's chunks, and how many bytes, are not among the
chunks of any BASE image: what a content-addressed chunk store has to add
when NEW arrives after the BASE images. Holes in sparse files are skipped
without reading them (SEEK_DATA/SEEK_HOLE).
"""

import argparse
import hashlib
import json
import os
import sys


def data_ranges(f, size):
    """(start, end) byte ranges that may hold data (whole file if SEEK_DATA is unsupported)."""
    fd = f.fileno()
    pos = 0
    try:
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:  # ENXIO: no more data
                break
            end = os.lseek(fd, start, os.SEEK_HOLE)
            yield start, end
            pos = end
    except (AttributeError, OSError):
        yield 0, size


def chunk_hashes(path, chunk):
    """{sha256: count} of the non-zero chunks of PATH, and the total chunk count."""
    size = os.path.getsize(path)
    total = (size + chunk - 1) // chunk
    zero = hashlib.sha256(bytes(chunk)).digest()
    hashes = {}
    seen = set()
    with open(path, "rb") as f:
        for start, end in data_ranges(f, size):
            first, last = start // chunk, (end - 1) // chunk
            for i in range(first, last + 1):
                if i in seen:
                    continue
                seen.add(i)
                f.seek(i * chunk)
                b = f.read(chunk)
                if len(b) < chunk:
                    b = b + bytes(chunk - len(b))
                h = hashlib.sha256(b).digest()
                if h == zero:
                    continue
                hashes[h] = hashes.get(h, 0) + 1
    return hashes, total


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chunk", type=int, default=512 * 1024)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("images", nargs="+", metavar="IMAGE")
    args = ap.parse_args()
    if len(args.images) < 2:
        ap.error("need at least one BASE image and the NEW image")
    *bases, new = args.images
    known = set()
    base_nonzero = 0
    for b in bases:
        h, _ = chunk_hashes(b, args.chunk)
        base_nonzero += sum(h.values())
        known.update(h)
    nh, ntotal = chunk_hashes(new, args.chunk)
    nonzero = sum(nh.values())
    unique = {h: c for h, c in nh.items() if h not in known}
    # A chunk that repeats inside NEW is stored once.
    res = {
        "chunk_bytes": args.chunk,
        "new": new,
        "bases": bases,
        "new_chunks_total": ntotal,
        "new_chunks_nonzero": nonzero,
        "new_chunks_distinct": len(nh),
        "new_chunks_not_in_base": sum(unique.values()),
        "new_distinct_not_in_base": len(unique),
        "unique_bytes": len(unique) * args.chunk,
        "shared_fraction": 1 - sum(unique.values()) / nonzero if nonzero else 1.0,
        "base_chunks_nonzero": base_nonzero,
    }
    if args.json:
        json.dump(res, sys.stdout)
        print()
    else:
        print(f"{new}: {ntotal} chunks of {args.chunk} B, {nonzero} non-zero ({len(nh)} distinct)")
        print(f"  not in {', '.join(bases)}: {res['new_chunks_not_in_base']} chunks, "
              f"{len(unique)} distinct = {res['unique_bytes'] / 2**20:.1f} MiB to store "
              f"({100 * res['shared_fraction']:.1f}% of non-zero chunks shared)")


if __name__ == "__main__":
    main()
