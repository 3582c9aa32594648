//! Cross-checks of the image writers and the model with independent tools:
//! skopeo must accept our OCI layouts and docker archives (and reject the
//! tampered ones), umoci must unpack them into exactly the model's tree.
#![allow(clippy::unwrap_used, missing_docs)]

use lode_testkit::compare::{diff_trees, CompareOptions};
use lode_testkit::fixtures::{self, rich_stack, RichOptions};
use lode_testkit::model::NodeKind;
use lode_testkit::read_mount::read_tree;
use lode_testkit::*;
use std::path::Path;
use std::process::{Command, Output};

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn run(cmd: &mut Command) -> Output {
    let o = cmd.output().unwrap();
    if !o.status.success() {
        panic!(
            "{cmd:?} failed: {}\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    o
}

fn small_stack() -> Vec<LayerSpec> {
    let mut s = rich_stack(RichOptions {
        big_dir_entries: 30,
        huge_file: false,
    });
    // Keep the big generated files out: umoci + copy are slowish.
    for l in &mut s {
        l.entries.retain(|e| !e.path.starts_with(b"data/"));
    }
    s
}

/// umoci unpack as root (preserving owners, devices, xattrs) and compare
/// with the model.
fn umoci_unpack_matches_model(layout: &Path, reference: &str, layers: &[LayerSpec]) {
    let work = tempfile::tempdir().unwrap();
    let bundle = work.path().join("bundle");
    run(Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:{reference}", layout.display()))
        .arg(&bundle));
    let got = read_tree(&bundle.join("rootfs")).unwrap();
    let mut expected = Model::apply_all(layers).unwrap();
    // umoci gives directories the unpack time as mtime and its rootfs dir
    // its own metadata: skip directory mtimes and the root.
    let mut got = got;
    for t in [&mut expected, &mut got] {
        t.remove(&b"/"[..]);
    }
    // umoci creates implicit parents with mkdir(2), which inherits the
    // setgid bit and group of a setgid parent; the model (like lode) gives
    // them 0755 root:root. Accept that difference only.
    for (p, e) in expected.iter_mut() {
        if let Some(a) = got.get(p) {
            let implicit = e.kind == NodeKind::Dir
                && e.mode == 0o40755
                && e.uid == 0
                && e.gid == 0
                && e.mtime == 0;
            if implicit && a.mode == 0o42755 {
                e.mode = a.mode;
                e.gid = a.gid;
            }
        }
    }
    let diffs = diff_trees(
        &expected,
        &got,
        CompareOptions {
            expect_lost_found: false,
            dir_mtimes: false,
            expect_run_settings: false,
        },
    );
    assert!(
        diffs.is_empty(),
        "umoci unpack differs from the model:\n  {}",
        diffs.join("\n  ")
    );
}

#[test]
fn oci_layout_accepted_by_skopeo_and_umoci() {
    if !have("skopeo") || !have("umoci") || !is_root() {
        eprintln!("SKIP: needs skopeo, umoci and root");
        return;
    }
    let layers = small_stack();
    for comps in [
        vec![Compression::Gzip],
        vec![Compression::None, Compression::Zstd, Compression::Gzip],
    ] {
        let d = tempfile::tempdir().unwrap();
        let layout = d.path().join("oci");
        let info = write_oci_layout(&layout, &layers, &comps, Some("v1")).unwrap();
        let o = run(Command::new("skopeo")
            .arg("inspect")
            .arg(format!("oci:{}:v1", layout.display())));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let got: Vec<String> = v["Layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l.as_str().unwrap().to_string())
            .collect();
        let want: Vec<String> = info.layers.iter().map(|l| l.digest.clone()).collect();
        assert_eq!(got, want);
        // skopeo verifies every blob digest while copying.
        let out = d.path().join("copy");
        run(Command::new("skopeo")
            .arg("copy")
            .arg(format!("oci:{}:v1", layout.display()))
            .arg(format!("oci:{}:v1", out.display())));
        if comps.contains(&Compression::Zstd) {
            // umoci 0.4.7 predates zstd layers.
            continue;
        }
        umoci_unpack_matches_model(&layout, "v1", &layers);
    }
}

#[test]
fn docker_archives_accepted_by_skopeo_and_umoci() {
    if !have("skopeo") || !have("umoci") || !is_root() {
        eprintln!("SKIP: needs skopeo, umoci and root");
        return;
    }
    let layers = small_stack();
    for layout_kind in [DockerLayout::Legacy, DockerLayout::Blobs] {
        let d = tempfile::tempdir().unwrap();
        let archive = d.path().join("img.tar");
        let info = write_docker_archive_with(
            &archive,
            &layers,
            &DockerOptions {
                repo_tags: vec!["example.com/lode/test:1".into()],
                layout: layout_kind,
                ..DockerOptions::default()
            },
        )
        .unwrap();
        let o = run(Command::new("skopeo")
            .arg("inspect")
            .arg(format!("docker-archive:{}", archive.display())));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["Layers"].as_array().unwrap().len(), layers.len());
        // Copy into an OCI layout (skopeo checks diff_ids against the config)
        // and unpack with umoci.
        let oci = d.path().join("oci");
        run(Command::new("skopeo")
            .arg("copy")
            .arg(format!(
                "docker-archive:{}:example.com/lode/test:1",
                archive.display()
            ))
            .arg(format!("oci:{}:copied", oci.display())));
        let idx: serde_json::Value =
            serde_json::from_slice(&std::fs::read(oci.join("index.json")).unwrap()).unwrap();
        assert!(idx["manifests"].as_array().unwrap().len() == 1);
        let _ = info;
        umoci_unpack_matches_model(&oci, "copied", &layers);
    }
}

#[test]
fn tampered_images_rejected_by_skopeo() {
    if !have("skopeo") {
        eprintln!("SKIP: needs skopeo");
        return;
    }
    let layers = vec![
        LayerSpec::with(vec![Entry::file(
            "a",
            Content::Pattern {
                size: 100_000,
                seed: 1,
            },
        )]),
        LayerSpec::with(vec![Entry::file(
            "b",
            Content::Pattern {
                size: 100_000,
                seed: 2,
            },
        )]),
    ];
    let cases = [
        (Tamper::WrongBlobDigest(1), Compression::Gzip),
        (Tamper::WrongBlobDigest(1), Compression::Zstd),
        (Tamper::WrongBlobDigest(1), Compression::None),
        (Tamper::MissingBlob(1), Compression::Gzip),
    ];
    for (tamper, comp) in cases {
        let d = tempfile::tempdir().unwrap();
        let layout = d.path().join("oci");
        write_oci_layout_with(
            &layout,
            &layers,
            &OciOptions {
                compression: vec![comp],
                ref_name: Some("t".into()),
                tamper: tamper.clone(),
            },
        )
        .unwrap();
        let o = Command::new("skopeo")
            .arg("copy")
            .arg(format!("oci:{}:t", layout.display()))
            .arg(format!("oci:{}:t", d.path().join("copy").display()))
            .output()
            .unwrap();
        assert!(!o.status.success(), "skopeo accepted {tamper:?} {comp:?}");
    }
    // Truncated / corrupt blobs have matching digests: skopeo copies them
    // verbatim but they do not decompress.
    for (tamper, comp) in [
        (Tamper::TruncatedBlob(1), Compression::Gzip),
        (Tamper::CorruptBlob(1), Compression::Gzip),
        (Tamper::TruncatedBlob(1), Compression::Zstd),
        (Tamper::CorruptBlob(1), Compression::Zstd),
    ] {
        let d = tempfile::tempdir().unwrap();
        let layout = d.path().join("oci");
        let info = write_oci_layout_with(
            &layout,
            &layers,
            &OciOptions {
                compression: vec![comp],
                ref_name: Some("t".into()),
                tamper: tamper.clone(),
            },
        )
        .unwrap();
        let blob = std::fs::read(image::oci_blob_path(&layout, &info.layers[1].digest)).unwrap();
        assert_eq!(image::sha256_digest(&blob), info.layers[1].digest);
        let ok = match comp {
            Compression::Gzip => {
                let mut s = Vec::new();
                std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&blob[..]), &mut s)
                    .is_ok()
            }
            _ => zstd::decode_all(&blob[..]).is_ok(),
        };
        assert!(!ok, "{tamper:?} {comp:?} still decompresses");
    }
}

