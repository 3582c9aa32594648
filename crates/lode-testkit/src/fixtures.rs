//! Ready-made layer stacks shared by tests and benchmarks.

use crate::content::{Content, SparseRegion};
use crate::spec::{Entry, LayerSpec};

const MIB: u64 = 1024 * 1024;

/// A version-2 `security.capability` value with the effective bit set and
/// the given permitted capability mask (e.g. `1 << 13` = CAP_NET_RAW).
pub fn cap_v2(permitted: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(20);
    v.extend_from_slice(&0x0200_0001u32.to_le_bytes());
    v.extend_from_slice(&(permitted as u32).to_le_bytes());
    v.extend_from_slice(&0u32.to_le_bytes());
    v.extend_from_slice(&((permitted >> 32) as u32).to_le_bytes());
    v.extend_from_slice(&0u32.to_le_bytes());
    v
}

/// A 255-byte file name that is not UTF-8 (no `/`, no NUL).
pub fn long_non_utf8_name() -> Vec<u8> {
    let mut n = b"long-".to_vec();
    let mut i = 0u8;
    while n.len() < 255 {
        n.push(0x80 | (i % 0x7f)); // continuation bytes only: invalid UTF-8
        i = i.wrapping_add(1);
    }
    assert_eq!(n.len(), 255);
    n
}

/// Options for [`rich_stack`].
#[derive(Clone, Copy, Debug)]
pub struct RichOptions {
    /// Entries in the big directory.
    pub big_dir_entries: usize,
    /// Add a 600 MiB generated file (more than 4 extents of 128 MiB).
    pub huge_file: bool,
}

impl Default for RichOptions {
    fn default() -> Self {
        RichOptions {
            big_dir_entries: 20_000,
            huge_file: false,
        }
    }
}

