//! `lode flatten` end to end: rich layer stacks through both transports,
//! checked with e2fsck, ext4-view and a real loop mount against the model.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use common::{big_tests, lode_bin, tmp};
use lode_testkit::cli::assert_all_identical;
use lode_testkit::content::SparseRegion;
use lode_testkit::fixtures::{self, rich_stack, RichOptions};
use lode_testkit::*;
use std::fs;
use std::path::Path;

const MIB: u64 = 1024 * 1024;

fn assert_only(dir: &Path, names: &[&str]) {
    let mut got: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    got.sort();
    let mut want: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(
        got,
        want,
        "unexpected files in {} (temp files left behind?)",
        dir.display()
    );
}

#[test]
fn rich_stack_oci_gzip_zstd_plain() {
    let layers = rich_stack(RichOptions::default());
    let expected = Model::apply_all(&layers).unwrap();
    let d = tmp();
    let layout = d.path().join("oci");
    write_oci_layout(
        &layout,
        &layers,
        &[Compression::Gzip, Compression::Zstd, Compression::None],
        Some("latest"),
    )
    .unwrap();
    let out_dir = d.path().join("out");
    fs::create_dir(&out_dir).unwrap();
    let out = out_dir.join("rich.ext4");
    Flatten::new(lode_bin(), oci_source(&layout, Some("latest")), &out).run_ok();
    assert_only(&out_dir, &["rich.ext4"]);
    verify_image(
        &out,
        &expected,
        "rich stack via oci (gzip, zstd, plain layers)",
    );
}

#[test]
fn rich_stack_docker_archive() {
    let layers = rich_stack(RichOptions::default());
    let expected = Model::apply_all(&layers).unwrap();
    let d = tmp();
    let archive = d.path().join("image.tar");
    write_docker_archive(&archive, &layers, &["example.com/lode/rich:1"]).unwrap();
    let out_dir = d.path().join("out");
    fs::create_dir(&out_dir).unwrap();
    let out = out_dir.join("rich.ext4");
    Flatten::new(
        lode_bin(),
        docker_source(&archive, Some("example.com/lode/rich:1")),
        &out,
    )
    .run_ok();
    assert_only(&out_dir, &["rich.ext4"]);
    verify_image(
        &out,
        &expected,
        "rich stack via docker-archive (legacy layout)",
    );

    // Docker >= 25 layout (blobs/sha256/...) gives the same bytes.
    let archive2 = d.path().join("image-blobs.tar");
    write_docker_archive_with(
        &archive2,
        &layers,
        &DockerOptions {
            repo_tags: vec!["example.com/lode/rich:1".into()],
            layout: DockerLayout::Blobs,
            ..DockerOptions::default()
        },
    )
    .unwrap();
    let out2 = out_dir.join("rich-blobs.ext4");
    Flatten::new(lode_bin(), docker_source(&archive2, None), &out2).run_ok();
    assert_all_identical(&[("legacy layout".into(), out), ("blobs layout".into(), out2)]);
}

/// References: `oci:DIR` without a ref picks the only manifest;
/// `docker-archive:FILE` with and without `:repo:tag`.
#[test]
fn source_references() {
    let layers = vec![
        LayerSpec::with(vec![
            Entry::dir("etc"),
            Entry::file("etc/hostname", "lode\n"),
        ]),
        LayerSpec::with(vec![Entry::file("etc/motd", "hi\n").mode(0o600)]),
    ];
    let expected = Model::apply_all(&layers).unwrap();
    let d = tmp();
    let layout = d.path().join("oci");
    write_oci_layout(&layout, &layers, &[Compression::Gzip], Some("v1.2")).unwrap();
    let archive = d.path().join("img.tar");
    write_docker_archive(&archive, &layers, &["registry.example:5000/ns/app:v1.2"]).unwrap();
    let out_dir = d.path().join("out");
    fs::create_dir(&out_dir).unwrap();
    let sources = [
        oci_source(&layout, None),
        oci_source(&layout, Some("v1.2")),
        docker_source(&archive, None),
        docker_source(&archive, Some("registry.example:5000/ns/app:v1.2")),
    ];
    let mut outs = Vec::new();
    for (i, s) in sources.iter().enumerate() {
        let out = out_dir.join(format!("{i}.ext4"));
        Flatten::new(lode_bin(), s.clone(), &out).run_ok();
        verify_image(&out, &expected, s);
        outs.push((s.clone(), out));
    }
    assert_all_identical(&outs);
}

