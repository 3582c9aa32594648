//! Bad inputs: `lode flatten` must exit non-zero with exactly one clear
//! stderr line naming the layer (index or digest) and the entry where there
//! is one, never panic, and leave neither OUT nor temp files behind.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use common::{lode_bin, tmp};
use lode_testkit::*;
use std::path::Path;

/// Two good layers around the bad one; the bad one is at index 1.
fn stack_with(bad: LayerSpec) -> Vec<LayerSpec> {
    vec![
        LayerSpec::with(vec![
            Entry::dir("etc"),
            Entry::file("etc/passwd", "root:x:0:0::/root:/bin/sh\n"),
            Entry::dir("bin"),
            Entry::file(
                "bin/sh",
                Content::Pattern {
                    size: 200_000,
                    seed: 1,
                },
            )
            .mode(0o755),
            Entry::dir("real"),
            Entry::symlink("alias", "real"),
            Entry::symlink("lnk", "/etc"),
        ]),
        bad,
        LayerSpec::with(vec![Entry::file("etc/late", "late\n")]),
    ]
}

/// Run lode on `source` into an empty directory and check the failure
/// contract.
fn expect_failure(
    what: &str,
    source: String,
    layer: Option<usize>,
    ids: &[&str],
    mention: &[&str],
) {
    let out_dir = tmp();
    let out = out_dir.path().join("out.ext4");
    let o = Flatten::new(lode_bin(), source.clone(), &out).output();
    let v = bad_input_violations(&o, &out, layer, ids, mention);
    eprintln!(
        "{what}: stderr: {}",
        String::from_utf8_lossy(&o.stderr).trim_end()
    );
    assert!(
        v.is_empty(),
        "{what}: `lode flatten {source}` broke the failure contract:\n  - {}\nexit: {}\nstderr:\n{}\nstdout:\n{}",
        v.join("\n  - "),
        o.status,
        String::from_utf8_lossy(&o.stderr),
        String::from_utf8_lossy(&o.stdout)
    );
}

/// The bad layer must be one the model rejects too (sanity check of the
/// test itself), at layer 1.
fn model_rejects(layers: &[LayerSpec], kind: ModelErrorKind) {
    let e = Model::apply_all(layers).expect_err("model accepted a bad stack");
    assert_eq!((e.layer, e.kind), (1, kind));
}

fn oci_case(what: &str, layers: &[LayerSpec], comp: Compression, tamper: Tamper, mention: &[&str]) {
    let d = tmp();
    let layout = d.path().join("oci");
    let info = write_oci_layout_with(
        &layout,
        layers,
        &OciOptions {
            compression: vec![comp],
            ref_name: Some("latest".into()),
            tamper,
        },
    )
    .unwrap();
    let ids = [
        info.layers[1].digest.as_str(),
        info.layers[1].diff_id.as_str(),
    ];
    expect_failure(
        what,
        oci_source(&layout, Some("latest")),
        Some(1),
        &ids,
        mention,
    );
}

fn docker_case(what: &str, layers: &[LayerSpec], tamper: Tamper, mention: &[&str]) {
    let d = tmp();
    let archive = d.path().join("img.tar");
    let info = write_docker_archive_with(
        &archive,
        layers,
        &DockerOptions {
            tamper,
            ..DockerOptions::default()
        },
    )
    .unwrap();
    let member = info.layers[1].archive_path.clone().unwrap();
    let id = member.split('/').next().unwrap().to_string();
    let ids = [
        info.layers[1].digest.as_str(),
        info.layers[1].diff_id.as_str(),
        member.as_str(),
        id.as_str(),
    ];
    expect_failure(what, docker_source(&archive, None), Some(1), &ids, mention);
}

fn entry_case(what: &str, bad: LayerSpec, kind: ModelErrorKind, mention: &[&str]) {
    let layers = stack_with(bad);
    model_rejects(&layers, kind);
    oci_case(
        &format!("{what} (oci, gzip)"),
        &layers,
        Compression::Gzip,
        Tamper::None,
        mention,
    );
    docker_case(
        &format!("{what} (docker-archive)"),
        &layers,
        Tamper::None,
        mention,
    );
}

#[test]
fn path_traversal_dotdot() {
    entry_case(
        "`../evil`",
        LayerSpec::with(vec![Entry::file("../evil", "x")]),
        ModelErrorKind::Escapes,
        &["evil"],
    );
}

#[test]
fn path_traversal_nested_dotdot() {
    entry_case(
        "`etc/../../escaped`",
        LayerSpec::with(vec![
            Entry::file("ok", "ok"),
            Entry::file("etc/../../escaped", "x"),
        ]),
        ModelErrorKind::Escapes,
        &["escaped"],
    );
}

#[test]
fn path_traversal_dotdot_hardlink_target() {
    entry_case(
        "hard link to `../../etc/shadow`",
        LayerSpec::with(vec![Entry::hardlink("stolen", "../../etc/shadow")]),
        ModelErrorKind::Escapes,
        &["stolen"],
    );
}

