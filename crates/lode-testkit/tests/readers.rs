//! Self-test of the ext4 readers and the comparator, independent of lode:
//! umoci unpacks a stack, `mkfs.ext4 -d` turns the rootfs into an image,
//! and both readers must see exactly the model (directory mtimes aside,
//! which umoci does not preserve). Then deliberate corruptions of the
//! expectation must be reported.
#![allow(clippy::unwrap_used, missing_docs)]

use lode_testkit::compare::{diff_trees, CompareOptions};
use lode_testkit::fixtures::{rich_stack, RichOptions};
use lode_testkit::read_ext4::read_ext4_view_lenient;
use lode_testkit::*;
use std::process::Command;

fn have(tool: &str, arg: &str) -> bool {
    Command::new(tool).arg(arg).output().is_ok()
}

#[test]
fn readers_see_what_mkfs_wrote() {
    if !have("umoci", "--version") || !have("mkfs.ext4", "-V") || !is_root() {
        eprintln!("SKIP: needs umoci, mkfs.ext4 and root");
        return;
    }
    let mut layers = rich_stack(RichOptions {
        big_dir_entries: 300,
        huge_file: false,
    });
    // mkfs.ext4 -d (e2fsprogs 1.47.0) truncates post-2038 mtimes (it does
    // not set the epoch bits): keep them out of this test.
    for l in &mut layers {
        for e in &mut l.entries {
            if e.meta.mtime >= 1 << 31 {
                e.meta.mtime = (1 << 31) - 1;
            }
        }
    }
    let d = tempfile::tempdir().unwrap();
    let layout = d.path().join("oci");
    write_oci_layout(&layout, &layers, &[Compression::Gzip], Some("r")).unwrap();
    let bundle = d.path().join("bundle");
    let st = Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:r", layout.display()))
        .arg(&bundle)
        .status()
        .unwrap();
    assert!(st.success());
    let img = d.path().join("img.ext4");
    let o = Command::new("mkfs.ext4")
        .args([
            "-q",
            "-F",
            "-b",
            "4096",
            "-I",
            "256",
            "-O",
            "^has_journal",
            "-E",
            "root_owner=0:0",
            "-d",
        ])
        .arg(bundle.join("rootfs"))
        .arg(&img)
        .arg("512M")
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "mkfs: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_e2fsck_clean(&img);

    let mut expected = Model::apply_all(&layers).unwrap();
    // mkfs.ext4 -d copies hard-linked symlinks as separate inodes.
    for n in expected.values_mut() {
        if n.kind == NodeKind::Symlink {
            n.nlink = None;
            n.link_group = None;
        }
    }
    // Root metadata comes from umoci's rootfs dir: not compared.
    expected.remove(&b"/"[..]);
    let opts = CompareOptions {
        expect_lost_found: true,
        dir_mtimes: false,
        expect_run_settings: false,
    };

    let mut via_mount = read_via_mount(&img).unwrap();
    via_mount.remove(&b"/"[..]);
    let exp_m = expected.clone();
    let diffs = diff_trees(&exp_m, &via_mount, opts);
    assert!(
        diffs.is_empty(),
        "loop mount vs model:\n  {}",
        diffs.join("\n  ")
    );

    let r = read_ext4_view_lenient(&img).unwrap();
    let mut via_view = r.tree;
    via_view.remove(&b"/"[..]);
    let exp_v = expected.clone();
    assert!(r.unreadable.is_empty(), "{:?}", r.unreadable);
    let diffs = diff_trees(&exp_v, &via_view, opts);
    assert!(
        diffs.is_empty(),
        "ext4-view vs model:\n  {}",
        diffs.join("\n  ")
    );

    // Hard-link identity is visible to both readers.
    let b = &via_mount[&b"/usr/bin/b"[..]];
    let dd = &via_mount[&b"/usr/bin/d"[..]];
    assert_eq!(b.link_group, dd.link_group);
    assert_eq!(b.nlink, Some(2));
    assert_eq!(
        via_view[&b"/usr/bin/b"[..]].link_group,
        via_view[&b"/usr/bin/d"[..]].link_group
    );
    assert_ne!(
        via_view[&b"/usr/bin/b"[..]].link_group,
        via_view[&b"/usr/bin/a"[..]].link_group
    );

    // Every kind of deviation is reported.
    let mut wrong = exp_m.clone();
    let g = |t: &mut Tree, p: &str| t.get_mut(p.as_bytes()).unwrap().clone();
    let mut n = g(&mut wrong, "/usr/bin/passwd");
    n.mode ^= 0o4000;
    wrong.insert(b"/usr/bin/passwd".to_vec(), n);
    let mut n = g(&mut wrong, "/etc/passwd");
    n.sha256 = Some([0; 32]);
    wrong.insert(b"/etc/passwd".to_vec(), n);
    let mut n = g(&mut wrong, "/usr/bin/ping");
    n.xattrs
        .as_mut()
        .unwrap()
        .insert("user.extra".into(), b"x".to_vec());
    wrong.insert(b"/usr/bin/ping".to_vec(), n);
    let mut n = g(&mut wrong, "/dev/sda");
    n.rdev = Some((8, 1));
    wrong.insert(b"/dev/sda".to_vec(), n);
    let mut n = g(&mut wrong, "/etc/mtab");
    n.symlink_target = Some(b"/proc/mounts".to_vec());
    n.size = 12;
    wrong.insert(b"/etc/mtab".to_vec(), n);
    let mut n = g(&mut wrong, "/usr/bin/a");
    n.link_group = wrong[&b"/usr/bin/b"[..]].link_group;
    wrong.insert(b"/usr/bin/a".to_vec(), n);
    let mut n = g(&mut wrong, "/owners/big-ids");
    n.uid = 1;
    wrong.insert(b"/owners/big-ids".to_vec(), n);
    wrong.remove(&b"/data/empty"[..]);
    let extra = wrong[&b"/etc/passwd"[..]].clone();
    wrong.insert(b"/etc/not-there".to_vec(), extra);
    let diffs = diff_trees(&wrong, &via_mount, opts);
    let text = diffs.join("\n");
    for needle in [
        "/usr/bin/passwd: mode",
        "/etc/passwd: content sha256",
        "/usr/bin/ping: xattrs",
        "/dev/sda: device",
        "/etc/mtab: symlink target",
        "hard link identity",
        "/owners/big-ids: owner",
        "/data/empty: unexpected",
        "/etc/not-there: missing",
    ] {
        assert!(
            text.contains(needle),
            "comparator did not report {needle:?}:\n{text}"
        );
    }
    layers.clear();
}