/// Degenerate layers: an empty layer, a layer of only whiteouts, one of
/// only an opaque marker, a whiteout of everything at the top level.
#[test]
fn degenerate_layers() {
    let layers = vec![
        LayerSpec::with(vec![
            Entry::dir("a"),
            Entry::file("a/1", "1"),
            Entry::dir("b"),
            Entry::file("b/2", "2"),
            Entry::file("c", "3"),
        ]),
        LayerSpec::new(),
        LayerSpec::with(vec![Entry::whiteout("c"), Entry::whiteout("a/1")]),
        LayerSpec::with(vec![Entry::opaque("b")]),
        LayerSpec::new(),
    ];
    let expected = Model::apply_all(&layers).unwrap();
    let d = tmp();
    let layout = d.path().join("oci");
    write_oci_layout(
        &layout,
        &layers,
        &[
            Compression::None,
            Compression::Gzip,
            Compression::Zstd,
            Compression::None,
            Compression::Gzip,
        ],
        None,
    )
    .unwrap();
    let out = d.path().join("out.ext4");
    Flatten::new(lode_bin(), oci_source(&layout, None), &out).run_ok();
    verify_image(&out, &expected, "degenerate layers");

    // Everything deleted: the image holds only / and /lost+found.
    let layers = vec![
        LayerSpec::with(vec![Entry::file("x", "x"), Entry::dir("y")]),
        LayerSpec::with(vec![Entry::whiteout("x"), Entry::whiteout("y")]),
    ];
    let expected = Model::apply_all(&layers).unwrap();
    assert_eq!(expected.len(), 1);
    let layout = d.path().join("oci2");
    write_oci_layout(&layout, &layers, &[Compression::Gzip], None).unwrap();
    let out = d.path().join("out2.ext4");
    Flatten::new(lode_bin(), oci_source(&layout, None), &out).run_ok();
    verify_image(&out, &expected, "all content whited out");
}

/// Files whose content needs many extents: a 600 MiB file (more than four
/// 128 MiB extents, so an extent tree with index blocks) and a 2 GiB sparse
/// file with 40 data islands. Generated on the fly, never in memory.
/// Runs only with LODE_BIG_TESTS=1.
#[test]
fn big_files() {
    if !big_tests() {
        eprintln!("SKIP big_files: set LODE_BIG_TESTS=1 to run (600 MiB + 2 GiB sparse)");
        return;
    }
    let layers = vec![
        LayerSpec::with(vec![Entry::dir("big"), Entry::file("big/small", "s")]),
        LayerSpec::with(vec![
            Entry::file(
                "big/huge",
                Content::Pattern {
                    size: 600 * MIB + 12_345,
                    seed: 600,
                },
            ),
            Entry::file(
                "big/sparse",
                Content::Sparse {
                    size: 2048 * MIB,
                    regions: (0..40)
                        .map(|i| SparseRegion {
                            offset: i * 51 * MIB + 4096 * i,
                            len: 256 * 1024 + i,
                            seed: i,
                        })
                        .collect(),
                },
            ),
            Entry::file("big/zeros", Content::Zeros(300 * MIB)),
        ]),
    ];
    let expected = Model::apply_all(&layers).unwrap();
    let d = tmp();
    let layout = d.path().join("oci");
    write_oci_layout(
        &layout,
        &layers,
        &[Compression::Gzip, Compression::None],
        Some("big"),
    )
    .unwrap();
    let out = d.path().join("big.ext4");
    Flatten::new(lode_bin(), oci_source(&layout, Some("big")), &out).run_ok();
    verify_image(&out, &expected, "big files");
}

