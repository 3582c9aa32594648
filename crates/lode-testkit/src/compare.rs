//! Compares an expected [`Tree`] (from the model) with an observed one (from
//! a reader) and lists differences readably.

use crate::model::{NodeKind, Tree};
use std::collections::HashMap;

/// Path of the directory every lode image has besides the content.
pub const LOST_FOUND: &[u8] = b"/lost+found";

/// Render raw path bytes readably (non-UTF-8 bytes escaped).
pub fn show(p: &[u8]) -> String {
    match std::str::from_utf8(p) {
        Ok(s) if s.chars().all(|c| !c.is_control()) => s.to_string(),
        _ => p.escape_ascii().to_string(),
    }
}

/// The directory of the image's run settings, which the flatten adds
/// after the layers (`lode_flatten::runconfig`).
pub const RUN_SETTINGS_DIR: &[u8] = b"/.lode";
/// The run settings file itself.
pub const RUN_SETTINGS: &[u8] = b"/.lode/image.json";

fn in_lost_found(p: &[u8]) -> bool {
    p == LOST_FOUND || (p.starts_with(LOST_FOUND) && p.get(LOST_FOUND.len()) == Some(&b'/'))
}

/// Paths lode adds to every image that `opts` says to ignore:
/// `/lost+found` and the run settings.
fn lode_made(p: &[u8], opts: &CompareOptions) -> bool {
    (opts.expect_lost_found && in_lost_found(p))
        || (opts.expect_run_settings && (p == RUN_SETTINGS_DIR || p == RUN_SETTINGS))
}

/// What to compare.
#[derive(Clone, Copy, Debug)]
pub struct CompareOptions {
    /// Require `/lost+found` (directory, mode 0700) in the observed tree and
    /// ignore it otherwise.
    pub expect_lost_found: bool,
    /// Compare directory mtimes (implicit dirs are expected at mtime 0).
    pub dir_mtimes: bool,
    /// Require the run settings lode's flatten adds (`/.lode/image.json`)
    /// and ignore them otherwise (false for images other tools made).
    pub expect_run_settings: bool,
}

impl Default for CompareOptions {
    fn default() -> Self {
        CompareOptions {
            expect_lost_found: true,
            dir_mtimes: true,
            expect_run_settings: true,
        }
    }
}

