#!/usr/bin/env python3
"""Small OCI helpers for lode's corpus and benchmark scripts (stdlib only).

  layer   DIR -> one layer blob (tar, tar+gzip or tar+zstd) plus a JSON
          descriptor next to it. Names are sorted byte-wise, owners numeric,
          user/group names empty. With --overlay, DIR is an overlayfs upper
          directory: 0/0 character devices become `.wh.NAME` whiteouts and
          directories marked trusted.overlay.opaque get `.wh..wh..opq`.
  image   layer descriptors -> an OCI image layout (index.json with
          org.opencontainers.image.ref.name, manifest, config with
          rootfs.diff_ids). Blobs are hard-linked from the layer store.
  merged  OCI layout -> one tar of the merged tree (OCI whiteout rules
          applied), entries in layer order: each path where its final
          version's layer put it, directories where they first appear.
  decompress  OCI layout -> the same image with plain-tar layers.
  stats   OCI layout -> JSON with per-layer sizes and regular-file bytes.
"""

import argparse
import hashlib
import json
import os
import shlex
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER_TYPES = {
    "none": "application/vnd.oci.image.layer.v1.tar",
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
}
BUF = 1 << 20


def sha256_file(path):
    h = hashlib.sha256()
    n = 0
    with open(path, "rb") as f:
        while True:
            b = f.read(BUF)
            if not b:
                break
            h.update(b)
            n += len(b)
    return "sha256:" + h.hexdigest(), n


def _fskey(name):
    return os.fsencode(name)


class _HashingWriter:
    """File object that hashes and counts what is written through it."""

    def __init__(self, f):
        self.f, self.h, self.n = f, hashlib.sha256(), 0

    def write(self, b):
        self.h.update(b)
        self.n += len(b)
        return self.f.write(b)

    def tell(self):
        return self.n


def _walk(root, rel, exclude_contents):
    """Yields (relpath, abspath) of DIR's tree, parents first, sorted by name bytes."""
    path = os.path.join(root, rel) if rel else root
    names = sorted(os.listdir(path), key=_fskey)
    for name in names:
        r = f"{rel}/{name}" if rel else name
        a = os.path.join(root, r)
        yield r, a
        if stat.S_ISDIR(os.lstat(a).st_mode) and r not in exclude_contents:
            yield from _walk(root, r, exclude_contents)


def cmd_layer(args):
    src = os.path.abspath(args.src)
    exclude = set(p.strip("/") for p in args.exclude_contents)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    tar_path = args.out + ".tar.tmp"
    files = file_bytes = entries = 0
    with open(tar_path, "wb") as raw:
        hw = _HashingWriter(raw)
        tf = tarfile.open(fileobj=hw, mode="w|", format=tarfile.PAX_FORMAT, bufsize=BUF)

        def fix(ti):
            ti.uname = ti.gname = ""
            ti.mtime = int(ti.mtime)
            if args.clamp_mtime is not None:
                ti.mtime = min(ti.mtime, args.clamp_mtime)
            if args.owner is not None:
                ti.uid, ti.gid = args.owner
            return ti

        for rel, path in _walk(src, "", exclude):
            st = os.lstat(path)
            if args.overlay and stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                d, base = os.path.split(rel)
                ti = tarfile.TarInfo(os.path.join(d, ".wh." + base))
                ti.mtime = int(st.st_mtime)
                ti.mode = 0
                tf.addfile(fix(ti))
                entries += 1
                continue
            ti = tf.gettarinfo(path, rel)
            if ti is None:  # socket
                continue
            fix(ti)
            if ti.isreg():
                with open(path, "rb") as f:
                    tf.addfile(ti, f)
                files += 1
                file_bytes += ti.size
            else:
                tf.addfile(ti)
            entries += 1
            if args.overlay and ti.isdir():
                try:
                    opaque = os.getxattr(path, "trusted.overlay.opaque", follow_symlinks=False)
                except OSError:
                    opaque = b""
                if opaque == b"y":
                    wh = tarfile.TarInfo(rel + "/.wh..wh..opq")
                    wh.mtime = ti.mtime
                    wh.mode = 0
                    tf.addfile(fix(wh))
                    entries += 1
        tf.close()
        diff_id = "sha256:" + hw.h.hexdigest()
        tar_size = hw.n

    blob = args.out + ".blob"
    if args.compress == "none":
        os.replace(tar_path, blob)
    else:
        cmd = {"gzip": ["gzip", "-n", "-6", "-c"], "zstd": ["zstd", "-q", "-3", "-T0", "-c"]}[args.compress]
        with open(tar_path, "rb") as i, open(blob + ".tmp", "wb") as o:
            subprocess.run(cmd, stdin=i, stdout=o, check=True)
        os.replace(blob + ".tmp", blob)
        os.unlink(tar_path)
    digest, size = sha256_file(blob)
    desc = {
        "name": os.path.basename(args.out),
        "mediaType": LAYER_TYPES[args.compress],
        "digest": digest,
        "size": size,
        "diff_id": diff_id,
        "tar_size": tar_size,
        "entries": entries,
        "files": files,
        "file_bytes": file_bytes,
        "created_by": args.created_by or f"lode corpus: layer {os.path.basename(args.out)}",
        "blob": os.path.basename(blob),
    }
    with open(args.out + ".json.tmp", "w") as f:
        json.dump(desc, f, indent=1)
    os.replace(args.out + ".json.tmp", args.out + ".json")
    print(f"layer {desc['name']}: {entries} entries, {file_bytes / 1e6:.1f} MB of files, "
          f"tar {tar_size / 1e6:.1f} MB, {args.compress} blob {size / 1e6:.1f} MB, {digest[:19]}")


