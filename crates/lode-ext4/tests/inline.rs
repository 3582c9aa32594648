//! Inline data (layout version 4): small files and directories kept in their
//! inodes read back byte for byte through the patched `ext4-view`
//! (`vendor/ext4-view`), `e2fsck -fn` and, when the test runs as root, the
//! kernel; directories that outgrow their inode in an upper layer; images
//! `mke2fs -O inline_data` made; and hostile inline inodes, which must be
//! errors, never panics.
#![allow(clippy::unwrap_used)]

use lode_ext4::format::inline::{INLINE_DATA_FL, MAX_FILE};
mod common;

use common::{fsck, meta, p, run};
use lode_ext4::{Builder, Options, Summary};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// `debugfs -R "stat PATH"`: (inode number, i_flags, blocks listed).
fn stat(img: &Path, path: &str) -> (u32, u32, String) {
    let out = run(Command::new("debugfs")
        .arg("-R")
        .arg(format!("stat {path}"))
        .arg(img));
    let field = |name: &str| {
        let at = out.find(name).unwrap_or_else(|| panic!("{name} in {out}")) + name.len();
        out[at..].split_whitespace().next().unwrap().to_string()
    };
    let ino = field("Inode:").parse().unwrap();
    let flags = u32::from_str_radix(field("Flags:").trim_start_matches("0x"), 16).unwrap();
    let extents = out
        .split_once("EXTENTS:")
        .map(|(_, e)| e.trim().to_string())
        .unwrap_or_default();
    (ino, flags, extents)
}

fn is_inline(img: &Path, path: &str) -> bool {
    stat(img, path).1 & INLINE_DATA_FL != 0
}

/// Builds an image from layers of `(path, contents)`; `None` is a directory.
type Layer<'a> = Vec<(&'a str, Option<Vec<u8>>)>;

