//! Reads a whole ext4 image into a [`Tree`] with the pure-Rust `ext4-view`
//! crate (no mount, no root needed).
//!
//! `ext4-view` 1.0 exposes type, permission bits, uid, gid, timestamps,
//! size, content and symlink targets, but no xattrs, device numbers or link
//! counts; those fields are `None`. The inode number of regular files is
//! recovered from `ext4_view::File`'s `Debug` output (its only public
//! trace), which gives hard-link identity for non-empty regular files.
//!
//! Known `ext4-view` 1.0 bug: inodes with a timestamp whose low 32 bits
//! are >= 0x8000_0000 (i.e. any time from 2038-01-19 on, stored correctly
//! as a negative `i32` plus epoch bits in `*_extra`) are rejected as
//! "invalid timestamp" (it does `i32::try_from(u32)`).
//! [`read_ext4_view_lenient`] reports such paths instead of failing.
//! It also rejects symlink targets with a component longer than 255 bytes
//! (legal on Linux); for those the target is left `None` (unchecked).

use crate::model::{Node, NodeKind, Tree};
use anyhow::{anyhow, Context, Result};
use ext4_view::{Ext4, FileType};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::Path;

fn kind_of(t: FileType) -> NodeKind {
    match t {
        FileType::BlockDevice => NodeKind::BlockDev,
        FileType::CharacterDevice => NodeKind::CharDev,
        FileType::Directory => NodeKind::Dir,
        FileType::Fifo => NodeKind::Fifo,
        FileType::Regular => NodeKind::File,
        FileType::Socket => NodeKind::Socket,
        FileType::Symlink => NodeKind::Symlink,
    }
}

fn debug_inode(f: &ext4_view::File) -> Option<u64> {
    let s = format!("{f:?}");
    let rest = &s[s.find("inode:")? + "inode:".len()..];
    let digits: String = rest
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

fn display(p: &[u8]) -> String {
    p.escape_ascii().to_string()
}

/// Result of [`read_ext4_view_lenient`].
#[derive(Debug)]
pub struct Ext4ViewRead {
    /// Everything readable.
    pub tree: Tree,
    /// Paths (not in `tree`; directories not descended into) whose inode
    /// ext4-view rejects with "invalid timestamp", with the error text.
    pub unreadable: Vec<(Vec<u8>, String)>,
}

/// Read every object of the image (including `/lost+found`); any error
/// fails.
pub fn read_ext4_view(img: &Path) -> Result<Tree> {
    let r = read_ext4_view_lenient(img)?;
    if let Some((p, e)) = r.unreadable.first() {
        return Err(anyhow!("ext4-view: metadata {}: {e}", display(p)));
    }
    Ok(r.tree)
}

/// Like [`read_ext4_view`], but inodes hit by ext4-view's post-2038
/// timestamp bug are listed in `unreadable` instead of failing the read.
pub fn read_ext4_view_lenient(img: &Path) -> Result<Ext4ViewRead> {
    let mut unreadable = Vec::new();
    let fs = Ext4::load_from_path(img)
        .map_err(|e| anyhow!("ext4-view cannot load {}: {e}", img.display()))?;
    let mut tree = Tree::new();
    let root_md = fs
        .symlink_metadata("/")
        .map_err(|e| anyhow!("ext4-view: metadata of /: {e}"))?;
    tree.insert(
        b"/".to_vec(),
        Node {
            kind: kind_of(root_md.file_type()),
            mode: kind_of(root_md.file_type()).type_bits() | u32::from(root_md.mode()),
            uid: root_md.uid(),
            gid: root_md.gid(),
            mtime: root_md.modified().seconds(),
            size: 0,
            sha256: None,
            symlink_target: None,
            rdev: None,
            xattrs: None,
            link_group: None,
            nlink: None,
        },
    );
    let mut stack: Vec<Vec<u8>> = vec![b"/".to_vec()];
    let mut buf = vec![0u8; 1 << 20];
    while let Some(dir) = stack.pop() {
        let rd = fs
            .read_dir(
                ext4_view::Path::try_from(&dir[..])
                    .map_err(|e| anyhow!("bad path {}: {e:?}", display(&dir)))?,
            )
            .map_err(|e| anyhow!("ext4-view: read_dir {}: {e}", display(&dir)))?;
        for ent in rd {
            let ent =
                ent.map_err(|e| anyhow!("ext4-view: read_dir {} entry: {e}", display(&dir)))?;
            let name = ent.file_name();
            let name: &[u8] = name.as_ref();
            if name == b"." || name == b".." {
                continue;
            }
            let path = ent.path();
            let pbytes: Vec<u8> = path.as_ref().to_vec();
            let md = match ent.metadata() {
                Ok(md) => md,
                Err(e) if e.to_string().contains("invalid timestamp") => {
                    unreadable.push((pbytes, e.to_string()));
                    continue;
                }
                Err(e) => return Err(anyhow!("ext4-view: metadata {}: {e}", display(&pbytes))),
            };
            let kind = kind_of(md.file_type());
            let mut node = Node {
                kind,
                mode: kind.type_bits() | u32::from(md.mode()),
                uid: md.uid(),
                gid: md.gid(),
                mtime: md.modified().seconds(),
                size: if kind == NodeKind::Dir { 0 } else { md.len() },
                sha256: None,
                symlink_target: None,
                rdev: None,
                xattrs: None,
                link_group: None,
                nlink: None,
            };
            match kind {
                NodeKind::Dir => stack.push(pbytes.clone()),
                NodeKind::File if node.size == 0 => {
                    // Opening resolves the path again, which is O(entries)
                    // in a linear directory: skip it for empty files (their
                    // hash is known; hard-link identity is then unknown).
                    node.sha256 = Some(Sha256::digest(b"").into());
                }
                NodeKind::File => {
                    let mut f = fs
                        .open(&path)
                        .map_err(|e| anyhow!("ext4-view: open {}: {e}", display(&pbytes)))?;
                    node.link_group = debug_inode(&f);
                    let mut h = Sha256::new();
                    let mut total = 0u64;
                    loop {
                        let n = f
                            .read(&mut buf)
                            .with_context(|| format!("ext4-view: read {}", display(&pbytes)))?;
                        if n == 0 {
                            break;
                        }
                        total += n as u64;
                        h.update(&buf[..n]);
                    }
                    if total != node.size {
                        return Err(anyhow!(
                            "ext4-view: {} read {total} bytes, size says {}",
                            display(&pbytes),
                            node.size
                        ));
                    }
                    node.sha256 = Some(h.finalize().into());
                }
                NodeKind::Symlink => match fs.read_link(&path) {
                    Ok(t) => node.symlink_target = Some(t.as_ref().to_vec()),
                    // ext4-view only accepts targets whose components are
                    // <= 255 bytes; Linux allows any target up to 4095
                    // bytes. Leave the target unchecked (size still is).
                    Err(e) if node.size > 255 && e.to_string().contains("invalid symlink path") => {
                    }
                    Err(e) => {
                        return Err(anyhow!("ext4-view: read_link {}: {e}", display(&pbytes)))
                    }
                },
                _ => {}
            }
            tree.insert(pbytes, node);
        }
    }
    Ok(Ext4ViewRead { tree, unreadable })
}
