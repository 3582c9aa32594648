//! Images written by the builder pass the real `e2fsck -fn`.
#![allow(clippy::unwrap_used)]

mod common;

use common::{fsck, p};
use lode_ext4::{Builder, Meta, Options, Special, Timestamp};
use std::collections::BTreeMap;
use std::process::Command;

fn meta(perm: u16) -> Meta {
    Meta {
        perm,
        uid: 1000,
        gid: 1000,
        mtime: Timestamp {
            secs: 1_700_000_000,
            nsec: 5,
        },
        xattrs: BTreeMap::new(),
    }
}

#[test]
fn a_mixed_two_layer_image_is_clean() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("img");
    let mut b = Builder::new(std::fs::File::create(&img).unwrap(), Options::default());
    b.begin_layer().unwrap();
    b.add_dir(&p(""), meta(0o755)).unwrap();
    b.add_dir(&p("etc"), meta(0o755)).unwrap();
    let data = b"hello world\n".repeat(1000);
    b.add_file(
        &p("etc/hello"),
        meta(0o644),
        data.len() as u64,
        &mut &data[..],
    )
    .unwrap();
    b.add_hardlink(&p("etc/hello2"), &p("etc/hello")).unwrap();
    b.add_symlink(&p("etc/short"), b"hello", meta(0o777))
        .unwrap();
    b.add_symlink(&p("etc/long"), &[b'x'; 300], meta(0o777))
        .unwrap();
    b.add_special(&p("dev/null"), Special::CharDev(1, 3), meta(0o666))
        .unwrap();
    b.add_special(&p("dev/big"), Special::BlockDev(259, 70000), meta(0o660))
        .unwrap();
    b.add_special(&p("run/fifo"), Special::Fifo, meta(0o600))
        .unwrap();
    let mut xm = meta(0o4755);
    xm.xattrs.insert(b"user.small".to_vec(), b"v".to_vec());
    b.add_file(&p("bin/suid"), xm, 0, &mut &b""[..]).unwrap();
    let mut big = meta(0o755);
    big.xattrs
        .insert(b"security.capability".to_vec(), vec![1; 20]);
    big.xattrs.insert(b"user.long".to_vec(), vec![2; 300]);
    b.add_file(&p("bin/cap"), big, 3, &mut &b"abc"[..]).unwrap();
    // Sparse: data, hole, data, with more than 4 extents.
    let mut sparse = Vec::new();
    for i in 0..12u8 {
        sparse.extend(std::iter::repeat_n(i + 1, 4096));
        sparse.extend(std::iter::repeat_n(0, 8192));
    }
    b.add_file(
        &p("var/sparse"),
        meta(0o644),
        sparse.len() as u64,
        &mut &sparse[..],
    )
    .unwrap();
    b.add_file(
        &p("var/zeros"),
        meta(0o644),
        1 << 20,
        &mut lode_ext4::Dense(std::io::Read::take(std::io::repeat(0), 1 << 20)),
    )
    .unwrap();
    for i in 0..3000 {
        b.add_file(&p(&format!("many/f{i:05}")), meta(0o644), 1, &mut &b"z"[..])
            .unwrap();
    }
    b.end_layer().unwrap();
    b.begin_layer().unwrap();
    b.whiteout(&p("etc"), b"hello").unwrap();
    b.add_file(&p("etc/new"), meta(0o600), 4, &mut &b"new\n"[..])
        .unwrap();
    b.opaque(&p("many")).unwrap();
    b.add_dir(&p("many/sub"), meta(0o700)).unwrap();
    b.end_layer().unwrap();
    let s = b.finish().unwrap();
    assert!(s.image_bytes > 0);
    fsck(&img);
    if let Ok(keep) = std::env::var("KEEP_IMG") {
        std::fs::copy(&img, keep).unwrap();
    }
}

/// File data with holes: `(offset, bytes)` segments in order, zeros between
/// them (what a sparse tar entry gives the builder). Counts the bytes read.
struct Sparse {
    segments: Vec<(u64, Vec<u8>)>,
    size: u64,
    pos: u64,
    read: u64,
}

impl Sparse {
    /// Where the current run ends and whether it is data.
    fn run(&self) -> (bool, u64) {
        for (off, data) in &self.segments {
            let end = off + data.len() as u64;
            if self.pos < *off {
                return (false, *off);
            }
            if self.pos < end {
                return (true, end);
            }
        }
        (false, self.size)
    }
}