/// Differences between `expected` and `actual`; empty if they match.
/// Fields the reader of `actual` could not see (`None`) are skipped.
pub fn diff_trees(expected: &Tree, actual: &Tree, opts: CompareOptions) -> Vec<String> {
    let mut diffs = Vec::new();
    let has_lf = actual.contains_key(LOST_FOUND);
    // The run settings' directory, unless the layers brought one.
    let has_run = opts.expect_run_settings
        && actual.contains_key(RUN_SETTINGS_DIR)
        && !expected.contains_key(RUN_SETTINGS_DIR);
    if opts.expect_run_settings {
        match actual.get(RUN_SETTINGS) {
            Some(n) if n.kind == NodeKind::File => {}
            _ => diffs.push("/.lode/image.json: missing (the image's run settings)".to_string()),
        }
    }
    if opts.expect_lost_found {
        match actual.get(LOST_FOUND) {
            None => diffs.push("/lost+found: missing".to_string()),
            Some(n) => {
                if n.kind != NodeKind::Dir || n.mode != 0o40700 {
                    diffs.push(format!(
                        "/lost+found: expected directory mode 040700, got {:?} {:06o}",
                        n.kind, n.mode
                    ));
                }
            }
        }
    }
    let mut group_e2a: HashMap<u64, u64> = HashMap::new();
    let mut group_a2e: HashMap<u64, u64> = HashMap::new();

    for (p, e) in expected {
        let Some(a) = actual.get(p) else {
            diffs.push(format!("{}: missing (expected {:?})", show(p), e.kind));
            continue;
        };
        let s = show(p);
        if e.kind != a.kind {
            diffs.push(format!(
                "{s}: kind: expected {:?}, got {:?}",
                e.kind, a.kind
            ));
            continue;
        }
        if e.mode != a.mode {
            diffs.push(format!(
                "{s}: mode: expected {:06o}, got {:06o}",
                e.mode, a.mode
            ));
        }
        if (e.uid, e.gid) != (a.uid, a.gid) {
            diffs.push(format!(
                "{s}: owner: expected {}:{}, got {}:{}",
                e.uid, e.gid, a.uid, a.gid
            ));
        }
        if e.mtime != a.mtime && (opts.dir_mtimes || e.kind != NodeKind::Dir) {
            diffs.push(format!("{s}: mtime: expected {}, got {}", e.mtime, a.mtime));
        }
        if matches!(e.kind, NodeKind::File | NodeKind::Symlink) && e.size != a.size {
            diffs.push(format!("{s}: size: expected {}, got {}", e.size, a.size));
        }
        if let (Some(es), Some(as_)) = (e.sha256, a.sha256) {
            if es != as_ {
                diffs.push(format!(
                    "{s}: content sha256: expected {}, got {}",
                    hex::encode(es),
                    hex::encode(as_)
                ));
            }
        }
        if e.kind == NodeKind::Symlink
            && a.symlink_target.is_some()
            && e.symlink_target != a.symlink_target
        {
            diffs.push(format!(
                "{s}: symlink target: expected {:?}, got {:?}",
                e.symlink_target.as_deref().map(show),
                a.symlink_target.as_deref().map(show)
            ));
        }
        if a.rdev.is_some() && e.rdev != a.rdev {
            diffs.push(format!(
                "{s}: device: expected {:?}, got {:?}",
                e.rdev, a.rdev
            ));
        }
        if let (Some(ex), Some(ax)) = (&e.xattrs, &a.xattrs) {
            if ex != ax {
                let show_x = |x: &crate::spec::Xattrs| {
                    x.iter()
                        .map(|(k, v)| format!("{}={}", k.escape_default(), v.escape_ascii()))
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                diffs.push(format!(
                    "{s}: xattrs: expected {{{}}}, got {{{}}}",
                    show_x(ex),
                    show_x(ax)
                ));
            }
        }
        if let (Some(en), Some(an)) = (e.nlink, a.nlink) {
            let en = if p == b"/" {
                en + u32::from(has_lf) + u32::from(has_run)
            } else {
                en
            };
            if en != an {
                diffs.push(format!("{s}: nlink: expected {en}, got {an}"));
            }
        }
        if let (Some(eg), Some(ag)) = (e.link_group, a.link_group) {
            if e.kind != NodeKind::Dir {
                if let Some(&prev) = group_e2a.get(&eg) {
                    if prev != ag {
                        diffs.push(format!("{s}: hard link identity: should share an inode with an earlier path (inode {prev}), has inode {ag}"));
                    }
                } else {
                    group_e2a.insert(eg, ag);
                }
                if let Some(&prev) = group_a2e.get(&ag) {
                    if prev != eg {
                        diffs.push(format!(
                            "{s}: hard link identity: shares inode {ag} with a path it should not"
                        ));
                    }
                } else {
                    group_a2e.insert(ag, eg);
                }
            }
        }
    }
    for (p, a) in actual {
        let ignored = lode_made(p, &opts);
        if !expected.contains_key(p) && !ignored {
            diffs.push(format!(
                "{}: unexpected {:?} (mode {:06o})",
                show(p),
                a.kind,
                a.mode
            ));
        }
    }
    diffs
}

/// Panic with a readable list (first 60) if the trees differ.
pub fn assert_trees_match(expected: &Tree, actual: &Tree, what: &str) {
    let d = diff_trees(expected, actual, CompareOptions::default());
    if !d.is_empty() {
        let n = d.len();
        let shown: Vec<&String> = d.iter().take(60).collect();
        panic!(
            "{what}: {n} difference(s) between model and image:\n  {}{}",
            shown
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join("\n  "),
            if n > 60 {
                format!("\n  ... and {} more", n - 60)
            } else {
                String::new()
            }
        );
    }
}
