//! Determinism (same content => same bytes, whatever the transport,
//! compression, environment or run) and layer stability (images sharing
//! lower layers share almost all of their 512 KiB chunks).
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use common::{lode_bin, tmp};
use lode_testkit::cli::assert_all_identical;
use lode_testkit::fixtures::{rich_stack, stability_pair, RichOptions};
use lode_testkit::*;
use std::fs;
use std::path::{Path, PathBuf};

const CHUNK: usize = 512 * 1024;
const SLACK: u64 = 2 * 1024 * 1024;

fn flatten(source: String, out: &Path) -> PathBuf {
    Flatten::new(lode_bin(), source, out).run_ok();
    out.to_path_buf()
}

#[test]
fn identical_bytes_across_transports_and_compressions() {
    let layers = rich_stack(RichOptions {
        big_dir_entries: 3000,
        huge_file: false,
    });
    let d = tmp();
    let out_dir = d.path().join("out");
    fs::create_dir(&out_dir).unwrap();
    let mut results: Vec<(String, PathBuf)> = Vec::new();
    let oci_variants: [(&str, Vec<Compression>); 4] = [
        ("oci-gzip", vec![Compression::Gzip]),
        ("oci-zstd", vec![Compression::Zstd]),
        ("oci-plain", vec![Compression::None]),
        (
            "oci-mixed",
            vec![Compression::Zstd, Compression::None, Compression::Gzip],
        ),
    ];
    for (name, comps) in oci_variants {
        let layout = d.path().join(name);
        write_oci_layout(&layout, &layers, &comps, Some("latest")).unwrap();
        results.push((
            name.to_string(),
            flatten(
                oci_source(&layout, Some("latest")),
                &out_dir.join(format!("{name}.ext4")),
            ),
        ));
    }
    for (name, layout) in [
        ("docker-legacy", DockerLayout::Legacy),
        ("docker-blobs", DockerLayout::Blobs),
    ] {
        let archive = d.path().join(format!("{name}.tar"));
        write_docker_archive_with(
            &archive,
            &layers,
            &DockerOptions {
                layout,
                ..DockerOptions::default()
            },
        )
        .unwrap();
        results.push((
            name.to_string(),
            flatten(
                docker_source(&archive, None),
                &out_dir.join(format!("{name}.ext4")),
            ),
        ));
    }
    assert_all_identical(&results);
}

/// docker-archive layers may themselves be compressed (`docker load`
/// accepts that); the result must equal the plain-tar archive's.
#[test]
fn docker_archive_with_compressed_layers() {
    let layers = rich_stack(RichOptions {
        big_dir_entries: 100,
        huge_file: false,
    });
    let d = tmp();
    let plain = d.path().join("plain.tar");
    write_docker_archive(&plain, &layers, &["lode/t:1"]).unwrap();
    let packed = d.path().join("packed.tar");
    write_docker_archive_with(
        &packed,
        &layers,
        &DockerOptions {
            compression: vec![Compression::Gzip, Compression::None, Compression::Zstd],
            ..DockerOptions::default()
        },
    )
    .unwrap();
    let a = flatten(docker_source(&plain, None), &d.path().join("a.ext4"));
    let b = flatten(docker_source(&packed, None), &d.path().join("b.ext4"));
    assert_all_identical(&[("plain layers".into(), a), ("compressed layers".into(), b)]);
}

#[test]
fn identical_bytes_across_runs_and_environments() {
    let layers = rich_stack(RichOptions {
        big_dir_entries: 3000,
        huge_file: false,
    });
    let d = tmp();
    let layout = d.path().join("oci");
    write_oci_layout(
        &layout,
        &layers,
        &[Compression::Gzip, Compression::Zstd, Compression::None],
        Some("latest"),
    )
    .unwrap();
    let src = oci_source(&layout, Some("latest"));
    let out = |n: &str| -> PathBuf {
        let dir = d.path().join(format!("out-{n}"));
        fs::create_dir_all(&dir).unwrap();
        dir.join("image.ext4")
    };
    let bin = lode_bin();
    let runs: Vec<(&str, Flatten)> = vec![
        ("plain", Flatten::new(&bin, src.clone(), out("plain"))),
        ("again", Flatten::new(&bin, src.clone(), out("again"))),
        (
            "tz-utc",
            Flatten::new(&bin, src.clone(), out("tz-utc")).env("TZ", "UTC"),
        ),
        (
            "tz-far",
            Flatten::new(&bin, src.clone(), out("tz-far")).env("TZ", "Pacific/Kiritimati"),
        ),
        (
            "rayon-1",
            Flatten::new(&bin, src.clone(), out("rayon-1")).env("RAYON_NUM_THREADS", "1"),
        ),
        (
            "rayon-2",
            Flatten::new(&bin, src.clone(), out("rayon-2")).env("RAYON_NUM_THREADS", "2"),
        ),
        (
            "rayon-7",
            Flatten::new(&bin, src.clone(), out("rayon-7")).env("RAYON_NUM_THREADS", "7"),
        ),
        (
            "locale",
            Flatten::new(&bin, src.clone(), out("locale"))
                .env("LC_ALL", "C.UTF-8")
                .env("LANG", "de_DE.UTF-8"),
        ),
        (
            "umask-077",
            Flatten::new(&bin, src.clone(), out("umask-077")).umask(0o077),
        ),
        (
            "umask-000",
            Flatten::new(&bin, src.clone(), out("umask-000")).umask(0o000),
        ),
        (
            "cwd",
            Flatten::new(&bin, src.clone(), out("cwd")).cwd(d.path()),
        ),
        (
            "sde",
            Flatten::new(&bin, src.clone(), out("sde")).env("SOURCE_DATE_EPOCH", "1"),
        ),
        (
            "no-env",
            Flatten::new(&bin, src.clone(), out("no-env"))
                .env_remove("HOME")
                .env_remove("TZ")
                .env_remove("TMPDIR"),
        ),
    ];
    let mut outs = Vec::new();
    for (name, f) in &runs {
        f.run_ok();
        outs.push((name.to_string(), out(name)));
    }
    assert_all_identical(&outs);
    assert_e2fsck_clean(&out("plain"));
}