impl std::io::Read for Sparse {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let (data, end) = self.run();
        let n = (buf.len() as u64).min(end - self.pos) as usize;
        if data {
            let (off, bytes) = self
                .segments
                .iter()
                .find(|(o, d)| self.pos >= *o && self.pos < o + d.len() as u64)
                .unwrap();
            let at = (self.pos - off) as usize;
            buf[..n].copy_from_slice(&bytes[at..at + n]);
        } else {
            buf[..n].fill(0);
        }
        self.pos += n as u64;
        self.read += n as u64;
        Ok(n)
    }
}

impl lode_ext4::FileData for Sparse {
    fn hole_ahead(&self) -> u64 {
        match self.run() {
            (false, end) => end - self.pos,
            _ => 0,
        }
    }
    fn skip_hole(&mut self, n: u64) -> std::io::Result<()> {
        assert!(n <= self.hole_ahead());
        self.pos += n;
        Ok(())
    }
}

/// A 1 TiB sparse file with a few stored bytes (some mid-block, some across
/// block boundaries) costs what it stores: the holes are skipped, not read,
/// and the image is clean with the data where it belongs.
#[test]
fn sparse_holes_are_skipped_not_read() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("img");
    let mut b = Builder::new(std::fs::File::create(&img).unwrap(), Options::default());
    b.begin_layer().unwrap();
    let tib = 1u64 << 40;
    let mut data = Sparse {
        segments: vec![
            (100, b"head".to_vec()),
            (4096 * 3 - 2, b"straddle".to_vec()),
            (1 << 30, vec![7u8; 10_000]),
            (tib - 5, b"tail!".to_vec()),
        ],
        size: tib,
        pos: 0,
        read: 0,
    };
    b.add_file(&p("big/sparse"), meta(0o644), tib, &mut data)
        .unwrap();
    b.end_layer().unwrap();
    let s = b.finish().unwrap();
    // Read: the stored bytes and the rest of their blocks, nothing more.
    assert!(
        data.read < 64 << 10,
        "read {} bytes of a 1 TiB sparse file",
        data.read
    );
    assert_eq!(s.data_bytes, 4096 * (1 + 2 + 3 + 1));
    fsck(&img);
}