def _write_blob(layout, data):
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    p = os.path.join(layout, "blobs", "sha256", digest[7:])
    with open(p, "wb") as f:
        f.write(data)
    return {"digest": digest, "size": len(data)}


def _dumps(obj):
    return json.dumps(obj, indent=2, sort_keys=False).encode() + b"\n"


def cmd_image(args):
    out = os.path.abspath(args.out)
    tmp = out + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(os.path.join(tmp, "blobs", "sha256"))
    layers = []
    for lp in args.layers:
        with open(lp) as f:
            d = json.load(f)
        src = os.path.join(os.path.dirname(os.path.abspath(lp)), d["blob"])
        dst = os.path.join(tmp, "blobs", "sha256", d["digest"][7:])
        if not os.path.exists(dst):
            try:
                os.link(src, dst)
            except OSError:
                shutil.copyfile(src, dst)
        layers.append(d)
    created = args.created
    config = {
        "created": created,
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8"],
            "Cmd": shlex.split(args.cmd) if args.cmd else ["/bin/bash"],
            "WorkingDir": args.workdir or "/",
            "Labels": {"org.lode.corpus": args.name},
        },
        "rootfs": {"type": "layers", "diff_ids": [d["diff_id"] for d in layers]},
        "history": [{"created": created, "created_by": d["created_by"]} for d in layers],
    }
    cdesc = _write_blob(tmp, _dumps(config))
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, **cdesc},
        "layers": [{"mediaType": d["mediaType"], "digest": d["digest"], "size": d["size"]} for d in layers],
        "annotations": {"org.opencontainers.image.title": args.name},
    }
    mdesc = _write_blob(tmp, _dumps(manifest))
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{
            "mediaType": OCI_MANIFEST, **mdesc,
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {"org.opencontainers.image.ref.name": args.ref},
        }],
    }
    with open(os.path.join(tmp, "index.json"), "wb") as f:
        f.write(_dumps(index))
    with open(os.path.join(tmp, "oci-layout"), "wb") as f:
        f.write(b'{"imageLayoutVersion":"1.0.0"}\n')
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    total = sum(d["tar_size"] for d in layers)
    print(f"image {args.name}: {len(layers)} layers, {total / 1e6:.1f} MB uncompressed, "
          f"manifest {mdesc['digest'][:19]}")


def _resolve(layout, ref):
    with open(os.path.join(layout, "index.json")) as f:
        index = json.load(f)
    cands = index["manifests"]
    if ref:
        cands = [m for m in cands if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == ref]
    if len(cands) != 1:
        sys.exit(f"{layout}: expected one manifest for ref {ref!r}, found {len(cands)}")
    blob = lambda d: os.path.join(layout, "blobs", *d["digest"].split(":", 1))
    with open(blob(cands[0])) as f:
        manifest = json.load(f)
    with open(blob(manifest["config"])) as f:
        config = json.load(f)
    return manifest, config, [blob(l) for l in manifest["layers"]]


