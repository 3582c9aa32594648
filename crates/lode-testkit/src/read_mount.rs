//! Reads an ext4 image through a real read-only loop mount (root only):
//! everything `std::fs` and the `xattr` crate can see, including xattrs,
//! device numbers, link counts and inode numbers.

use crate::model::{Node, NodeKind, Tree};
use crate::spec::Xattrs;
use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::ffi::OsStr;
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// True when running as root (loop mounts possible).
pub fn is_root() -> bool {
    fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// True when loop mounts should work here: root and a loop-control device.
pub fn can_loop_mount() -> bool {
    is_root() && Path::new("/dev/loop-control").exists()
}

/// Linux `dev_t` to (major, minor) (glibc `gnu_dev_major/minor`).
pub fn dev_major_minor(dev: u64) -> (u32, u32) {
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    (major as u32, minor as u32)
}

/// A read-only loop mount, unmounted on drop.
#[derive(Debug)]
pub struct LoopMount {
    dir: tempfile::TempDir,
    mounted: bool,
}

impl LoopMount {
    /// `mount -t ext4 -o loop,ro IMG <tempdir>`.
    pub fn new(img: &Path) -> Result<Self> {
        if !is_root() {
            bail!("loop mounts need root");
        }
        let dir = tempfile::Builder::new().prefix("lode-mnt-").tempdir()?;
        let out = Command::new("mount")
            .args(["-t", "ext4", "-o", "loop,ro"])
            .arg(img)
            .arg(dir.path())
            .output()
            .context("run mount")?;
        if !out.status.success() {
            bail!(
                "mount -o loop,ro {} failed ({}): {}{}",
                img.display(),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(LoopMount { dir, mounted: true })
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Unmount now (also done on drop).
    pub fn unmount(&mut self) -> Result<()> {
        if self.mounted {
            let st = Command::new("umount").arg(self.dir.path()).status()?;
            if !st.success() {
                let st2 = Command::new("umount")
                    .arg("-l")
                    .arg(self.dir.path())
                    .status()?;
                if !st2.success() {
                    bail!("umount {} failed", self.dir.path().display());
                }
            }
            self.mounted = false;
        }
        Ok(())
    }
}

impl Drop for LoopMount {
    fn drop(&mut self) {
        if let Err(e) = self.unmount() {
            eprintln!("warning: {e}");
        }
    }
}

fn read_xattrs(p: &Path) -> Result<Xattrs> {
    let mut x = Xattrs::new();
    for name in xattr::list(p).with_context(|| format!("listxattr {}", p.display()))? {
        let key = String::from_utf8_lossy(name.as_bytes()).into_owned();
        let v = xattr::get(p, &name).with_context(|| format!("getxattr {} {key}", p.display()))?;
        x.insert(key, v.unwrap_or_default());
    }
    Ok(x)
}

fn node_for(p: &Path, md: &fs::Metadata, buf: &mut [u8]) -> Result<Node> {
    let ft = md.file_type();
    use std::os::unix::fs::FileTypeExt;
    let kind = if ft.is_dir() {
        NodeKind::Dir
    } else if ft.is_file() {
        NodeKind::File
    } else if ft.is_symlink() {
        NodeKind::Symlink
    } else if ft.is_fifo() {
        NodeKind::Fifo
    } else if ft.is_char_device() {
        NodeKind::CharDev
    } else if ft.is_block_device() {
        NodeKind::BlockDev
    } else {
        NodeKind::Socket
    };
    let mut node = Node {
        kind,
        mode: md.mode(),
        uid: md.uid(),
        gid: md.gid(),
        mtime: md.mtime(),
        size: if kind == NodeKind::Dir { 0 } else { md.size() },
        sha256: None,
        symlink_target: None,
        rdev: None,
        xattrs: Some(read_xattrs(p)?),
        link_group: Some(md.ino()),
        nlink: Some(md.nlink() as u32),
    };
    match kind {
        NodeKind::File => {
            let mut f = fs::File::open(p).with_context(|| format!("open {}", p.display()))?;
            let mut h = Sha256::new();
            loop {
                let n = f
                    .read(buf)
                    .with_context(|| format!("read {}", p.display()))?;
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
            }
            node.sha256 = Some(h.finalize().into());
        }
        NodeKind::Symlink => {
            node.symlink_target = Some(fs::read_link(p)?.as_os_str().as_bytes().to_vec());
        }
        NodeKind::CharDev | NodeKind::BlockDev => node.rdev = Some(dev_major_minor(md.rdev())),
        _ => {}
    }
    Ok(node)
}

/// Walk a mounted tree (no symlink following) into a [`Tree`].
pub fn read_tree(root: &Path) -> Result<Tree> {
    let mut tree = Tree::new();
    let mut buf = vec![0u8; 1 << 20];
    let md = fs::symlink_metadata(root)?;
    tree.insert(b"/".to_vec(), node_for(root, &md, &mut buf)?);
    let mut stack: Vec<(PathBuf, Vec<u8>)> = vec![(root.to_path_buf(), Vec::new())];
    while let Some((dir, rel)) = stack.pop() {
        for ent in fs::read_dir(&dir).with_context(|| format!("read_dir {}", dir.display()))? {
            let ent = ent?;
            let name = ent.file_name();
            let p = dir.join(&name);
            let md = fs::symlink_metadata(&p).with_context(|| format!("lstat {}", p.display()))?;
            let mut r = rel.clone();
            r.push(b'/');
            r.extend_from_slice(OsStr::as_bytes(&name));
            let node = node_for(&p, &md, &mut buf)?;
            if node.kind == NodeKind::Dir {
                stack.push((p, r.clone()));
            }
            tree.insert(r, node);
        }
    }
    Ok(tree)
}

/// Loop-mount `img` read-only, read it into a [`Tree`], unmount.
pub fn read_via_mount(img: &Path) -> Result<Tree> {
    let mut m = LoopMount::new(img)?;
    let t = read_tree(m.path());
    m.unmount()?;
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_numbers() {
        // makedev(8, 1) == 0x801; makedev(259, 1048575) uses the wide format.
        assert_eq!(dev_major_minor(0x801), (8, 1));
        let (ma, mi) = (259u64, 1_048_575u64);
        let dev = ((ma & 0xfff) << 8) | ((ma & !0xfff) << 32) | (mi & 0xff) | ((mi & !0xff) << 12);
        assert_eq!(dev_major_minor(dev), (259, 1_048_575));
    }
}
