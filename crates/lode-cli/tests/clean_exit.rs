//! Clean exits: `lode flatten`, `push` and `pull` stopped by SIGTERM or
//! SIGINT remove their temp files and exit with 128 + the signal and one
//! line saying so; what a SIGKILLed run leaves is swept by the next run.
//! (The cache node's own case is in `hostile_cache_node.rs`.)
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[path = "store_support/store_util.rs"]
mod util;

use lode_testkit::{oci_source, write_oci_layout, Compression, Entry, LayerSpec};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};
use util::*;

/// Waits until `ready` holds (the child still running), at most 120 s.
fn wait_for(child: &mut Child, what: &str, ready: impl Fn() -> bool) {
    let t = Instant::now();
    while !ready() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before {what}"
        );
        assert!(t.elapsed() < Duration::from_secs(120), "no {what} in 120 s");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Sends `sig` and returns the exit code and stderr (the test fails after 30 s).
fn stop(mut child: Child, sig: &str) -> (Option<i32>, String) {
    Command::new("kill")
        .args([&format!("-{sig}"), &child.id().to_string()])
        .status()
        .unwrap();
    let t = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!("no exit within 30 s of SIG{sig}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// An OCI layout whose only layer blob is a FIFO: a flatten of it blocks
/// while writing, for sure. Returns the layout and a function restoring the
/// real blob.
fn blocking_layout(dir: &Path) -> (PathBuf, impl Fn()) {
    let layout = dir.join("oci");
    let info = write_oci_layout(
        &layout,
        &[LayerSpec::with(vec![Entry::file("f", "data")])],
        &[Compression::None],
        None,
    )
    .unwrap();
    let blob = lode_testkit::image::oci_blob_path(&layout, &info.layers[0].digest);
    let saved = dir.join("blob");
    std::fs::rename(&blob, &saved).unwrap();
    assert!(Command::new("mkfifo")
        .arg(&blob)
        .status()
        .unwrap()
        .success());
    let restore = move || {
        let _ = std::fs::remove_file(&blob);
        std::fs::copy(&saved, &blob).unwrap();
    };
    (layout, restore)
}

/// Row: `lode flatten` stopped by SIGTERM or SIGINT used to leave its
/// `.lode-tmp` file. It now removes it, leaves no OUT, and exits 143 / 130.
#[test]
fn flatten_stopped_by_a_signal_leaves_nothing() {
    let w = World::local();
    let (layout, _restore) = blocking_layout(&w.work());
    let out_dir = w.work().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let out = out_dir.join("img.ext4");
    for (sig, code) in [("TERM", 143), ("INT", 130)] {
        let child = w
            .command(&[
                "flatten",
                &oci_source(&layout, None),
                "-o",
                out.to_str().unwrap(),
            ])
            .spawn()
            .unwrap();
        let mut child = child;
        wait_for(&mut child, "a temp file", || {
            names(&out_dir).iter().any(|n| n.ends_with(".lode-tmp"))
        });
        let (got, e) = stop(child, sig);
        assert_eq!(got, Some(code), "SIG{sig}: {e}");
        assert!(e.contains(&format!("interrupted by SIG{sig}")), "{e}");
        assert_eq!(e.trim_end().lines().count(), 1, "{e}");
        assert_eq!(
            names(&out_dir),
            Vec::<String>::new(),
            "SIG{sig}: left behind"
        );
    }
}

/// `lode push` of an OCI source stopped while it flattens: the image it was
/// flattening under `$LODE_HOME/tmp` is removed. A SIGKILLed push leaves it;
/// the next push removes it and succeeds.
#[test]
fn push_stopped_while_flattening_and_a_killed_push_swept() {
    let w = World::local();
    let (layout, restore) = blocking_layout(&w.work());
    let tmp = w.home.join("tmp");
    let src = oci_source(&layout, None);
    let args = [
        "push",
        src.as_str(),
        "--tenant",
        "t",
        "--name",
        "n",
        "--store",
        w.store.as_str(),
    ];
    let temps = || {
        names(&tmp)
            .into_iter()
            .filter(|n| n.ends_with(".lode-tmp"))
            .count()
    };
    let mut child = w.command(&args).spawn().unwrap();
    wait_for(&mut child, "a flattened image", || temps() > 0);
    let (got, e) = stop(child, "TERM");
    assert_eq!(got, Some(143), "{e}");
    assert_eq!(names(&tmp), Vec::<String>::new());

    let mut child = w.command(&args).spawn().unwrap();
    wait_for(&mut child, "a flattened image", || temps() > 0);
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(temps(), 1, "a killed push's image");
    restore();
    w.run_limit(&args, false, Duration::from_secs(120)).ok();
    assert_eq!(names(&tmp), Vec::<String>::new(), "the next push swept it");
}

/// A 256 MiB image of noise, pushed as `t/big`; returns its path.
fn big_image(w: &World) -> PathBuf {
    let src = w.work().join("big.img");
    write_noise_file(&src, 7, 256 << 20);
    src
}

/// `lode push` stopped while uploading: exit 143, and no half-written
/// object in the local store (running uploads finish whole or never start).
#[test]
fn push_stopped_while_uploading_leaves_no_partial_object() {
    let w = World::local();
    let src = big_image(&w);
    let src_arg = format!("ext4:{}", src.display());
    let args = [
        "push",
        &src_arg,
        "--tenant",
        "t",
        "--name",
        "big",
        "--store",
        &w.store,
        "--concurrency",
        "1",
    ];
    let mut child = w.command(&args).spawn().unwrap();
    wait_for(&mut child, "uploaded chunks", || w.chunk_files().len() >= 8);
    let (got, e) = stop(child, "TERM");
    assert_eq!(got, Some(143), "{e}");
    let staged: Vec<PathBuf> = files_under(w.store_dir())
        .into_iter()
        .filter(|p| p.to_string_lossy().contains('#'))
        .collect();
    assert_eq!(staged, Vec::<PathBuf>::new(), "half-written objects");
    // Nothing points at a manifest: the image does not exist yet.
    assert!(!w.store_dir().join("tenants/t/images/big").exists());
}

/// Row: `lode pull` stopped by SIGTERM removes its temp file (its 256 MiB
/// temp file used to stay) and leaves no OUT.
#[test]
fn pull_stopped_by_sigterm_leaves_nothing() {
    let w = World::local();
    let src = big_image(&w);
    w.push(&src, "t", "big");
    let out_dir = w.work().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let out = out_dir.join("big.img");
    let mut child = w
        .command(&[
            "pull",
            "big",
            "--tenant",
            "t",
            "--store",
            &w.store,
            "-o",
            out.to_str().unwrap(),
            "--concurrency",
            "1",
        ])
        .spawn()
        .unwrap();
    wait_for(&mut child, "a temp file", || {
        names(&out_dir).iter().any(|n| n.ends_with(".lode-tmp"))
    });
    let (got, e) = stop(child, "TERM");
    assert_eq!(got, Some(143), "{e}");
    assert!(e.contains("interrupted by SIGTERM"), "{e}");
    assert_eq!(names(&out_dir), Vec::<String>::new(), "left behind");
}