/// "Inode table at A-B" of group 0, from `dumpe2fs`.
fn group0_table(path: &std::path::Path) -> (u64, u64) {
    let out = Command::new("dumpe2fs")
        .arg(path)
        .output()
        .expect("dumpe2fs runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("Inode table at"))
        .unwrap_or_else(|| panic!("no inode table in dumpe2fs output:\n{text}"));
    let range = line.split_whitespace().nth(3).expect("a block range");
    let (a, b) = range.split_once('-').expect("FIRST-LAST");
    (
        a.parse().expect("a block number"),
        b.parse().expect("a block number"),
    )
}

/// Group 0's inode table goes in chunk 0 (blocks 63..126) when it fits beside
/// the descriptors and the bitmaps chunk 0 holds, and otherwise stays in its
/// slot at the end of layer 0's section; every placement is clean.
#[test]
fn group_zero_table_placement_at_every_image_size() {
    const MIB: u64 = 1 << 20;
    // (image size, group 0's table in chunk 0)
    let cases = [
        (1024 * MIB, true),        // 8 groups: bitmaps and table fit
        (5 * 1024 * MIB, false),   // 40 groups: the bitmaps take the room
        (12800 * MIB, true),       // 100 groups: bitmaps in the tail, table fits
        (7937 * 128 * MIB, false), // 7937 groups: 63 descriptor blocks
    ];
    for (size, in_chunk0) in cases {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("img");
        let mut b = Builder::new(
            std::fs::File::create(&img).unwrap(),
            Options {
                size: Some(size),
                ..Options::default()
            },
        );
        b.begin_layer().unwrap();
        b.add_dir(&p(""), meta(0o755)).unwrap();
        b.add_dir(&p("etc"), meta(0o755)).unwrap();
        b.add_file(&p("etc/a"), meta(0o644), 6, &mut &b"first\n"[..])
            .unwrap();
        b.end_layer().unwrap();
        b.begin_layer().unwrap();
        b.add_file(&p("etc/b"), meta(0o644), 7, &mut &b"second\n"[..])
            .unwrap();
        b.end_layer().unwrap();
        b.finish().unwrap();
        fsck(&img);
        let (first, last) = group0_table(&img);
        assert_eq!(last - first + 1, 64, "size {size}: table of {first}-{last}");
        assert_eq!(
            (first, last) == (63, 126),
            in_chunk0,
            "size {size}: group 0's table at {first}-{last}"
        );
        if !in_chunk0 {
            assert!(first >= 128, "size {size}: table at {first} inside chunk 0");
        }
    }
}

/// Inode numbers of `paths`, read back with debugfs.
fn inos(img: &std::path::Path, paths: &[&str]) -> Vec<u32> {
    paths
        .iter()
        .map(|path| {
            let out = Command::new("debugfs")
                .args(["-R", &format!("stat {path}")])
                .arg(img)
                .output()
                .expect("debugfs runs");
            let text = String::from_utf8_lossy(&out.stdout);
            let at = text
                .find("Inode: ")
                .unwrap_or_else(|| panic!("{path}: {text}"));
            text[at + 7..]
                .split_whitespace()
                .next()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect()
}

/// Three layers: 1100 directories (1013 take group 0's inodes after the 11
/// reserved ones, 87 group 1) and 937 files that fill group 1 exactly; then
/// a layer that replaces and hides what the first brought and adds a
/// directory and a file; then one more file. `packed`: the upper two are
/// packed layers.
fn pool_and_packed(img: &std::path::Path, packed: bool) -> lode_ext4::Summary {
    let mut b = Builder::new(std::fs::File::create(img).unwrap(), Options::default());
    let begin = |b: &mut Builder| {
        if packed {
            b.begin_layer_packed().unwrap();
        } else {
            b.begin_layer().unwrap();
        }
    };
    begin(&mut b); // the first layer is a section of its own anyway
    b.add_dir(&p(""), meta(0o755)).unwrap();
    for d in 0..1100 {
        b.add_dir(&p(&format!("d{d:04}")), meta(0o755)).unwrap();
    }
    for f in 0..937 {
        let data = format!("file {f}\n");
        b.add_file(
            &p(&format!("d{:04}/f", f % 1100)),
            meta(0o644),
            data.len() as u64,
            &mut data.as_bytes(),
        )
        .unwrap();
    }
    b.end_layer().unwrap();
    begin(&mut b);
    b.add_dir(&p("packed"), meta(0o755)).unwrap();
    b.add_file(&p("packed/one"), meta(0o644), 4, &mut &b"one\n"[..])
        .unwrap();
    b.add_file(&p("d0000/f"), meta(0o600), 8, &mut &b"replaced"[..])
        .unwrap();
    b.whiteout(&p("d0001"), b"f").unwrap();
    b.end_layer().unwrap();
    begin(&mut b);
    b.add_file(&p("packed/two"), meta(0o644), 4, &mut &b"two\n"[..])
        .unwrap();
    b.end_layer().unwrap();
    b.finish().unwrap()
}

/// Directories take group 0's inodes (the directory pool) while it has
/// room and spill into the layer's own groups; a packed layer continues the
/// previous layer's last group and section, takes a new group when that is
/// full, and may replace and hide what the layer below brought. All of it
/// passes e2fsck.
#[test]
fn the_directory_pool_and_packed_layers_are_clean() {
    let dir = tempfile::tempdir().unwrap();
    let (img, apart) = (dir.path().join("img"), dir.path().join("apart"));
    let s = pool_and_packed(&img, true);
    fsck(&img);
    let paths = [
        "/d0000",
        "/d1012",
        "/d1013",
        "/d1099",
        "/d0002/f",
        "/d0936/f",
        "/packed",
        "/d0000/f",
        "/packed/one",
        "/packed/two",
    ];
    assert_eq!(
        inos(&img, &paths),
        [12, 1024, 1025, 1111, 1114, 2048, 2049, 2051, 2050, 2052]
    );
    // Layers of their own: each starts a section and owns whole groups.
    let t = pool_and_packed(&apart, false);
    fsck(&apart);
    assert_eq!(
        inos(&apart, &paths),
        [12, 1024, 1025, 1111, 1114, 2048, 2049, 2051, 2050, 3073]
    );
    assert_eq!((s.groups, t.groups), (4, 5));
    assert!(
        s.sections_end_block + 128 <= t.sections_end_block,
        "packed: {s:?}; apart: {t:?}"
    );
}