fn stability_check(
    a_layers: &[LayerSpec],
    b_layers: &[LayerSpec],
    b_new: &[LayerSpec],
    what: &str,
) {
    let d = tmp();
    let la = d.path().join("a");
    let lb = d.path().join("b");
    write_oci_layout(&la, a_layers, &[Compression::None], Some("a")).unwrap();
    write_oci_layout(&lb, b_layers, &[Compression::None], Some("b")).unwrap();
    let ia = d.path().join("a.ext4");
    let ib = d.path().join("b.ext4");
    flatten(oci_source(&la, Some("a")), &ia);
    flatten(oci_source(&lb, Some("b")), &ib);
    verify_image(&ib, &Model::apply_all(b_layers).unwrap(), what);
    let unique = unique_chunk_bytes(&ia, &ib, CHUNK).unwrap();
    let new_bytes: u64 = b_new.iter().map(|l| l.file_bytes_rounded(4096)).sum();
    let bound = new_bytes + SLACK;
    eprintln!("{what}: B has {unique} bytes in 512 KiB chunks not in A; new-layer file bytes (4 KiB-rounded) {new_bytes}; bound {bound}");
    assert!(
        unique <= bound,
        "{what}: {unique} bytes of B's 512 KiB chunks are not in A; allowed {new_bytes} (new layer files, 4 KiB-rounded) + {SLACK}"
    );
}

#[test]
fn layer_stability_different_top_layer() {
    let (a, b) = stability_pair();
    stability_check(&a, &b, &b[b.len() - 1..], "different top layer");
}

#[test]
fn layer_stability_extra_top_layer() {
    let (a, _) = stability_pair();
    let mut b = a.clone();
    let top = LayerSpec::with(vec![
        Entry::file(
            "pkg03/file07",
            Content::Pattern {
                size: 123_456,
                seed: 99,
            },
        ),
        Entry::whiteout("pkg15"),
        Entry::file("etc/new", "new\n"),
    ]);
    b.push(top.clone());
    stability_check(&a, &b, &[top], "one more layer on top");
}

#[test]
fn layer_stability_whiteout_only_top_layer() {
    let (a, _) = stability_pair();
    let mut b = a.clone();
    b.pop();
    let mut base = b.clone();
    base.push(LayerSpec::with(vec![Entry::file("etc/marker", "m")]));
    b.push(LayerSpec::with(vec![
        Entry::whiteout("pkg07"),
        Entry::whiteout("pkg08/file02"),
        Entry::file("etc/marker", "m"),
    ]));
    let top = b[b.len() - 1..].to_vec();
    stability_check(&base, &b, &top, "whiteout-only top layer");
}

/// Hash-indexed directories in the shared layers stay byte-identical: their
/// leaves are ordered by the filesystem's hash seed, which therefore comes
/// from the base layer alone. Here the shared layers are mostly directory
/// blocks (three directories of 15 000 names, about 2 MiB of them), so a
/// seed that changed with the top layer would put B over the bound.
#[test]
fn layer_stability_with_big_directories() {
    let mut base = LayerSpec::new();
    for d in [
        "usr/share/locale",
        "usr/lib/python3/dist-packages",
        "var/cache/many",
    ] {
        for part in d.split('/').scan(String::new(), |acc, p| {
            if !acc.is_empty() {
                acc.push('/');
            }
            acc.push_str(p);
            Some(acc.clone())
        }) {
            if !base.entries.iter().any(|e| e.path == part.as_bytes()) {
                base.add(Entry::dir(part));
            }
        }
        for i in 0..15_000u32 {
            base.add(Entry::file(
                format!("{d}/entry-with-a-longish-name-{i:06}"),
                "",
            ));
        }
    }
    let top = |seed| {
        LayerSpec::with(vec![
            Entry::dir("app"),
            Entry::file("app/main", Content::Pattern { size: 8192, seed }),
            Entry::file("usr/share/locale/entry-added-by-the-top-layer", "x"),
        ])
    };
    let a = vec![base.clone(), top(1)];
    let b = vec![base, top(2)];
    stability_check(&a, &b, &b[1..], "shared big directories");
}