/// Three layers exercising every entry type and layer semantic: special
/// modes, owners, xattrs (user, security.capability, trusted), devices,
/// FIFOs, symlinks (dangling, absolute, long), hard links (within and
/// across layers, link counts changed by later layers), long and non-UTF-8
/// names (PAX in layers 0 and 2, GNU long names in layer 1), a big
/// directory, sparse / all-zero / multi-MiB files, whiteouts, opaque
/// directories (incl. opaque + re-add in one layer), type changes.
pub fn rich_stack(o: RichOptions) -> Vec<LayerSpec> {
    let long = long_non_utf8_name();
    let mut l0 = LayerSpec::new();
    for d in [
        "bin", "etc", "usr", "usr/bin", "usr/lib", "var", "dev", "opt", "opt/sub", "srv", "data",
        "home",
    ] {
        l0.add(Entry::dir(d));
    }
    l0.add(Entry::dir("tmp").mode(0o1777));
    l0.add(Entry::dir("var/empty").mode(0o711).mtime(0));
    l0.add(
        Entry::dir("home/user")
            .mode(0o750)
            .owner(1000, 1000)
            .mtime(1_234_567_890),
    );
    l0.add(Entry::file("home/user/.profile", "export PS1='$ '\n").owner(1000, 1000));
    l0.add(Entry::dir("home/user/docs").owner(1000, 1000));
    l0.add(
        Entry::file(
            "home/user/docs/readme",
            Content::Pattern {
                size: 10_000,
                seed: 1,
            },
        )
        .owner(1000, 1000),
    );
    l0.add(
        Entry::file(
            "bin/sh",
            Content::Pattern {
                size: 100_000,
                seed: 2,
            },
        )
        .mode(0o755),
    );
    l0.add(Entry::symlink("bin/ls", "busybox")); // dangling
    l0.add(Entry::symlink("lib", "usr/lib"));
    l0.add(Entry::symlink("etc/mtab", "/proc/self/mounts"));
    l0.add(Entry::symlink("etc/long-link", "x/".repeat(150))); // 300 bytes: not a fast symlink
    l0.add(Entry::symlink("etc/edge-59", "e".repeat(59)));
    l0.add(Entry::symlink("etc/edge-60", "f".repeat(60)));
    l0.add(Entry::file("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"));
    l0.add(
        Entry::file("etc/shadow", "root:*:19000:0:99999:7:::\n")
            .mode(0o640)
            .owner(0, 42),
    );
    l0.add(
        Entry::file(
            "usr/bin/passwd",
            Content::Pattern {
                size: 5000,
                seed: 3,
            },
        )
        .mode(0o4755),
    );
    l0.add(
        Entry::file(
            "usr/bin/wall",
            Content::Pattern {
                size: 5000,
                seed: 4,
            },
        )
        .mode(0o2755)
        .owner(0, 5),
    );
    l0.add(Entry::file("usr/bin/sticky-exec", "x").mode(0o7777));
    l0.add(
        Entry::file(
            "usr/bin/ping",
            Content::Pattern {
                size: 7000,
                seed: 5,
            },
        )
        .mode(0o755)
        .xattr("security.capability", cap_v2(1 << 13))
        .xattr("user.comment", b"ping \x00\xff binary")
        .xattr("trusted.lode-test", b"t"),
    );
    l0.add(
        Entry::file("usr/bin/many-xattrs", "x")
            .xattr("user.b", vec![b'v'; 200])
            .xattr("user.c", b"3"),
    );
    l0.add(
        Entry::file(
            "usr/bin/a",
            Content::Pattern {
                size: 20_000,
                seed: 6,
            },
        )
        .mode(0o755)
        .owner(7, 8),
    );
    l0.add(Entry::hardlink("usr/bin/b", "usr/bin/a"));
    l0.add(Entry::hardlink("usr/bin/c", "./usr/bin/a"));
    l0.add(Entry::fifo("var/fifo").mode(0o600));
    // Hard links to non-regular files share the inode too.
    l0.add(Entry::fifo("var/fifo2").mode(0o640));
    l0.add(Entry::hardlink("var/fifo2-link", "var/fifo2"));
    l0.add(Entry::symlink("var/sym", "fifo2"));
    l0.add(Entry::hardlink("var/sym-link", "var/sym"));
    // Large xattrs that do not fit in the inode (external xattr blocks),
    // two of them identical (ext4 may share the block).
    l0.add(Entry::file("xattrs/big1", "1").xattr("user.big", vec![b'x'; 3000]));
    l0.add(Entry::file("xattrs/big2", "2").xattr("user.big", vec![b'x'; 3000]));
    l0.add(
        Entry::file("xattrs/big3", "3")
            .xattr("user.big", vec![b'y'; 2500])
            .xattr("user.small", "s"),
    );
    l0.add(Entry::dir("xattrs/dir").xattr("user.on-dir", vec![b'd'; 1500]));
    l0.add(Entry::file("xattrs/victim", "old victim"));
    l0.add(Entry::char_dev("dev/null", 1, 3).mode(0o666));
    l0.add(Entry::char_dev("dev/tty", 5, 0).mode(0o666).owner(0, 5));
    l0.add(Entry::char_dev("dev/wide", 300, 70_000));
    l0.add(Entry::block_dev("dev/sda", 8, 0));
    l0.add(Entry::block_dev("dev/nvme-wide", 259, 1_048_575));
    l0.add(Entry::file("owners/big-ids", "ids").owner(3_000_000, 4_000_000_000)); // implicit parent "owners"
    l0.add(Entry::file("times/zero", "").mtime(0));
    l0.add(Entry::file("times/y2038+", "").mtime(2_147_483_648));
    l0.add(Entry::file("times/y2100", "").mtime(4_102_444_800));
    l0.add(Entry::dir("names"));
    l0.add(Entry::file(
        [b"names/".as_slice(), &long].concat(),
        "255-byte non-UTF-8 name",
    ));
    l0.add(Entry::file(
        "names/caf\u{e9} \u{2603} spaces & $ymbols",
        "utf-8",
    ));
    let deep: String = (0..30).map(|i| format!("d{i:02}/")).collect();
    l0.add(Entry::file(format!("names/{deep}deep-file"), "deep")); // > 100 bytes: PAX path, implicit parents
    l0.add(Entry::dir("opt/old-dir"));
    l0.add(Entry::file("opt/old1", "old1"));
    l0.add(Entry::file("opt/sub/old2", "old2"));
    l0.add(Entry::file("srv/a", "srv a"));
    l0.add(Entry::file("srv/b", "srv b lower"));
    l0.add(Entry::dir("replace_me"));
    l0.add(Entry::file("replace_me/child", "c"));
    l0.add(Entry::file("was_file", "f"));
    l0.add(Entry::dir("many").mode(0o755).mtime(1_500_000_000));
    for i in 0..o.big_dir_entries {
        let c: Content = if i % 1000 == 0 {
            format!("entry {i}\n").as_str().into()
        } else {
            Content::Zeros(0)
        };
        l0.add(Entry::file(format!("many/f{i:05}"), c));
    }
    l0.add(Entry::file(
        "data/sparse",
        Content::Sparse {
            size: 48 * MIB,
            regions: (0..12)
                .map(|i| SparseRegion {
                    offset: i * 4 * MIB + MIB,
                    len: 64 * 1024,
                    seed: 100 + i,
                })
                .collect(),
        },
    ));
    l0.add(Entry::file("data/zeros", Content::Zeros(5 * MIB + 123)));
    l0.add(Entry::file(
        "data/random",
        Content::Pattern {
            size: 3 * MIB + 7,
            seed: 9,
        },
    ));
    l0.add(Entry::file("data/empty", ""));

    // Layer 1: GNU long names; whiteouts, opaque, overwrites, cross-layer links.
    let mut l1 = LayerSpec::new().gnu_long_names();
    l1.add(Entry::whiteout("etc/shadow"));
    l1.add(Entry::whiteout("home/user")); // whole subtree
    l1.add(Entry::whiteout("ghost")); // nothing to delete
    l1.add(Entry::whiteout("many/f00001"));
    l1.add(Entry::dir("opt").mode(0o750).mtime(1_650_000_000));
    l1.add(Entry::opaque("opt"));
    l1.add(Entry::file("opt/new", "new in opaque opt"));
    l1.add(Entry::dir("etc").mode(0o751).mtime(1_650_000_001)); // metadata-only change
    l1.add(Entry::file("usr/bin/a", "replaced a")); // b, c keep the old inode
    l1.add(Entry::hardlink("usr/bin/d", "usr/bin/b")); // link to a lower-layer file
    l1.add(Entry::file("replace_me", "dir became a file"));
    l1.add(Entry::dir("was_file").mode(0o700));
    l1.add(Entry::file("was_file/inside", "file became a dir"));
    l1.add(Entry::symlink("bin/sh", "busybox")); // file -> symlink
    l1.add(Entry::file("many/f20000", "added later"));
    // Link to a lower file, then replace that file in the same layer: the
    // link keeps the old inode.
    l1.add(Entry::hardlink("xattrs/victim-link", "xattrs/victim"));
    l1.add(Entry::file("xattrs/victim", "new victim"));
    // A second long name (> 100 bytes), written with a GNU LongLink entry.
    let mut gnu_name = b"names/gnu-".to_vec();
    gnu_name.extend(std::iter::repeat_n(b'g', 240));
    l1.add(Entry::file(gnu_name, "gnu long name"));
    l1.add(Entry::symlink("names/gnu-long-target", "t".repeat(250)));

    // Layer 2: opaque + re-add in the same layer, more link-count changes.
    let mut l2 = LayerSpec::new();
    l2.add(Entry::dir("srv").mode(0o700));
    l2.add(Entry::opaque("srv"));
    l2.add(Entry::file("srv/b", "srv b upper"));
    l2.add(Entry::whiteout("usr/bin/c")); // b and d remain: nlink 2
    l2.add(Entry::whiteout("opt/new"));
    l2.add(
        Entry::file(
            "usr/bin/passwd",
            Content::Pattern {
                size: 5000,
                seed: 3,
            },
        )
        .mode(0o4711),
    ); // same content, new mode
    l2.add(Entry::hardlink("usr/bin/passwd-link", "usr/bin/passwd"));
    l2.add(Entry::fifo("var/fifo").mode(0o644)); // replaced FIFO
    if o.huge_file {
        l2.add(Entry::file(
            "data/huge",
            Content::Pattern {
                size: 600 * MIB,
                seed: 42,
            },
        ));
    }
    vec![l0, l1, l2]
}