/// The rich stack plus a 600 MiB file, via docker-archive (LODE_BIG_TESTS=1).
#[test]
fn rich_stack_with_huge_file() {
    if !big_tests() {
        eprintln!("SKIP rich_stack_with_huge_file: set LODE_BIG_TESTS=1 to run");
        return;
    }
    let layers = rich_stack(RichOptions {
        huge_file: true,
        ..RichOptions::default()
    });
    let expected = Model::apply_all(&layers).unwrap();
    let d = tmp();
    let archive = d.path().join("image.tar");
    write_docker_archive(&archive, &layers, &["lode/huge:1"]).unwrap();
    let out = d.path().join("huge.ext4");
    Flatten::new(lode_bin(), docker_source(&archive, None), &out).run_ok();
    verify_image(&out, &expected, "rich stack with a 600 MiB file");
}

/// PAX records are length-prefixed, so values may contain any byte,
/// including `\n`: binary xattr values (a `security.capability` whose mask
/// has a 0x0a byte = CAP_DAC_OVERRIDE|CAP_FOWNER), and long names (> 100
/// bytes, so written as PAX `path`/`linkpath`) containing a newline.
#[test]
fn pax_values_containing_newlines() {
    let mut nl_name = b"nl/".to_vec();
    nl_name.extend(std::iter::repeat_n(b'n', 120));
    nl_name.extend_from_slice(b"\nend");
    let layers = vec![LayerSpec::with(vec![
        Entry::dir("nl"),
        Entry::file("nl/cap", "x")
            .mode(0o755)
            .xattr("security.capability", fixtures::cap_v2(0x0a)),
        Entry::file("nl/user", "y").xattr("user.multi-line", b"line 1\nline 2\n"),
        Entry::file(&nl_name, "newline in a long name"),
        Entry::symlink(
            "nl/link",
            [b"target/".as_slice(), &[b't'; 100], b"\nx"].concat(),
        ),
    ])];
    let expected = Model::apply_all(&layers).unwrap();
    let d = tmp();
    let layout = d.path().join("oci");
    write_oci_layout(&layout, &layers, &[Compression::Gzip], None).unwrap();
    let out = d.path().join("nl.ext4");
    Flatten::new(lode_bin(), oci_source(&layout, None), &out).run_ok();
    verify_image(&out, &expected, "PAX values with newlines");
}

/// A layer written by libarchive (`bsdtar`, as some image builders use):
/// xattrs come as `LIBARCHIVE.xattr.NAME` (URL-encoded name, base64 value)
/// with a `SCHILY.xattr.*` copy whose name libarchive leaves URL-encoded.
/// The image must hold each xattr once, under its real name, with its bytes.
#[test]
fn layers_written_by_bsdtar_keep_their_xattrs() {
    let layers = vec![LayerSpec::with(vec![
        Entry::dir("x"),
        Entry::file("x/cap", "c")
            .mode(0o755)
            .xattr("security.capability", fixtures::cap_v2(0x0a)),
        Entry::file("x/odd", "o")
            .xattr("user.with space, 100% and \u{fc}", b"v")
            .xattr("user.bin", b"\0\n\xff\x00end"),
    ])];
    let expected = Model::apply_all(&layers).unwrap();
    let d = tmp();
    let ours = d.path().join("ours.tar");
    fs::write(&ours, lode_testkit::tarw::layer_tar_bytes(&layers[0])).unwrap();
    // bsdtar rewrites every entry of our archive in its own pax dialect.
    let theirs = d.path().join("bsdtar.tar");
    let out = std::process::Command::new("bsdtar")
        .args(["--format", "pax", "-cf"])
        .arg(&theirs)
        .arg(format!("@{}", ours.display()))
        .output()
        .expect("bsdtar (libarchive-tools) is installed by scripts/test.sh");
    assert!(
        out.status.success(),
        "bsdtar: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tar = fs::read(&theirs).unwrap();
    assert!(
        tar.windows(17).any(|w| w == b"LIBARCHIVE.xattr."),
        "bsdtar wrote no LIBARCHIVE.xattr records"
    );
    let layout = d.path().join("oci");
    write_oci_layout_from_tars(&layout, &[tar]).unwrap();
    let img = d.path().join("bsdtar.ext4");
    Flatten::new(lode_bin(), oci_source(&layout, None), &img).run_ok();
    verify_image(&img, &expected, "a bsdtar layer");
}

/// Directories of more than one block are hash-indexed (htree): one of
/// 12 000 names with bytes of every value (the unsigned-char hash matters
/// from 0x80 up), and one of 10 000 names of 255 bytes, whose 667 leaves
/// need a second index level. e2fsck checks every index against the hashes,
/// and the kernel looks up every name through the index.
#[test]
fn big_directories_are_hash_indexed() {
    let mut entries = vec![Entry::dir("wide"), Entry::dir("long")];
    for i in 0..12_000u32 {
        let b = (i % 254 + 1) as u8;
        let b = if b == b'/' { 0xfe } else { b };
        let name = [format!("wide/n{i}-").into_bytes(), vec![b, 0xc3, 0xa9]].concat();
        entries.push(Entry::file(&name, "w"));
    }
    for i in 0..10_000u32 {
        let mut name = format!("long/{i:08}").into_bytes();
        name.resize(5 + 255, b'L');
        entries.push(Entry::file(&name, ""));
    }
    let layers = vec![LayerSpec::with(entries)];
    let expected = Model::apply_all(&layers).unwrap();
    let d = tmp();
    let layout = d.path().join("oci");
    write_oci_layout(&layout, &layers, &[Compression::None], None).unwrap();
    let img = d.path().join("dirs.ext4");
    Flatten::new(lode_bin(), oci_source(&layout, None), &img).run_ok();
    for (dir, levels) in [("/wide", "0"), ("/long", "1")] {
        let out = std::process::Command::new("debugfs")
            .args(["-R", &format!("htree_dump {dir}")])
            .arg(&img)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("Root node dump:")
                && text.contains(&format!("Indirect levels: {levels}")),
            "{dir} is not an htree of {levels} indirect levels:\n{}",
            &text[..text.len().min(2000)]
        );
    }
    verify_image(&img, &expected, "big hash-indexed directories");
}