#[test]
fn wrong_diff_id_is_detected_by_skopeo_docker_archive() {
    if !have("skopeo") {
        eprintln!("SKIP: needs skopeo");
        return;
    }
    let layers = vec![
        LayerSpec::with(vec![Entry::file("a", "a")]),
        LayerSpec::with(vec![Entry::file("b", "b")]),
    ];
    let d = tempfile::tempdir().unwrap();
    let archive = d.path().join("img.tar");
    write_docker_archive_with(
        &archive,
        &layers,
        &DockerOptions {
            tamper: Tamper::WrongDiffId(1),
            ..DockerOptions::default()
        },
    )
    .unwrap();
    let o = Command::new("skopeo")
        .arg("copy")
        .arg(format!("docker-archive:{}", archive.display()))
        .arg(format!("oci:{}:t", d.path().join("copy").display()))
        .output()
        .unwrap();
    assert!(
        !o.status.success(),
        "skopeo accepted a docker archive with a wrong diff_id"
    );
}

/// The model and the random-stack generator agree with umoci (an
/// independent OCI implementation) on random valid stacks.
#[test]
fn model_agrees_with_umoci_on_random_stacks() {
    use proptest::test_runner::{Config, TestCaseError, TestRunner};
    if !have("umoci") || !is_root() {
        eprintln!("SKIP: needs umoci and root");
        return;
    }
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(24);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&gen::arb_stack(), |s| {
            let d = tempfile::tempdir().unwrap();
            let layout = d.path().join("oci");
            // umoci 0.4.7 has no zstd support.
            let comps: Vec<Compression> = s
                .compression
                .iter()
                .map(|c| {
                    if *c == Compression::Zstd {
                        Compression::Gzip
                    } else {
                        *c
                    }
                })
                .collect();
            write_oci_layout(&layout, &s.layers, &comps, Some("r")).unwrap();
            let r =
                std::panic::catch_unwind(|| umoci_unpack_matches_model(&layout, "r", &s.layers));
            if let Err(e) = r {
                let msg = e.downcast_ref::<String>().cloned().unwrap_or_default();
                return Err(TestCaseError::fail(format!(
                    "{msg}\nlayers: {:#?}",
                    s.layers
                )));
            }
            Ok(())
        })
        .unwrap();
}

/// Our PAX records with `\n` inside values (binary xattrs, long names) are
/// valid: umoci (Go archive/tar) unpacks them to exactly the model.
#[test]
fn pax_values_with_newlines_accepted_by_umoci() {
    if !have("umoci") || !is_root() {
        eprintln!("SKIP: needs umoci and root");
        return;
    }
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
    let d = tempfile::tempdir().unwrap();
    let layout = d.path().join("oci");
    write_oci_layout(&layout, &layers, &[Compression::Gzip], Some("nl")).unwrap();
    umoci_unpack_matches_model(&layout, "nl", &layers);
}