#[test]
fn parent_is_symlink_from_lower_layer() {
    entry_case(
        "file under symlink `lnk` (-> /etc) from layer 0",
        LayerSpec::with(vec![Entry::file("lnk/passwd", "pwned")]),
        ModelErrorKind::ThroughSymlink,
        &["lnk/passwd"],
    );
}

#[test]
fn parent_is_relative_symlink_to_dir() {
    entry_case(
        "file under symlink `alias` (-> real)",
        LayerSpec::with(vec![Entry::file("alias/inside", "x")]),
        ModelErrorKind::ThroughSymlink,
        &["alias/inside"],
    );
}

#[test]
fn parent_is_symlink_in_same_layer() {
    entry_case(
        "symlink then file through it in one layer",
        LayerSpec::with(vec![
            Entry::symlink("sneaky", "/"),
            Entry::dir("sneaky/tmp"),
            Entry::file("sneaky/tmp/x", "x"),
        ]),
        ModelErrorKind::ThroughSymlink,
        &["sneaky/tmp"],
    );
}

#[test]
fn hardlink_to_missing_target() {
    entry_case(
        "hard link to a missing file",
        LayerSpec::with(vec![Entry::hardlink(
            "bin/hardlink-to-nothing",
            "bin/missing-target",
        )]),
        ModelErrorKind::MissingLinkTarget,
        &["hardlink-to-nothing"],
    );
}

#[test]
fn hardlink_to_file_later_in_same_layer() {
    entry_case(
        "hard link before its target",
        LayerSpec::with(vec![
            Entry::hardlink("bin/early-link", "bin/late-target"),
            Entry::file("bin/late-target", "x"),
        ]),
        ModelErrorKind::MissingLinkTarget,
        &["early-link"],
    );
}

#[test]
fn hardlink_to_whited_out_file() {
    // The whiteout applies to the lower layer, so the target is gone.
    entry_case(
        "hard link to a file whited out in the same layer",
        LayerSpec::with(vec![
            Entry::whiteout("etc/passwd"),
            Entry::hardlink("etc/passwd-link", "etc/passwd"),
        ]),
        ModelErrorKind::MissingLinkTarget,
        &["passwd-link"],
    );
}

#[test]
fn duplicate_entries_in_one_layer() {
    entry_case(
        "the same file twice",
        LayerSpec::with(vec![
            Entry::file("dup/file", "1"),
            Entry::file("dup/file", "2"),
        ]),
        ModelErrorKind::Duplicate,
        &["dup/file"],
    );
}

#[test]
fn duplicate_entries_differently_spelled() {
    entry_case(
        "`./dup2/x` and `dup2//x`",
        LayerSpec::with(vec![
            Entry::file("./dup2/x", "1"),
            Entry::symlink("dup2//x", "y"),
        ]),
        ModelErrorKind::Duplicate,
        &["x"],
    );
}

#[test]
fn blob_digest_mismatch() {
    let layers = stack_with(LayerSpec::with(vec![Entry::file(
        "f",
        Content::Pattern {
            size: 100_000,
            seed: 5,
        },
    )]));
    for comp in [Compression::Gzip, Compression::Zstd, Compression::None] {
        oci_case(
            &format!("blob digest mismatch ({comp:?})"),
            &layers,
            comp,
            Tamper::WrongBlobDigest(1),
            &[],
        );
    }
}

#[test]
fn diff_id_mismatch() {
    let layers = stack_with(LayerSpec::with(vec![Entry::file(
        "f",
        Content::Pattern {
            size: 100_000,
            seed: 5,
        },
    )]));
    for comp in [Compression::Gzip, Compression::Zstd, Compression::None] {
        oci_case(
            &format!("diff_id mismatch ({comp:?})"),
            &layers,
            comp,
            Tamper::WrongDiffId(1),
            &[],
        );
    }
    docker_case(
        "diff_id mismatch (docker-archive)",
        &layers,
        Tamper::WrongDiffId(1),
        &[],
    );
}

#[test]
fn truncated_compression() {
    let layers = stack_with(LayerSpec::with(vec![Entry::file(
        "f",
        Content::Pattern {
            size: 300_000,
            seed: 5,
        },
    )]));
    for comp in [Compression::Gzip, Compression::Zstd, Compression::None] {
        oci_case(
            &format!("truncated blob ({comp:?})"),
            &layers,
            comp,
            Tamper::TruncatedBlob(1),
            &[],
        );
    }
    docker_case(
        "truncated layer (docker-archive)",
        &layers,
        Tamper::TruncatedBlob(1),
        &[],
    );
}

#[test]
fn corrupt_compression() {
    let layers = stack_with(LayerSpec::with(vec![Entry::file(
        "f",
        Content::Pattern {
            size: 300_000,
            seed: 5,
        },
    )]));
    for comp in [Compression::Gzip, Compression::Zstd] {
        oci_case(
            &format!("corrupt blob ({comp:?})"),
            &layers,
            comp,
            Tamper::CorruptBlob(1),
            &[],
        );
    }
}

