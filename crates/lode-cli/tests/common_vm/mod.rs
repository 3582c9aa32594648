//! Shared helpers of the micro-VM tests: the busybox image they boot.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};

/// Guest kernel and initramfs, prepared once and shared across runs
/// (preparing downloads a kernel package).
pub fn vm_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("lode-vm")
}

/// Writes an OCI layout to `dir` with one layer: a static busybox as
/// /bin/sh and friends, and /etc/msg.
pub fn write_image(dir: &Path) {
    lode_testkit::vm_image::write_busybox_image(
        dir,
        &lode_testkit::vm_image::BusyboxImage {
            applets: &["sh", "cat", "echo", "sync", "ls"],
            dirs: &[],
            files: &[("etc/msg", 0o644, b"hello from the image\n")],
            config: serde_json::json!({}),
        },
    );
}