fn build(img: &Path, layers: &[Layer<'_>], whiteouts: &[(usize, &str, &str)]) -> Summary {
    let mut b = Builder::new(std::fs::File::create(img).unwrap(), Options::default());
    for (i, layer) in layers.iter().enumerate() {
        b.begin_layer().unwrap();
        if i == 0 {
            b.add_dir(&p(""), meta(0o755)).unwrap();
        }
        for (path, content) in layer {
            match content {
                None => b.add_dir(&p(path), meta(0o755)).unwrap(),
                Some(c) => b
                    .add_file(&p(path), meta(0o644), c.len() as u64, &mut &c[..])
                    .unwrap(),
            }
        }
        for (_, dir, name) in whiteouts.iter().filter(|w| w.0 == i) {
            b.whiteout(&p(dir), name.as_bytes()).unwrap();
        }
        b.end_layer().unwrap();
    }
    b.finish().unwrap()
}

fn bytes(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect()
}

fn names(fs: &ext4_view::Ext4, dir: &str) -> Vec<String> {
    let mut v: Vec<String> = fs
        .read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

/// Reads every file of `want` through the kernel, when it can mount.
fn check_with_kernel(img: &Path, want: &[(String, Vec<u8>)], dirs: &[(String, Vec<String>)]) {
    let mnt = tempfile::tempdir().unwrap();
    let ok = Command::new("mount")
        .args(["-t", "ext4", "-o", "loop,ro"])
        .arg(img)
        .arg(mnt.path())
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        eprintln!("no loop mount here (not root?): kernel check skipped");
        return;
    }
    let result = std::panic::catch_unwind(|| {
        for (path, data) in want {
            let got = std::fs::read(mnt.path().join(&path[1..])).unwrap();
            assert_eq!(&got, data, "kernel: {path}");
        }
        for (dir, want) in dirs {
            let mut want = want.clone();
            want.sort();
            let mut got: Vec<String> = std::fs::read_dir(mnt.path().join(&dir[1..]))
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            got.sort();
            assert_eq!(got, want, "kernel: {dir}");
        }
    });
    run(Command::new("umount").arg(mnt.path()));
    result.unwrap();
}

#[test]
fn tiny_files_and_small_directories_round_trip() {
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("img");
    let max = MAX_FILE as usize;
    let sizes = [0, 1, 59, 60, 61, max - 1, max, max + 1, 4097];
    let mut layer: Layer<'_> = Vec::new();
    let paths: Vec<String> = sizes.iter().map(|n| format!("/f/{n}")).collect();
    for (path, &n) in paths.iter().zip(&sizes) {
        layer.push((path, Some(bytes(n, n as u8))));
    }
    // Directories: empty, entries in i_block only, entries spilling into
    // system.data, and too many for the inode; and one whose only entry is
    // too long for i_block (a blank entry there, the name in the value).
    let dir_sizes = [0usize, 3, 5, 12];
    let mut dir_paths = Vec::new();
    for n in dir_sizes {
        let dir = format!("/d/{n}");
        dir_paths.push((
            dir.clone(),
            (1..=n).map(|i| format!("name{i}")).collect::<Vec<_>>(),
        ));
    }
    dir_paths.push(("/d/long".to_string(), vec!["n".repeat(50)]));
    let entries: Vec<String> = dir_paths
        .iter()
        .flat_map(|(dir, names)| names.iter().map(move |n| format!("{dir}/{n}")))
        .collect();
    for (dir, _) in &dir_paths {
        layer.push((dir, None));
    }
    for e in &entries {
        layer.push((e, Some(e.as_bytes().to_vec())));
    }
    build(&img, &[layer], &[]);
    fsck(&img);

    for (path, &n) in paths.iter().zip(&sizes) {
        assert_eq!(is_inline(&img, path), (1..=max).contains(&n), "{path}");
    }
    for (dir, names) in &dir_paths {
        assert_eq!(is_inline(&img, dir), names.len() <= 5, "{dir}");
        if dir == "/d/long" {
            // Blank entry spanning i_block's 56 bytes, then the name.
            let ino = stat(&img, dir).0;
            let f = std::fs::File::open(&img).unwrap();
            let mut b = [0u8; 10];
            f.read_exact_at(&mut b, inode_offset(&img, ino) + 0x28)
                .unwrap();
            assert_eq!(
                (&b[4..8], u16::from_le_bytes([b[8], b[9]])),
                (&[0u8; 4][..], 56)
            );
        }
    }
    let fs = ext4_view::Ext4::load_from_path(&img).unwrap();
    let mut want = Vec::new();
    for (path, &n) in paths.iter().zip(&sizes) {
        let data = bytes(n, n as u8);
        assert_eq!(fs.read(path.as_str()).unwrap(), data, "{path}");
        assert_eq!(fs.metadata(path.as_str()).unwrap().len(), n as u64);
        want.push((path.clone(), data));
    }
    for e in &entries {
        assert_eq!(fs.read(e.as_str()).unwrap(), e.as_bytes(), "{e}");
        want.push((e.clone(), e.as_bytes().to_vec()));
    }
    let mut listed = Vec::new();
    for (dir, names_in) in &dir_paths {
        let mut expect: Vec<String> = names_in.clone();
        expect.extend([".".to_string(), "..".to_string()]);
        expect.sort();
        assert_eq!(names(&fs, dir), expect, "{dir}");
        // `..` of an inline directory is its parent.
        assert!(fs.metadata(format!("{dir}/..").as_str()).unwrap().is_dir());
        listed.push((dir.clone(), names_in.clone()));
    }
    // Reads from an offset inside an inline file.
    use std::io::{Read, Seek, SeekFrom};
    let mut f = fs.open(format!("/f/{max}").as_str()).unwrap();
    f.seek(SeekFrom::Start(70)).unwrap();
    let mut tail = Vec::new();
    f.read_to_end(&mut tail).unwrap();
    assert_eq!(tail, bytes(max, max as u8)[70..]);
    check_with_kernel(&img, &want, &listed);
}

#[test]
fn a_lower_inline_directory_outgrows_its_inode_in_an_upper_layer() {
    let d = tempfile::tempdir().unwrap();
    let (one, two) = (d.path().join("one"), d.path().join("two"));
    let lower: Layer<'_> = vec![
        ("/app/grows", None),
        ("/app/grows/a", Some(b"a".to_vec())),
        ("/app/shrinks", None),
        ("/app/stays", None),
    ];
    let big: Vec<String> = (0..30)
        .map(|i| format!("/app/shrinks/entry-{i:02}"))
        .collect();
    let mut lower = lower;
    for e in &big {
        lower.push((e, Some(vec![1])));
    }
    let more: Vec<String> = (0..30).map(|i| format!("/app/grows/file-{i:02}")).collect();
    let mut upper: Layer<'_> = vec![("/app/stays/x", Some(b"x".to_vec()))];
    for e in &more {
        upper.push((e, Some(e.as_bytes().to_vec())));
    }
    // The upper layer removes all but one of /app/shrinks's entries.
    let gone: Vec<String> = (1..30).map(|i| format!("entry-{i:02}")).collect();
    let whiteouts: Vec<(usize, &str, &str)> = gone
        .iter()
        .map(|n| (1, "/app/shrinks", n.as_str()))
        .collect();
    let first = build(&one, &[lower.clone()], &[]);
    build(&two, &[lower, upper], &whiteouts);
    fsck(&one);
    fsck(&two);

    assert!(is_inline(&one, "/app/grows") && !is_inline(&one, "/app/shrinks"));
    assert!(!is_inline(&two, "/app/grows"), "grown past the inode");
    assert!(is_inline(&two, "/app/shrinks") && is_inline(&two, "/app/stays"));
    // The grown directory's blocks are in the upper layer's section, past
    // everything the lower layer wrote.
    let (_, _, extents) = stat(&two, "/app/grows");
    let block: u64 = extents
        .split(':')
        .nth(1)
        .unwrap()
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        block >= first.sections_end_block,
        "block {block} of /app/grows is inside the lower layer's section (ends {})",
        first.sections_end_block
    );
    // And the lower layer's data and directory blocks are byte for byte the
    // same in both (its inode table, after them, differs: the upper layer
    // deletes files of the lower one).
    let (a, b) = (
        std::fs::File::open(&one).unwrap(),
        std::fs::File::open(&two).unwrap(),
    );
    let table = inode_offset(&one, 1025) / 4096;
    assert!(table > 128 && table < first.sections_end_block);
    let len = ((table - 128) * 4096) as usize;
    let (mut x, mut y) = (vec![0u8; len], vec![0u8; len]);
    a.read_exact_at(&mut x, 128 * 4096).unwrap();
    b.read_exact_at(&mut y, 128 * 4096).unwrap();
    assert!(x == y, "layer 0's section differs");

    let fs = ext4_view::Ext4::load_from_path(&two).unwrap();
    let mut want: Vec<String> = more.iter().map(|m| m[11..].to_string()).collect();
    want.extend([".".into(), "..".into(), "a".into()]);
    want.sort();
    assert_eq!(names(&fs, "/app/grows"), want);
    assert_eq!(names(&fs, "/app/shrinks"), [".", "..", "entry-00"]);
    assert_eq!(names(&fs, "/app/stays"), [".", "..", "x"]);
    for m in &more {
        assert_eq!(fs.read(m.as_str()).unwrap(), m.as_bytes());
    }
    let files: Vec<(String, Vec<u8>)> = more
        .iter()
        .map(|m| (m.clone(), m.as_bytes().to_vec()))
        .chain([("/app/stays/x".to_string(), b"x".to_vec())])
        .collect();
    let dirs = vec![
        ("/app/grows".to_string(), want[2..].to_vec()),
        ("/app/shrinks".to_string(), vec!["entry-00".to_string()]),
    ];
    check_with_kernel(&two, &files, &dirs);
}