def _open_layer(path):
    """Opens a layer blob as a decompressed stream (sniffed)."""
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic[:2] == b"\x1f\x8b":
        p = subprocess.Popen(["gzip", "-dc", path], stdout=subprocess.PIPE)
    elif magic == b"\x28\xb5\x2f\xfd":
        p = subprocess.Popen(["zstd", "-dcq", path], stdout=subprocess.PIPE)
    else:
        return open(path, "rb"), None
    return p.stdout, p


def _norm(name):
    name = name.lstrip("/")
    while name.startswith("./"):
        name = name[2:]
    return name.rstrip("/")


def _layer_entries(path):
    f, proc = _open_layer(path)
    with tarfile.open(fileobj=f, mode="r|*") as tf:
        for ti in tf:
            yield ti, tf
    f.close()
    if proc is not None and proc.wait() != 0:
        sys.exit(f"decompressing {path} failed")


def cmd_merged(args):
    """Two passes: (1) compute, per path, which (layer, entry#) is final;
    (2) re-read the layers and copy those entries out in layer order."""
    _, _, blobs = _resolve(args.layout, args.ref)
    final = {}  # path -> (layer, seq)
    first_dir = {}  # dir path -> (layer, seq) of first appearance
    for li, b in enumerate(blobs):
        for seq, (ti, _) in enumerate(_layer_entries(b)):
            name = _norm(ti.name)
            if not name:
                continue
            d, base = os.path.split(name)
            if base == ".wh..wh..opq":
                pre = d + "/"
                for p in [p for p in final if p.startswith(pre) and final[p][0] < li]:
                    del final[p]
                    first_dir.pop(p, None)
                continue
            if base.startswith(".wh."):
                victim = os.path.join(d, base[4:])
                pre = victim + "/"
                for p in [p for p in final if p == victim or p.startswith(pre)]:
                    del final[p]
                    first_dir.pop(p, None)
                continue
            if ti.isdir():
                prev = final.get(name)
                final[name] = (li, seq, "dir")
                if prev is None or prev[2] != "dir":
                    first_dir[name] = (li, seq)
            else:
                if name in final and final[name][2] == "dir":
                    pre = name + "/"
                    for p in [p for p in final if p.startswith(pre)]:
                        del final[p]
                        first_dir.pop(p, None)
                    first_dir.pop(name, None)
                final[name] = (li, seq, "other")
    # Where each path is emitted: directories at their first appearance, with
    # their final metadata (held back until their final entry is read).
    emit_at = {}
    for p, (li, seq, kind) in final.items():
        emit_at[(first_dir[p] if kind == "dir" else (li, seq))] = p
    dir_meta = {p: None for p, v in final.items() if v[2] == "dir"}
    # Final dir metadata lives in a later entry for updated dirs; collect it first.
    wanted_dir = {(v[0], v[1]): p for p, v in final.items() if v[2] == "dir"}
    for li, b in enumerate(blobs):
        if not any(k[0] == li for k in wanted_dir):
            continue
        for seq, (ti, _) in enumerate(_layer_entries(b)):
            p = wanted_dir.get((li, seq))
            if p is not None:
                dir_meta[p] = ti
    out = open(args.out, "wb")
    wt = tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT, bufsize=BUF)
    n = 0
    for li, b in enumerate(blobs):
        for seq, (ti, tf) in enumerate(_layer_entries(b)):
            p = emit_at.get((li, seq))
            if p is None:
                continue
            if final[p][2] == "dir":
                meta = dir_meta[p]
                meta.name = p
                wt.addfile(meta)
            else:
                ti.name = p
                if ti.islnk():
                    ti.linkname = _norm(ti.linkname)
                if ti.isreg():
                    wt.addfile(ti, tf.extractfile(ti))
                else:
                    wt.addfile(ti)
            n += 1
    wt.close()
    out.close()
    print(f"merged {len(blobs)} layers: {n} entries -> {args.out}")