/// Sparse files as GNU tar writes them in each PAX sparse format (0.0:
/// repeated `GNU.sparse.offset`/`numbytes` records; 0.1: one
/// `GNU.sparse.map`; 1.0: the map at the start of the data) give the file's
/// exact bytes, its holes left unallocated.
#[test]
fn gnu_tar_pax_sparse_formats() {
    use sha2::{Digest, Sha256};
    use std::os::unix::fs::FileExt;
    let d = tmp();
    let root = d.path().join("root");
    fs::create_dir_all(root.join("d")).unwrap();
    let f = fs::File::create(root.join("d/sparse")).unwrap();
    f.set_len(10 * MIB).unwrap();
    f.write_all_at(&[b'A'; 5000], 3 * 4096).unwrap();
    f.write_all_at(&[b'B'; 70_000], 5 * MIB + 17).unwrap();
    f.write_all_at(&[b'C'; 100], 10 * MIB - 100).unwrap();
    drop(f);
    let want: [u8; 32] = Sha256::digest(fs::read(root.join("d/sparse")).unwrap()).into();
    for version in ["0.0", "0.1", "1.0"] {
        let tar = d.path().join(format!("{version}.tar"));
        let out = std::process::Command::new("tar")
            .args([
                "--format=pax",
                "--sparse",
                &format!("--sparse-version={version}"),
            ])
            .arg("-cf")
            .arg(&tar)
            .arg("-C")
            .arg(&root)
            .arg("d")
            .output()
            .expect("GNU tar");
        assert!(
            out.status.success(),
            "tar: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let layout = d.path().join(format!("oci-{version}"));
        write_oci_layout_from_tars(&layout, &[fs::read(&tar).unwrap()]).unwrap();
        let img = d.path().join(format!("{version}.ext4"));
        Flatten::new(lode_bin(), oci_source(&layout, None), &img).run_ok();
        assert_e2fsck_clean(&img);
        let tree = lode_testkit::read_ext4::read_ext4_view_lenient(&img)
            .unwrap()
            .tree;
        let node = &tree[b"/d/sparse".as_slice()];
        assert_eq!(node.size, 10 * MIB, "format {version}: size");
        assert_eq!(node.sha256, Some(want), "format {version}: content");
        let blocks = std::process::Command::new("debugfs")
            .args(["-R", "stat /d/sparse"])
            .arg(&img)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&blocks.stdout);
        assert!(
            text.contains("Blockcount: 168"),
            "format {version}: holes allocated? (84 KiB of data = 168 sectors)\n{text}"
        );
    }
}