#[test]
fn unsupported_media_type() {
    let layers = stack_with(LayerSpec::with(vec![Entry::file("f", "x")]));
    for mt in [
        "application/vnd.oci.image.layer.v1.tar+bzip2",
        "application/vnd.example.unknown.layer",
    ] {
        oci_case(
            &format!("media type {mt}"),
            &layers,
            Compression::None,
            Tamper::MediaType(1, mt.into()),
            &[],
        );
    }
}

#[test]
fn missing_layer_blob() {
    let layers = stack_with(LayerSpec::with(vec![Entry::file("f", "x")]));
    oci_case(
        "missing blob",
        &layers,
        Compression::Gzip,
        Tamper::MissingBlob(1),
        &[],
    );
    docker_case("missing layer.tar", &layers, Tamper::MissingBlob(1), &[]);
}

/// Failure must not clobber or leave anything next to an OUT that already
/// exists... at least never leave temp files; an existing OUT may be kept.
#[test]
fn failure_leaves_no_temp_files_next_to_existing_files() {
    let layers = stack_with(LayerSpec::with(vec![Entry::file("../evil", "x")]));
    let d = tmp();
    let layout = d.path().join("oci");
    write_oci_layout(&layout, &layers, &[Compression::Gzip], None).unwrap();
    let out_dir = tmp();
    std::fs::write(out_dir.path().join("unrelated"), "keep me").unwrap();
    let out = out_dir.path().join("out.ext4");
    let o = Flatten::new(lode_bin(), oci_source(&layout, None), &out).output();
    assert!(!o.status.success());
    assert!(!Path::new(&out).exists());
    let names: Vec<String> = std::fs::read_dir(out_dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["unrelated"], "leftovers after failure");
    assert_eq!(
        std::fs::read(out_dir.path().join("unrelated")).unwrap(),
        b"keep me"
    );
}

#[test]
fn nonexistent_sources() {
    let d = tmp();
    for src in [
        format!("oci:{}", d.path().join("nope").display()),
        format!("docker-archive:{}", d.path().join("nope.tar").display()),
        "bogus-transport:/x".to_string(),
    ] {
        expect_failure(&format!("source {src}"), src.clone(), None, &[], &[]);
    }
    // A ref that is not in the layout.
    let layout = d.path().join("oci");
    write_oci_layout(
        &layout,
        &[LayerSpec::with(vec![Entry::file("a", "a")])],
        &[Compression::Gzip],
        Some("v1"),
    )
    .unwrap();
    expect_failure(
        "unknown ref",
        oci_source(&layout, Some("v2")),
        None,
        &[],
        &["v2"],
    );
}

/// A flatten SIGKILLed mid-run leaves its temp file (nothing can remove it);
/// the next flatten of the same OUT removes it (its writer's lock is gone)
/// and succeeds, leaving only OUT. The layer blob is a FIFO, so the first
/// run is stopped for sure while it is writing.
#[test]
fn a_killed_flatten_leaves_a_temp_file_the_next_run_removes() {
    let layers = vec![LayerSpec::with(vec![Entry::file("f", "data")])];
    let d = tmp();
    let layout = d.path().join("oci");
    let info = write_oci_layout(&layout, &layers, &[Compression::None], None).unwrap();
    let blob = lode_testkit::image::oci_blob_path(&layout, &info.layers[0].digest);
    let saved = d.path().join("blob");
    std::fs::rename(&blob, &saved).unwrap();
    assert!(std::process::Command::new("mkfifo")
        .arg(&blob)
        .status()
        .unwrap()
        .success());
    let out_dir = tmp();
    let out = out_dir.path().join("out.ext4");
    let mut victim = std::process::Command::new(lode_bin())
        .arg("flatten")
        .arg(oci_source(&layout, None))
        .arg("-o")
        .arg(&out)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let temps = || -> Vec<String> {
        std::fs::read_dir(out_dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".lode-tmp"))
            .collect()
    };
    let t0 = std::time::Instant::now();
    while temps().is_empty() {
        assert!(
            victim.try_wait().unwrap().is_none(),
            "flatten ended before writing"
        );
        assert!(t0.elapsed().as_secs() < 60, "no temp file appeared");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    victim.kill().unwrap();
    victim.wait().unwrap();
    assert_eq!(temps().len(), 1, "the killed run's temp file");
    assert!(!out.exists());

    // A temp file whose writer is alive (it holds the lock) must survive.
    let live = out_dir.path().join(".out.ext4.live01.lode-tmp");
    let live_file = std::fs::File::create(&live).unwrap();
    live_file.lock().unwrap();

    std::fs::remove_file(&blob).unwrap();
    std::fs::rename(&saved, &blob).unwrap();
    Flatten::new(lode_bin(), oci_source(&layout, None), &out).run_ok();
    let mut names: Vec<String> = std::fs::read_dir(out_dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [".out.ext4.live01.lode-tmp", "out.ext4"],
        "the stale temp file was kept, or a live one removed"
    );
}