/// Two stacks sharing their bottom layers and differing only in the top
/// layer, for layer-stability checks: (A, B).
pub fn stability_pair() -> (Vec<LayerSpec>, Vec<LayerSpec>) {
    let mut base0 = LayerSpec::new();
    for d in 0..20u64 {
        base0.add(Entry::dir(format!("pkg{d:02}")));
        for f in 0..12u64 {
            let size = 1024 + ((d * 31 + f * 17) % 64) * 16 * 1024; // 1 KiB .. ~1 MiB
            base0.add(Entry::file(
                format!("pkg{d:02}/file{f:02}"),
                Content::Pattern {
                    size,
                    seed: d * 100 + f,
                },
            ));
        }
        base0.add(Entry::symlink(format!("pkg{d:02}/link"), "file00"));
    }
    let mut base1 = LayerSpec::new();
    for d in 0..5u64 {
        base1.add(Entry::whiteout(format!("pkg{d:02}/file03")));
        base1.add(Entry::file(
            format!("pkg{d:02}/file05"),
            Content::Pattern {
                size: 200_000,
                seed: 5000 + d,
            },
        ));
    }
    base1.add(Entry::dir("etc"));
    base1.add(Entry::file("etc/config", "base config\n"));

    let mut top_a = LayerSpec::new();
    top_a.add(Entry::dir("app"));
    top_a.add(
        Entry::file(
            "app/bin",
            Content::Pattern {
                size: MIB,
                seed: 7001,
            },
        )
        .mode(0o755),
    );
    for i in 0..20 {
        top_a.add(Entry::file(format!("app/conf{i}"), format!("a {i}\n")));
    }
    top_a.add(Entry::file("etc/config", "config A\n"));

    let mut top_b = LayerSpec::new();
    top_b.add(Entry::dir("app"));
    top_b.add(
        Entry::file(
            "app/bin",
            Content::Pattern {
                size: 2 * MIB + 5,
                seed: 8001,
            },
        )
        .mode(0o755),
    );
    top_b.add(Entry::file(
        "app/extra",
        Content::Pattern {
            size: 300_000,
            seed: 8002,
        },
    ));
    for i in 0..25 {
        top_b.add(Entry::file(format!("app/conf{i}"), format!("b {i}\n")));
    }
    top_b.add(Entry::file("etc/config", "config B, longer\n"));
    top_b.add(Entry::whiteout("pkg10/file01"));

    (
        vec![base0.clone(), base1.clone(), top_a],
        vec![base0, base1, top_b],
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::model::{Model, NodeKind};

    #[test]
    fn rich_stack_model_highlights() {
        let t = Model::apply_all(&rich_stack(RichOptions {
            big_dir_entries: 50,
            huge_file: false,
        }))
        .unwrap();
        let g = |p: &str| t.get(p.as_bytes()).unwrap_or_else(|| panic!("{p} missing"));
        assert!(!t.contains_key(&b"/etc/shadow"[..]));
        assert!(!t.contains_key(&b"/home/user"[..]));
        assert!(!t.contains_key(&b"/home/user/docs/readme"[..]));
        assert!(t.contains_key(&b"/home"[..]));
        assert!(!t.contains_key(&b"/opt/old1"[..]));
        assert!(!t.contains_key(&b"/opt/sub"[..]));
        assert!(!t.contains_key(&b"/opt/new"[..]));
        assert!(!t.contains_key(&b"/srv/a"[..]));
        assert_eq!(
            g("/srv/b").sha256,
            Some(Content::from("srv b upper").sha256())
        );
        assert_eq!(g("/srv").mode, 0o40700);
        assert_eq!(g("/opt").mode, 0o40750);
        assert_eq!(g("/usr/bin/b").nlink, Some(2));
        assert_eq!(g("/usr/bin/b").link_group, g("/usr/bin/d").link_group);
        assert_eq!(g("/usr/bin/a").nlink, Some(1));
        assert_eq!(g("/usr/bin/passwd").nlink, Some(2));
        assert_eq!(g("/usr/bin/passwd").mode, 0o104711);
        assert_eq!(g("/replace_me").kind, NodeKind::File);
        assert_eq!(g("/was_file").kind, NodeKind::Dir);
        assert_eq!(g("/bin/sh").kind, NodeKind::Symlink);
        assert_eq!(g("/owners").mode, 0o40755);
        assert_eq!(g("/owners").mtime, 0);
        assert_eq!(g("/var/fifo").mode, 0o10644);
        assert!(!t.contains_key(&b"/many/f00001"[..]));
        assert!(t.contains_key(&b"/many/f20000"[..]));
        assert_eq!(g("/var/fifo2").link_group, g("/var/fifo2-link").link_group);
        assert_eq!(g("/var/sym-link").nlink, Some(2));
        assert_eq!(
            g("/xattrs/victim-link").sha256,
            Some(Content::from("old victim").sha256())
        );
        assert_eq!(g("/xattrs/victim").nlink, Some(1));
    }
}
