#!/usr/bin/env python3
"""What an ext4 image's new chunks hold: attribution of chunkdiff's result.

  chunkwhat.py [--chunk 524288] [--depth 3] [--json] BASE NEW

Finds NEW's non-zero chunks whose content (SHA-256) is not among BASE's
chunks (as scripts/chunkdiff.py counts them), then says block by block what
each holds, from NEW's own metadata (superblock, group descriptors, inode
tables, extent trees, directories): the superblock and descriptors, bitmaps,
inode table slots (and, for a table chunk at the same place in BASE, which
inodes differ from BASE's), and the data, directory, symlink, extent-tree and
xattr blocks of each inode, named by path (cut to --depth components).
Prints one line per new chunk and a summary by kind. Reads only the images.
"""

import argparse
import collections
import hashlib
import json
import struct
import sys

BS = 4096


def u16(b, o):
    return struct.unpack_from("<H", b, o)[0]


def u32(b, o):
    return struct.unpack_from("<I", b, o)[0]


class Image:
    """A read-only view of an ext4 image lode wrote (no 64bit, extents)."""

    def __init__(self, path):
        self.f = open(path, "rb")
        sb = self.read(1024, 1024)
        if u16(sb, 0x38) != 0xEF53:
            sys.exit(f"chunkwhat: {path}: not ext4 (no superblock magic)")
        self.blocks = u32(sb, 0x04)
        self.bpg = u32(sb, 0x20)
        self.ipg = u32(sb, 0x28)
        self.isize = u16(sb, 0x58)
        self.groups = (self.blocks + self.bpg - 1) // self.bpg
        gdt = self.read(BS, self.groups * 32)
        self.gd = [
            (u32(gdt, g * 32), u32(gdt, g * 32 + 4), u32(gdt, g * 32 + 8))
            for g in range(self.groups)
        ]
        self.gdt_blocks = (self.groups * 32 + BS - 1) // BS

    def read(self, off, n):
        self.f.seek(off)
        return self.f.read(n)

    def block(self, b):
        return self.read(b * BS, BS)

    def inode(self, ino):
        g, i = divmod(ino - 1, self.ipg)
        return self.read(self.gd[g][2] * BS + i * self.isize, self.isize)

    def extents(self, node, owned):
        """Leaf extents (physical, len) under an extent node; index blocks go to OWNED."""
        if u16(node, 0) != 0xF30A:
            return []
        n, depth = u16(node, 2), u16(node, 6)
        out = []
        for i in range(n):
            e = 12 + 12 * i
            if depth == 0:
                ln = u16(node, e + 4)
                ln = ln - 32768 if ln > 32768 else ln
                out.append(((u16(node, e + 6) << 32) | u32(node, e + 8), ln))
            else:
                child = (u16(node, e + 8) << 32) | u32(node, e + 4)
                owned.append(child)
                out += self.extents(self.block(child), owned)
        return out

    def dir_regions(self, raw):
        """The byte regions holding a directory inode's entries: its blocks,
        or for inline data (layout 4) the rest of i_block after the parent's
        number and the value of the in-inode xattr system.data."""
        if u32(raw, 0x20) & 0x10000000:
            regions = [raw[0x2C:0x64]]
            area = 128 + u16(raw, 0x80)
            if len(raw) >= area + 4 and u32(raw, area) == 0xEA020000:
                e = area + 4
                while e + 16 <= len(raw) and u32(raw, e):
                    nl, idx, offs, size = raw[e], raw[e + 1], u16(raw, e + 2), u32(raw, e + 8)
                    if idx == 7 and raw[e + 16 : e + 16 + nl] == b"data":
                        regions.append(raw[area + 4 + offs : area + 4 + offs + size])
                        break
                    e += (16 + nl + 3) // 4 * 4
            return regions
        return [self.block(b) for phys, ln in self.extents(raw[0x28:0x64], []) for b in range(phys, phys + ln)]

    def walk(self):
        """{ino: path} of every live inode reachable from /, and (ino, path) of directories."""
        names = {2: "/"}
        stack = [2]
        while stack:
            d = stack.pop()
            for blk in self.dir_regions(self.inode(d)):
                o = 0
                while o <= len(blk) - 8:
                    ino, rl, nl, ft = u32(blk, o), u16(blk, o + 4), blk[o + 6], blk[o + 7]
                    if rl < 8:
                        break
                    name = blk[o + 8 : o + 8 + nl].decode("utf-8", "replace")
                    if ino and name not in (".", "..") and ino not in names:
                        names[ino] = names[d].rstrip("/") + "/" + name
                        if ft == 2:
                            stack.append(ino)
                    o += rl
        return names

    def owners(self):
        """{block: (kind, ino)} for every block some structure owns."""
        own = {0: ("superblock", 0)}
        for b in range(1, 1 + self.gdt_blocks):
            own[b] = ("group descriptors", 0)
        for g, (bb, ib, it) in enumerate(self.gd):
            own[bb] = ("block bitmap", 0)
            own[ib] = ("inode bitmap", 0)
            for b in range(it, it + self.ipg * self.isize // BS):
                own[b] = (f"inode table g{g}", 0)
        for g in range(self.groups):
            bm = self.block(self.gd[g][1])
            for i in range(self.ipg):
                if not bm[i // 8] >> (i % 8) & 1:
                    continue
                ino = g * self.ipg + i + 1
                raw = self.inode(ino)
                mode = u16(raw, 0) & 0o170000
                flags = u32(raw, 0x20)
                acl = u32(raw, 0x68)
                if acl:
                    own[acl] = ("xattr", ino)
                if not flags & 0x80000:
                    continue
                kind = {0o040000: "directory", 0o100000: "file data", 0o120000: "symlink"}.get(
                    mode, "other"
                )
                tree = []
                for phys, ln in self.extents(raw[0x28:0x64], tree):
                    for b in range(phys, phys + ln):
                        own[b] = (kind, ino)
                for b in tree:
                    own[b] = ("extent tree", ino)
        return own


def chunk_hashes(path, chunk):
    out = {}
    zero = hashlib.sha256(bytes(chunk)).digest()
    with open(path, "rb") as f:
        i = 0
        while True:
            b = f.read(chunk)
            if not b:
                break
            h = hashlib.sha256(b.ljust(chunk, b"\0")).digest()
            if h != zero:
                out[i] = h
            i += 1
    return out


def cut(path, depth):
    parts = [p for p in path.split("/") if p]
    return "/" + "/".join(parts[:depth]) + ("/…" if len(parts) > depth else "")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("base")
    ap.add_argument("new")
    ap.add_argument("--chunk", type=int, default=512 * 1024)
    ap.add_argument("--depth", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    per = a.chunk // BS
    base = set(chunk_hashes(a.base, a.chunk).values())
    new = chunk_hashes(a.new, a.chunk)
    fresh = sorted(i for i, h in new.items() if h not in base)
    img, old = Image(a.new), Image(a.base)
    own = img.owners()
    names = img.walk()
    rows, summary = [], collections.Counter()
    for c in fresh:
        kinds = collections.Counter()
        where = collections.Counter()
        changed = []
        for b in range(c * per, (c + 1) * per):
            kind, ino = own.get(b, ("free", 0))
            kinds[kind.split(" g")[0] if kind.startswith("inode table") else kind] += 1
            if ino:
                where[cut(names.get(ino, f"<inode {ino}>"), a.depth)] += 1
            if kind.startswith("inode table") and b < old.blocks:
                mine, theirs = img.block(b), old.block(b)
                for s in range(0, BS, img.isize):
                    if mine[s : s + img.isize] != theirs[s : s + img.isize]:
                        g = int(kind.split("g")[-1])
                        it = img.gd[g][2]
                        ino = g * img.ipg + ((b - it) * BS + s) // img.isize + 1
                        if any(mine[s : s + img.isize]) and any(theirs[s : s + img.isize]):
                            changed.append(names.get(ino, f"<inode {ino}>"))
        summary.update(kinds)
        rows.append(
            {
                "chunk": c,
                "blocks": dict(kinds),
                "paths": dict(where.most_common(4)),
                "changed_inodes": changed[:6],
                "changed_count": len(changed),
            }
        )
    if a.json:
        json.dump({"new_chunks": len(fresh), "rows": rows, "blocks": dict(summary)}, sys.stdout)
        return
    for r in rows:
        ks = ", ".join(f"{k} {v}" for k, v in sorted(r["blocks"].items(), key=lambda kv: -kv[1]))
        ps = "; ".join(f"{p} {n}" for p, n in r["paths"].items())
        ch = (
            f" | {r['changed_count']} inodes changed in place: {', '.join(r['changed_inodes'])}"
            if r["changed_count"]
            else ""
        )
        print(f"chunk {r['chunk']}: {ks} | {ps}{ch}")
    print(f"{len(fresh)} new chunks; blocks by kind: " + ", ".join(f"{k} {v}" for k, v in summary.most_common()))


if __name__ == "__main__":
    main()