#[test]
fn images_mke2fs_makes_with_inline_data_read_back() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    let mut want = Vec::new();
    for (i, n) in [1usize, 30, 60, 100, 128, 129, 5000].iter().enumerate() {
        let path = src.join(format!("dir{}/file{n}", i % 3));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, bytes(*n, 7)).unwrap();
        want.push((format!("/dir{}/file{n}", i % 3), bytes(*n, 7)));
    }
    std::fs::create_dir_all(src.join("empty")).unwrap();
    let img = d.path().join("img");
    run(Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-b", "4096", "-I", "256"])
        .args(["-O", "inline_data,^has_journal,^metadata_csum"])
        .arg("-d")
        .arg(&src)
        .arg(&img)
        .arg("16M"));
    assert!(is_inline(&img, "/dir0/file1") && is_inline(&img, "/empty"));
    let fs = ext4_view::Ext4::load_from_path(&img).unwrap();
    for (path, data) in &want {
        assert_eq!(&fs.read(path.as_str()).unwrap(), data, "{path}");
    }
    assert_eq!(names(&fs, "/empty"), [".", ".."]);
    drop(fs);

    // A directory the kernel itself grows into system.data (mke2fs never
    // does), when this test may mount.
    let mnt = tempfile::tempdir().unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "ext4", "-o", "loop"])
        .arg(&img)
        .arg(mnt.path())
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !mounted {
        eprintln!("no loop mount here (not root?): kernel-written directory skipped");
        return;
    }
    let made = std::panic::catch_unwind(|| {
        std::fs::create_dir(mnt.path().join("k")).unwrap();
        for i in 1..=5 {
            std::fs::write(mnt.path().join(format!("k/name{i}")), b"k").unwrap();
        }
    });
    run(Command::new("umount").arg(mnt.path()));
    made.unwrap();
    fsck(&img);
    let (_, flags, _) = stat(&img, "/k");
    assert_ne!(flags & INLINE_DATA_FL, 0, "the kernel kept /k inline");
    let fs = ext4_view::Ext4::load_from_path(&img).unwrap();
    assert_eq!(
        names(&fs, "/k"),
        [".", "..", "name1", "name2", "name3", "name4", "name5"]
    );
    assert_eq!(fs.read("/k/name5").unwrap(), b"k");
}

