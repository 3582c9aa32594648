//! Helpers of lode-ext4's integration tests (each test binary uses some).
#![allow(dead_code, clippy::unwrap_used)]

use lode_ext4::{Meta, Timestamp};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

/// `a/b/c` as the builder's path components.
pub fn p(s: &str) -> Vec<Vec<u8>> {
    s.split('/')
        .filter(|c| !c.is_empty())
        .map(|c| c.as_bytes().to_vec())
        .collect()
}

/// Root-owned metadata with `perm` and a fixed mtime.
pub fn meta(perm: u16) -> Meta {
    Meta {
        perm,
        uid: 0,
        gid: 0,
        mtime: Timestamp {
            secs: 1_700_000_000,
            nsec: 0,
        },
        xattrs: BTreeMap::new(),
    }
}

/// Runs `cmd`, which must succeed; its standard output.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("command runs");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `e2fsck -fn` finds nothing to fix in `img`.
pub fn fsck(img: &Path) {
    run(Command::new("e2fsck").arg("-fn").arg(img));
}