def cmd_decompress(args):
    """Copies an OCI layout with every layer stored as plain tar."""
    manifest, config, blobs = _resolve(args.layout, args.ref)
    out = os.path.abspath(args.out)
    tmp = out + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(os.path.join(tmp, "blobs", "sha256"))
    layers = []
    for i, b in enumerate(blobs):
        f, proc = _open_layer(b)
        part = os.path.join(tmp, "blobs", "sha256", "part")
        with open(part, "wb") as o:
            shutil.copyfileobj(f, o, BUF)
        f.close()
        if proc is not None and proc.wait() != 0:
            sys.exit(f"decompressing {b} failed")
        digest, size = sha256_file(part)
        if digest != config["rootfs"]["diff_ids"][i]:
            sys.exit(f"layer {i}: diff_id mismatch")
        os.replace(part, os.path.join(tmp, "blobs", "sha256", digest[7:]))
        layers.append({"mediaType": LAYER_TYPES["none"], "digest": digest, "size": size})
    cfg = open(os.path.join(args.layout, "blobs", *manifest["config"]["digest"].split(":", 1)), "rb").read()
    _write_blob(tmp, cfg)
    manifest = dict(manifest, layers=layers)
    mdesc = _write_blob(tmp, _dumps(manifest))
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [{
        "mediaType": OCI_MANIFEST, **mdesc,
        "annotations": {"org.opencontainers.image.ref.name": args.ref}}]}
    with open(os.path.join(tmp, "index.json"), "wb") as f:
        f.write(_dumps(index))
    with open(os.path.join(tmp, "oci-layout"), "wb") as f:
        f.write(b'{"imageLayoutVersion":"1.0.0"}\n')
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    print(f"decompressed {len(layers)} layers -> {out}")


def cmd_stats(args):
    manifest, config, blobs = _resolve(args.layout, args.ref)
    layers = []
    for i, b in enumerate(blobs):
        files = fbytes = entries = 0
        f, proc = _open_layer(b)
        h = hashlib.sha256()
        n = 0
        while True:
            chunk = f.read(BUF)
            if not chunk:
                break
            h.update(chunk)
            n += len(chunk)
        f.close()
        if proc is not None:
            proc.wait()
        for ti, _ in _layer_entries(b):
            entries += 1
            if ti.isreg():
                files += 1
                fbytes += ti.size
        layers.append({"index": i, "digest": manifest["layers"][i]["digest"],
                       "mediaType": manifest["layers"][i]["mediaType"],
                       "size": manifest["layers"][i]["size"], "tar_size": n,
                       "diff_id_ok": "sha256:" + h.hexdigest() == config["rootfs"]["diff_ids"][i],
                       "entries": entries, "files": files, "file_bytes": fbytes})
    json.dump({"layers": layers, "tar_bytes": sum(l["tar_size"] for l in layers),
               "file_bytes": sum(l["file_bytes"] for l in layers)}, sys.stdout, indent=1)
    print()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("layer")
    p.add_argument("--src", required=True)
    p.add_argument("--out", required=True, help="path prefix: writes OUT.blob and OUT.json")
    p.add_argument("--compress", choices=sorted(LAYER_TYPES), default="gzip")
    p.add_argument("--overlay", action="store_true")
    p.add_argument("--exclude-contents", action="append", default=[], metavar="DIR")
    p.add_argument("--clamp-mtime", type=int)
    p.add_argument("--owner", type=lambda s: tuple(int(x) for x in s.split(":")))
    p.add_argument("--created-by")
    p.set_defaults(func=cmd_layer)
    p = sub.add_parser("image")
    p.add_argument("--out", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--ref", default="latest")
    p.add_argument("--created", default="2024-01-01T00:00:00Z")
    p.add_argument("--cmd", help="shell-quoted command line")
    p.add_argument("--workdir")
    p.add_argument("layers", nargs="+")
    p.set_defaults(func=cmd_image)
    p = sub.add_parser("merged")
    p.add_argument("layout")
    p.add_argument("out")
    p.add_argument("--ref", default="latest")
    p.set_defaults(func=cmd_merged)
    p = sub.add_parser("decompress")
    p.add_argument("layout")
    p.add_argument("out")
    p.add_argument("--ref", default="latest")
    p.set_defaults(func=cmd_decompress)
    p = sub.add_parser("stats")
    p.add_argument("layout")
    p.add_argument("--ref", default="latest")
    p.set_defaults(func=cmd_stats)
    args = ap.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