/// Where inode `ino`'s 256 bytes are in a lode image (32-byte descriptors).
fn inode_offset(img: &Path, ino: u32) -> u64 {
    let f = std::fs::File::open(img).unwrap();
    let group = u64::from((ino - 1) / 1024);
    let mut desc = [0u8; 4];
    f.read_exact_at(&mut desc, 4096 + group * 32 + 8).unwrap();
    u64::from(u32::from_le_bytes(desc)) * 4096 + u64::from((ino - 1) % 1024) * 256
}

#[test]
fn hostile_inline_inodes_are_errors_not_panics() {
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("img");
    let names5: Vec<String> = (1..=5).map(|i| format!("/d/name{i}")).collect();
    let mut layer: Layer<'_> = vec![("/f", Some(bytes(100, 1))), ("/d", None)];
    for n in &names5 {
        layer.push((n, Some(vec![2])));
    }
    build(&img, &[layer], &[]);
    let (file_ino, _, _) = stat(&img, "/f");
    let (dir_ino, _, _) = stat(&img, "/d");
    let (file_at, dir_at) = (inode_offset(&img, file_ino), inode_offset(&img, dir_ino));
    // (what, inode offset, byte offset in the inode, bytes written there)
    let area = 160u64; // 128 + i_extra_isize
    let entry = area + 4;
    let cases: Vec<(&str, u64, u64, Vec<u8>)> = vec![
        (
            "value offset past the inode",
            file_at,
            entry + 2,
            0xfff0u16.to_le_bytes().to_vec(),
        ),
        (
            "value size past the inode",
            file_at,
            entry + 8,
            0xffff_fff0u32.to_le_bytes().to_vec(),
        ),
        (
            "value in an ea_inode",
            file_at,
            entry + 4,
            77u32.to_le_bytes().to_vec(),
        ),
        ("no xattr magic", file_at, area, [0u8; 4].to_vec()),
        (
            "i_extra_isize past the inode",
            file_at,
            0x80,
            0xfffcu16.to_le_bytes().to_vec(),
        ),
        ("no system.data", file_at, entry + 1, [6u8].to_vec()),
        (
            "no system.data, entries without an end",
            file_at,
            entry + 1,
            [&[6u8][..], &[0; 14], b"data", &[9; 4]].concat(),
        ),
        (
            "size past the inline bytes",
            file_at,
            4,
            129u32.to_le_bytes().to_vec(),
        ),
        (
            "dir entry crossing i_block's end",
            dir_at,
            0x28 + 4 + 4,
            60u16.to_le_bytes().to_vec(),
        ),
        (
            "dir entry rec_len 0",
            dir_at,
            0x28 + 4 + 4,
            [0u8; 2].to_vec(),
        ),
        (
            "dir name past its region",
            dir_at,
            0x28 + 4 + 6,
            [200u8].to_vec(),
        ),
    ];
    for (what, at, off, patch) in cases {
        let bad = d.path().join("bad");
        std::fs::copy(&img, &bad).unwrap();
        let f = std::fs::OpenOptions::new().write(true).open(&bad).unwrap();
        f.write_all_at(&patch, at + off).unwrap();
        drop(f);
        let fs = ext4_view::Ext4::load_from_path(&bad).unwrap();
        let file = fs.read("/f");
        let dir: Result<Vec<_>, _> = fs.read_dir("/d").and_then(|r| r.collect());
        assert!(
            file.is_err() || dir.is_err(),
            "{what}: read as valid ({} bytes, {:?} entries)",
            file.map(|f| f.len()).unwrap_or(0),
            dir.map(|d| d.len())
        );
    }
    // The feature flag off with inline inodes present is an error too.
    let bad: PathBuf = d.path().join("nofeature");
    std::fs::copy(&img, &bad).unwrap();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&bad)
        .unwrap();
    let mut incompat = [0u8; 4];
    f.read_exact_at(&mut incompat, 1024 + 0x60).unwrap();
    let v = u32::from_le_bytes(incompat) & !0x8000;
    f.write_all_at(&v.to_le_bytes(), 1024 + 0x60).unwrap();
    drop(f);
    let fs = ext4_view::Ext4::load_from_path(&bad).unwrap();
    assert!(fs.read("/f").is_err());
}
