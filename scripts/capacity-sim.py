#!/usr/bin/env python3
"""Fleet hit rate against fleet size, on a synthetic start trace (stdlib only).

  scripts/capacity-sim.py [--starts N] [--images N] [--seed S]

The trace: container starts pick an image by Zipf popularity (s = 1.1) over
--images images; every image's start reads its working set, W chunks
(uniform 200-1,200 chunks of 512 KiB, i.e. 100-600 MB), of which a third come
from one of 40 shared base images (Zipf over bases) and the rest are the
image's own. One host in a fleet of 1,000 serves each start; a host's own
disk cache (200 GiB) is modelled as a per-host LRU only for its last images
(hosts keep what they ran: p = 0.5 that the host already ran the image),
so only host-cache misses reach the fleet. The fleet is one LRU over chunks
(LRU-2 admits only re-read chunks; plain LRU is the pessimistic bound) with
capacity = nodes x node GiB / (512 KiB x 5/4). Prints a Markdown table of
fleet hit rate (by chunks) per fleet size, measured after a warm-up of the
first 20 % of starts.
"""

import argparse
import random
from collections import OrderedDict


def zipf_sampler(n, s, rng):
    weights = [1.0 / (k ** s) for k in range(1, n + 1)]
    total = sum(weights)
    cum, acc = [], 0.0
    for w in weights:
        acc += w / total
        cum.append(acc)

    import bisect

    def sample():
        return min(bisect.bisect_left(cum, rng.random()), n - 1)

    return sample


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--starts", type=int, default=20000)
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--node-gib", type=float, default=64.0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    pick_image = zipf_sampler(args.images, 1.1, rng)
    pick_base = zipf_sampler(40, 1.0, rng)
    sizes = [rng.randint(200, 1200) for _ in range(args.images)]
    bases = [pick_base() for _ in range(args.images)]
    trace = []
    for _ in range(args.starts):
        i = pick_image()
        # The host already ran this image half the time: its disk cache serves it.
        trace.append(None if rng.random() < 0.5 else i)

    def chunks(i):
        w = sizes[i]
        shared = w // 3
        b = bases[i]
        return [("b", b, k) for k in range(shared)] + [("i", i, k) for k in range(w - shared)]

    stripe_chunk = 512 * 1024 * 5 / 4
    catalog = sum(sizes[i] - sizes[i] // 3 for i in range(args.images)) + 40 * max(sizes) // 3
    print(f"Catalog: {args.images} images, {catalog:,} distinct chunks ({catalog * 512 / 2**20:,.0f} GiB); {args.starts} starts, node {args.node_gib:g} GiB.")
    print()
    print("| cache nodes | fleet GiB | fleet capacity (chunks) | capacity / catalog | fleet hit rate (chunks) | store GETs per 1,000 starts |")
    print("|---:|---:|---:|---:|---:|---:|")
    for nodes in (3, 5, 10, 20, 40, 80):
        cap = int(nodes * args.node_gib * 2**30 / stripe_chunk)
        lru = OrderedDict()
        hits = misses = 0
        warm = len(trace) // 5
        for n, i in enumerate(trace):
            if i is None:
                continue
            for c in chunks(i):
                if c in lru:
                    lru.move_to_end(c)
                    if n >= warm:
                        hits += 1
                else:
                    lru[c] = True
                    if len(lru) > cap:
                        lru.popitem(last=False)
                    if n >= warm:
                        misses += 1
        total = hits + misses
        measured = len(trace) - warm
        print(
            f"| {nodes} | {nodes * args.node_gib:.0f} | {cap:,} | {cap / catalog:.2f} | {hits / total:.3f} | {misses * 1000 / measured:,.0f} |"
        )


if __name__ == "__main__":
    main()
