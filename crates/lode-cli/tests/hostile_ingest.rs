//! Hostile layers: small inputs that used to cost far more than their size.
//! Each case drives the real `lode flatten` and checks its exit status, its
//! message, its peak memory (`/usr/bin/time`) and what it leaves on disk.
//!
//! | input | bound checked |
//! |---|---|
//! | a tiny layer holding 1 TiB sparse files (PAX 1.0, GNU `S`) | flattens; holes skipped; memory small |
//! | directories nested 15,000 deep | flattens, e2fsck-clean; memory linear in entries |
//! | 10,000 layers referencing one blob | the layer limit; with it raised, the device size limit |
//! | a zstd layer of 6 GiB of `A` | the ratio limit; with it raised, the decompressed size limit |
//! | one million empty files | the inode limit; with it raised, the device size limit |
//! | entry names with ESC and NUL | refused, escaped in the message |
//! | an xattr over the limit | the message names the limit |
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use common::{lode_bin, names_in, run_measured, tmp};
use lode_testkit::rawtar::{self, dir, gnu_sparse, member, pax, pax_sparse_1_0, END};
use lode_testkit::*;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

const MIB: u64 = 1 << 20;
const TIB: u64 = 1 << 40;

/// `lode flatten SOURCE -o DIR/out.ext4 ARGS...`, measured.
fn flatten(layout: &Path, out: &Path, args: &[&str]) -> (Output, u64) {
    let mut c = Command::new(lode_bin());
    c.arg("flatten")
        .arg(oci_source(layout, None))
        .arg("-o")
        .arg(out)
        .args(args);
    run_measured(&mut c, Duration::from_secs(600))
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The failure contract: exit 1 (not a signal, not an abort), one line that
/// mentions every string of `mention`, no control byte, nothing left in the
/// output directory, and a peak memory under `max_rss`.
fn refused(what: &str, o: &Output, rss: u64, out: &Path, mention: &[&str], max_rss: u64) {
    let e = stderr(o);
    eprintln!("{what}: peak {} MiB; {}", rss >> 20, e.trim_end());
    assert_eq!(o.status.code(), Some(1), "{what}: {} {e}", o.status);
    assert_eq!(e.trim_end().lines().count(), 1, "{what}: {e}");
    for m in mention {
        assert!(e.contains(m), "{what}: message does not mention {m:?}: {e}");
    }
    assert!(
        !o.stderr.iter().any(|&b| b < 0x20 && b != b'\n'),
        "{what}: control bytes on stderr: {:?}",
        o.stderr
    );
    assert_eq!(
        names_in(out.parent().unwrap()),
        Vec::<String>::new(),
        "{what}: left behind"
    );
    assert!(rss > 0 && rss < max_rss, "{what}: peak memory {rss} bytes");
}

fn one_layer(
    dir: &Path,
    comp: Compression,
    tar: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> ImageInfo {
    write_oci_layout_streamed(dir, comp, vec![Box::new(tar)]).unwrap()
}

/// Row: a few hundred bytes of layer holding files whose real size is 1 TiB
/// (PAX 1.0 and GNU `S` sparse). Holes used to be expanded and scanned (3.7 h
/// at the 16 TiB limit); now they are skipped: the flatten is as cheap as
/// the bytes stored, and the data lands where the sparse map says.
#[test]
fn terabyte_sparse_files_cost_what_they_store() {
    let d = tmp();
    let layout = d.path().join("oci");
    let info = one_layer(&layout, Compression::Gzip, |w| {
        w.write_all(&pax_sparse_1_0(
            b"pax",
            TIB,
            &[(0, 3), (TIB - 4, 4)],
            b"abcWXYZ",
        ))?;
        w.write_all(&gnu_sparse(
            b"gnu",
            TIB,
            &[(4096 * 5 + 1, 2), (TIB - 1, 1)],
            b"hi!",
        ))?;
        w.write_all(&END)
    });
    assert!(
        info.layers[0].size < 1024,
        "layer blob {} bytes",
        info.layers[0].size
    );
    let outd = tmp();
    let out = outd.path().join("out.ext4");
    let (o, rss) = flatten(&layout, &out, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    eprintln!("1 TiB sparse files: peak {} MiB", rss >> 20);
    assert!(rss < 100 * MIB, "peak memory {rss}");
    assert_eq!(names_in(outd.path()), ["out.ext4"]);
    assert_e2fsck_clean(&out);
    // The data is where the maps put it; the file is 1 TiB.
    let fs = ext4_view::Ext4::load_from_path(&out).unwrap();
    for (path, at, want) in [
        ("/pax", 0, &b"abc"[..]),
        ("/pax", TIB - 4, b"WXYZ"),
        ("/gnu", 4096 * 5 + 1, b"hi"),
        ("/gnu", TIB - 1, b"!"),
    ] {
        let meta = fs.metadata(path).unwrap();
        assert_eq!(meta.len(), TIB, "{path}");
        let mut f = fs.open(path).unwrap();
        use std::io::{Read, Seek, SeekFrom};
        f.seek(SeekFrom::Start(at)).unwrap();
        let mut got = vec![0u8; want.len()];
        f.read_exact(&mut got).unwrap();
        assert_eq!(got, want, "{path} at {at}");
    }
}

/// `n` directories nested one in the other under `top`, in tar order.
fn nested(w: &mut dyn Write, top: &str, n: usize) -> std::io::Result<()> {
    let mut path = top.as_bytes().to_vec();
    for _ in 0..n {
        w.write_all(&dir(&path))?;
        path.extend_from_slice(b"/d");
    }
    Ok(())
}

/// Row: directories nested 15,000 deep (a gzip layer of a few hundred KB).
/// Memory used to grow with depth squared (5.25 GB and climbing at 300 s);
/// now it is linear in the entries. A second layer whites the first tree out
/// (pruned without recursion) and nests another: the image is clean.
#[test]
fn deep_trees_cost_memory_linear_in_entries() {
    const DEPTH: usize = 15_000;
    let d = tmp();
    let layout = d.path().join("oci");
    let info = write_oci_layout_streamed(
        &layout,
        Compression::Gzip,
        vec![
            Box::new(|w: &mut dyn Write| {
                nested(w, "a", DEPTH)?;
                w.write_all(&END)
            }),
            Box::new(|w: &mut dyn Write| {
                w.write_all(&member(b".wh.a", b'0', b""))?;
                nested(w, "b", DEPTH)?;
                w.write_all(&END)
            }),
        ],
    )
    .unwrap();
    eprintln!(
        "deep layers: {} and {} bytes compressed, {} MB of tar",
        info.layers[0].size,
        info.layers[1].size,
        (info.layers[0].tar_size + info.layers[1].tar_size) >> 20
    );
    let outd = tmp();
    let out = outd.path().join("out.ext4");
    let (o, rss) = flatten(&layout, &out, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    eprintln!("{DEPTH} deep: peak {} MiB", rss >> 20);
    assert!(
        rss < 200 * MIB,
        "peak memory {rss} for {DEPTH} nested directories"
    );
    assert_e2fsck_clean(&out);
}

/// Row: 10,000 layers that all reference one 111-byte blob. Refused by the
/// layer limit before any layer is read; raised, the device the inode
/// groups imply (one per layer) hits the device size limit instead of
/// writing a 1.2 TiB device.
#[test]
fn ten_thousand_layers_of_one_blob_are_refused() {
    let d = tmp();
    let layout = d.path().join("oci");
    let one = one_layer(&layout, Compression::Gzip, |w| {
        w.write_all(&member(b"f", b'0', b"x"))?;
        w.write_all(&END)
    });
    let blob = one.layers[0].clone();
    write_oci_layout_of_blobs(&layout, vec![blob; 10_000]).unwrap();
    let outd = tmp();
    let out = outd.path().join("out.ext4");
    let (o, rss) = flatten(&layout, &out, &[]);
    refused(
        "10,000 layers",
        &o,
        rss,
        &out,
        &["10000 layers", "128 layers", "layer limit", "--max-layers"],
        100 * MIB,
    );
    let (o, rss) = flatten(&layout, &out, &["--max-layers", "20000"]);
    refused(
        "10,000 layers, layer limit raised",
        &o,
        rss,
        &out,
        &[
            "device size limit",
            "--max-device-size",
            "68719476736 bytes",
        ],
        200 * MIB,
    );
}

/// Row: a zstd layer of 6 GiB of `A` (about 200 KB compressed). Stopped by
/// the ratio limit after a few hundred MB instead of writing 6 GiB; with the
/// ratio raised, the decompressed size limit stops it.
#[test]
fn a_zstd_bomb_stops_at_the_ratio_limit() {
    let d = tmp();
    let layout = d.path().join("oci");
    let size = 6u64 << 30;
    let info = one_layer(&layout, Compression::Zstd, |w| {
        w.write_all(&pax(&[("size", size.to_string().as_bytes())]))?;
        w.write_all(&rawtar::ustar_header(b"bomb", b'0', 0))?;
        let block = vec![b'A'; 1 << 20];
        for _ in 0..(size >> 20) {
            w.write_all(&block)?;
        }
        w.write_all(&END)
    });
    eprintln!("zstd bomb: {} bytes compressed", info.layers[0].size);
    let outd = tmp();
    let out = outd.path().join("out.ext4");
    let (o, rss) = flatten(&layout, &out, &[]);
    refused(
        "6 GiB zstd bomb",
        &o,
        rss,
        &out,
        &[
            "decompression ratio limit",
            "--max-ratio",
            "2000:1",
            "layer 0",
        ],
        150 * MIB,
    );
    let (o, rss) = flatten(
        &layout,
        &out,
        &["--max-ratio", "100000000", "--max-bytes", "1G"],
    );
    refused(
        "6 GiB zstd bomb, ratio raised",
        &o,
        rss,
        &out,
        &["decompressed size limit", "--max-bytes", "1073741824 bytes"],
        150 * MIB,
    );
}

/// Row: one million empty files (a 7 MB layer) used to make a 122 GiB
/// device (every 1,024 inodes take a 128 MiB group). The inode limit stops
/// them; with it raised, the device size limit does.
#[test]
fn a_million_empty_files_hit_the_inode_limit() {
    let d = tmp();
    let layout = d.path().join("oci");
    let info = one_layer(&layout, Compression::Gzip, |w| {
        w.write_all(&rawtar::ustar_header(b"many", b'5', 0))?;
        for i in 0..1_000_000u32 {
            w.write_all(&rawtar::ustar_header(
                format!("many/f{i:07}").as_bytes(),
                b'0',
                0,
            ))?;
        }
        w.write_all(&END)
    });
    eprintln!("1M empty files: {} bytes compressed", info.layers[0].size);
    let outd = tmp();
    let out = outd.path().join("out.ext4");
    let (o, rss) = flatten(&layout, &out, &[]);
    refused(
        "1M empty files",
        &o,
        rss,
        &out,
        &["inode limit", "--max-inodes", "524288 inodes"],
        600 * MIB,
    );
    let (o, rss) = flatten(&layout, &out, &["--max-inodes", "2000000"]);
    refused(
        "1M empty files, inode limit raised",
        &o,
        rss,
        &out,
        &["device size limit", "--max-device-size"],
        1200 * MIB,
    );
}

/// The entry and byte limits, small, on an ordinary layer.
#[test]
fn entry_and_byte_limits_name_their_option() {
    let d = tmp();
    let layout = d.path().join("oci");
    one_layer(&layout, Compression::Gzip, |w| {
        for i in 0..20 {
            w.write_all(&member(format!("f{i}").as_bytes(), b'0', &[7u8; 100_000]))?;
        }
        w.write_all(&END)
    });
    let outd = tmp();
    let out = outd.path().join("out.ext4");
    let (o, rss) = flatten(&layout, &out, &["--max-entries", "10"]);
    refused(
        "entries",
        &o,
        rss,
        &out,
        &["entry limit", "--max-entries", "10 entries"],
        100 * MIB,
    );
    let (o, rss) = flatten(&layout, &out, &["--max-bytes", "1M"]);
    refused(
        "bytes",
        &o,
        rss,
        &out,
        &["--max-bytes", "1048576 bytes"],
        100 * MIB,
    );
    let (o, _) = flatten(&layout, &out, &["--max-entries", "20", "--max-bytes", "3M"]);
    assert!(o.status.success(), "{}", stderr(&o));
}

/// Row: an entry named `evil<ESC>[2J/../x` and a PAX name holding a NUL are
/// refused, and the message shows them escaped: no raw control byte reaches
/// the terminal.
#[test]
fn names_with_control_characters_are_escaped() {
    for (what, tar) in [
        ("ESC in a tar name", member(b"evil\x1b[2J/../x", b'0', b"x")),
        ("NUL in a PAX name", {
            let mut v = pax(&[("path", b"dir/a\0b\x07")]);
            v.extend_from_slice(&member(b"placeholder", b'0', b"x"));
            v
        }),
        (
            "ESC in a link target",
            rawtar::link(b"ln", b'1', b"../\x1b]0;pwned"),
        ),
    ] {
        let d = tmp();
        let layout = d.path().join("oci");
        one_layer(&layout, Compression::Gzip, |w| {
            w.write_all(&tar)?;
            w.write_all(&END)
        });
        let outd = tmp();
        let out = outd.path().join("out.ext4");
        let (o, rss) = flatten(&layout, &out, &[]);
        let shown = if what.starts_with("ESC in a tar") {
            "evil\\x1b[2J"
        } else if what.starts_with("NUL") {
            "a\\0b\\x07"
        } else {
            "\\x1b]0;pwned"
        };
        refused(what, &o, rss, &out, &[shown, "layer 0"], 100 * MIB);
    }
}

/// Row: an xattr over the limit used to print `TooLarge(65592)`; the message
/// now names the limit.
#[test]
fn an_oversized_xattr_names_the_limit() {
    let d = tmp();
    let layout = d.path().join("oci");
    one_layer(&layout, Compression::Gzip, |w| {
        w.write_all(&pax(&[("SCHILY.xattr.user.big", &vec![b'v'; 65_536])]))?;
        w.write_all(&member(b"f", b'0', b"x"))?;
        w.write_all(&END)
    });
    let outd = tmp();
    let out = outd.path().join("out.ext4");
    let (o, rss) = flatten(&layout, &out, &[]);
    refused(
        "xattr",
        &o,
        rss,
        &out,
        &["over the limit of 4096 bytes", "'f'"],
        100 * MIB,
    );
    assert!(!stderr(&o).contains("TooLarge("), "{}", stderr(&o));
}
