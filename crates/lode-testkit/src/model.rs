//! The oracle: applies a stack of [`LayerSpec`]s with OCI layer semantics
//! to an in-memory tree and returns what the flattened filesystem must
//! contain.
//!
//! Semantics (kept deliberately simple):
//! * Entry paths are the exact tar names, normalized lexically: empty and
//!   `.` components dropped, `..` pops a component and is an error if it
//!   would leave the root. A leading `/` is dropped.
//! * Per layer, first all whiteouts and opaque markers are applied to the
//!   lower tree (OCI: they only affect lower layers, regardless of where
//!   they appear in the tar), then all other entries are applied in tar
//!   order.
//! * `DIR/.wh.NAME` removes `DIR/NAME` (and its subtree) if present.
//!   `DIR/.wh..wh..opq` removes every child of `DIR` from lower layers.
//! * Missing parent directories (of entries and of markers) are created
//!   with mode 0755, uid/gid 0, mtime 0, no xattrs.
//! * A parent path component that is a symlink (in the merged tree so far)
//!   is an error; one that is another non-directory is an error too.
//! * A directory entry over an existing directory replaces its metadata
//!   (mode, uid, gid, mtime, xattrs) and keeps its children; any other
//!   entry replaces whatever was at its path (including a whole subtree).
//! * A hard link shares the inode of its target, which must exist in the
//!   merged tree so far (lower layers or earlier in the same layer) and not
//!   be a directory; the link entry's own metadata is ignored.
//! * Two entries with the same normalized path in one layer are an error.
//! * The root directory starts as mode 0755, uid/gid 0, mtime 0; a `./`
//!   entry sets its metadata.

use crate::content::Content;
use crate::spec::{EntryKind, LayerSpec, Xattrs, OPAQUE_MARKER, WHITEOUT_PREFIX};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

/// File type of a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NodeKind {
    /// Directory.
    Dir,
    /// Regular file.
    File,
    /// Symbolic link.
    Symlink,
    /// FIFO.
    Fifo,
    /// Character device.
    CharDev,
    /// Block device.
    BlockDev,
    /// Socket (never produced by the model; readers may report it).
    Socket,
}

impl NodeKind {
    /// `S_IFMT` bits.
    pub fn type_bits(self) -> u32 {
        match self {
            NodeKind::Dir => 0o040000,
            NodeKind::File => 0o100000,
            NodeKind::Symlink => 0o120000,
            NodeKind::Fifo => 0o010000,
            NodeKind::CharDev => 0o020000,
            NodeKind::BlockDev => 0o060000,
            NodeKind::Socket => 0o140000,
        }
    }
}

/// One expected (or observed) filesystem object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// File type.
    pub kind: NodeKind,
    /// Full mode: type bits | permission bits incl. setuid/setgid/sticky.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// mtime seconds.
    pub mtime: i64,
    /// Size: content length for files, target length for symlinks, 0 otherwise
    /// (directories: not meaningful, 0 in the model).
    pub size: u64,
    /// SHA-256 of the content (regular files).
    pub sha256: Option<[u8; 32]>,
    /// Symlink target, raw bytes.
    pub symlink_target: Option<Vec<u8>>,
    /// (major, minor) for device nodes.
    pub rdev: Option<(u32, u32)>,
    /// Extended attributes (None = the reader cannot see xattrs).
    pub xattrs: Option<Xattrs>,
    /// Hard-link identity: equal for paths sharing an inode (model inode id
    /// or real inode number; None if the reader cannot tell).
    pub link_group: Option<u64>,
    /// Link count (None if the reader cannot tell).
    pub nlink: Option<u32>,
}

/// Expected tree: absolute path (`/`, `/a`, `/a/b`) to node.
pub type Tree = BTreeMap<Vec<u8>, Node>;

/// Why a stack is invalid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelErrorKind {
    /// A `..` component escapes the root.
    Escapes,
    /// A parent path component is a symlink.
    ThroughSymlink,
    /// A parent path component is not a directory.
    ParentNotDir,
    /// Hard link target does not exist.
    MissingLinkTarget,
    /// Hard link target is a directory (or the link itself).
    BadLinkTarget,
    /// The same path appears twice in one layer.
    Duplicate,
    /// A non-directory entry for the root.
    RootNotDir,
    /// A malformed whiteout (`.wh.`, `.wh..`, `.wh..`).
    BadWhiteout,
    /// A path component longer than 255 bytes.
    NameTooLong,
    /// uid/gid above u32.
    IdTooLarge,
}

/// An invalid-stack error: which layer, which tar entry, why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelError {
    /// Layer index (0 = bottom).
    pub layer: usize,
    /// The entry's raw tar path.
    pub path: Vec<u8>,
    /// What is wrong.
    pub kind: ModelErrorKind,
}

impl fmt::Display for ModelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "layer {}: entry {:?}: {:?}",
            self.layer,
            String::from_utf8_lossy(&self.path),
            self.kind
        )
    }
}
impl std::error::Error for ModelError {}

#[derive(Clone, Debug)]
struct Inode {
    kind: NodeKind,
    perm: u32,
    uid: u32,
    gid: u32,
    mtime: u64,
    xattrs: Xattrs,
    content: Option<Content>,
    target: Option<Vec<u8>>,
    rdev: Option<(u32, u32)>,
}

impl Inode {
    fn implicit_dir() -> Self {
        Inode {
            kind: NodeKind::Dir,
            perm: 0o755,
            uid: 0,
            gid: 0,
            mtime: 0,
            xattrs: Xattrs::new(),
            content: None,
            target: None,
            rdev: None,
        }
    }
}

/// Normalize a tar path lexically (see module docs). Returns the path
/// relative to the root without leading or trailing `/` ("" = root).
pub fn normalize(path: &[u8]) -> Result<Vec<u8>, ModelErrorKind> {
    let mut comps: Vec<&[u8]> = Vec::new();
    for c in path.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                if comps.pop().is_none() {
                    return Err(ModelErrorKind::Escapes);
                }
            }
            c => {
                if c.len() > 255 {
                    return Err(ModelErrorKind::NameTooLong);
                }
                comps.push(c)
            }
        }
    }
    Ok(comps.join(&b'/'))
}

fn parent_of(p: &[u8]) -> (&[u8], &[u8]) {
    match p.iter().rposition(|&b| b == b'/') {
        Some(i) => (&p[..i], &p[i + 1..]),
        None => (&p[..0], p),
    }
}

fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    if dir.is_empty() {
        name.to_vec()
    } else {
        let mut v = dir.to_vec();
        v.push(b'/');
        v.extend_from_slice(name);
        v
    }
}

enum Class {
    Whiteout(Vec<u8>),
    Opaque(Vec<u8>),
    Normal(Vec<u8>),
}

/// The merged tree of a stack of layers, built incrementally.
#[derive(Clone, Debug)]
pub struct Model {
    paths: BTreeMap<Vec<u8>, usize>,
    inodes: Vec<Inode>,
    layers: usize,
}

impl Default for Model {
    fn default() -> Self {
        Self::new()
    }
}

impl Model {
    /// An empty root directory.
    pub fn new() -> Self {
        let mut paths = BTreeMap::new();
        paths.insert(Vec::new(), 0);
        Model {
            paths,
            inodes: vec![Inode::implicit_dir()],
            layers: 0,
        }
    }

    /// Apply a whole stack, bottom layer first, and return the tree.
    pub fn apply_all(layers: &[LayerSpec]) -> Result<Tree, ModelError> {
        let mut m = Model::new();
        for l in layers {
            m.apply(l)?;
        }
        Ok(m.tree())
    }

    /// Kind of the object at a normalized relative path ("" = root).
    pub fn kind_of(&self, path: &[u8]) -> Option<NodeKind> {
        self.paths.get(path).map(|&i| self.inodes[i].kind)
    }

    /// All normalized relative paths currently present (root excluded).
    pub fn paths(&self) -> impl Iterator<Item = &[u8]> {
        self.paths
            .keys()
            .filter(|k| !k.is_empty())
            .map(|k| k.as_slice())
    }

    /// Number of layers applied so far.
    pub fn layer_count(&self) -> usize {
        self.layers
    }

    fn remove_subtree(&mut self, p: &[u8]) {
        if p.is_empty() {
            // Never remove the root itself; remove its children.
            self.remove_children(p);
            return;
        }
        self.paths.remove(p);
        self.remove_children(p);
    }

    fn remove_children(&mut self, p: &[u8]) {
        let keys: Vec<Vec<u8>> = if p.is_empty() {
            self.paths
                .keys()
                .filter(|k| !k.is_empty())
                .cloned()
                .collect()
        } else {
            let mut lo = p.to_vec();
            lo.push(b'/');
            let mut hi = p.to_vec();
            hi.push(b'/' + 1);
            self.paths.range(lo..hi).map(|(k, _)| k.clone()).collect()
        };
        for k in keys {
            self.paths.remove(&k);
        }
    }

    /// Ensure every ancestor of `p` (not `p` itself) is a directory,
    /// creating missing ones implicitly.
    fn ensure_parents(&mut self, p: &[u8], create: bool) -> Result<(), ModelErrorKind> {
        let mut prefix: Vec<u8> = Vec::new();
        let comps: Vec<&[u8]> = if p.is_empty() {
            Vec::new()
        } else {
            p.split(|&b| b == b'/').collect()
        };
        for c in comps.iter().take(comps.len().saturating_sub(1)) {
            prefix = join(&prefix, c);
            match self.paths.get(&prefix) {
                Some(&i) => match self.inodes[i].kind {
                    NodeKind::Dir => {}
                    NodeKind::Symlink => return Err(ModelErrorKind::ThroughSymlink),
                    _ => return Err(ModelErrorKind::ParentNotDir),
                },
                None => {
                    if create {
                        self.inodes.push(Inode::implicit_dir());
                        self.paths.insert(prefix.clone(), self.inodes.len() - 1);
                    } else {
                        return Err(ModelErrorKind::MissingLinkTarget);
                    }
                }
            }
        }
        Ok(())
    }

    /// Apply one layer.
    pub fn apply(&mut self, spec: &LayerSpec) -> Result<(), ModelError> {
        let layer = self.layers;
        let err = |path: &[u8], kind| ModelError {
            layer,
            path: path.to_vec(),
            kind,
        };

        // Classify and check duplicates.
        let mut seen = BTreeSet::new();
        let mut classes = Vec::new();
        for e in &spec.entries {
            let tp = e.tar_path();
            let norm = normalize(&tp).map_err(|k| err(&tp, k))?;
            if !seen.insert(norm.clone()) {
                return Err(err(&tp, ModelErrorKind::Duplicate));
            }
            let (dir, name) = parent_of(&norm);
            let class = if name == OPAQUE_MARKER {
                Class::Opaque(dir.to_vec())
            } else if let Some(orig) = name.strip_prefix(WHITEOUT_PREFIX) {
                if orig.is_empty() || orig == b"." || orig == b".." {
                    return Err(err(&tp, ModelErrorKind::BadWhiteout));
                }
                Class::Whiteout(join(dir, orig))
            } else {
                Class::Normal(norm)
            };
            if e.meta.uid > u64::from(u32::MAX) || e.meta.gid > u64::from(u32::MAX) {
                return Err(err(&tp, ModelErrorKind::IdTooLarge));
            }
            classes.push((e, tp, class));
        }

        // Phase 1: whiteouts and opaque markers against the lower tree.
        for (_, tp, class) in &classes {
            match class {
                Class::Whiteout(target) => {
                    self.ensure_parents(target, true).map_err(|k| err(tp, k))?;
                    self.remove_subtree(target);
                }
                Class::Opaque(dir) => {
                    // The marker lives inside `dir`: `dir` must be a directory.
                    let marker = join(dir, OPAQUE_MARKER);
                    self.ensure_parents(&marker, true).map_err(|k| err(tp, k))?;
                    self.remove_children(dir);
                }
                Class::Normal(_) => {}
            }
        }

        // Phase 2: everything else, in order.
        for (e, tp, class) in &classes {
            let Class::Normal(p) = class else { continue };
            let meta = &e.meta;
            let base = Inode {
                kind: NodeKind::Dir,
                perm: meta.mode & 0o7777,
                uid: meta.uid as u32,
                gid: meta.gid as u32,
                mtime: meta.mtime,
                xattrs: meta.xattrs.clone(),
                content: None,
                target: None,
                rdev: None,
            };
            if p.is_empty() {
                if e.kind != EntryKind::Dir {
                    return Err(err(tp, ModelErrorKind::RootNotDir));
                }
                self.inodes[0] = base;
                continue;
            }
            self.ensure_parents(p, true).map_err(|k| err(tp, k))?;
            let new_inode = match &e.kind {
                EntryKind::Dir => {
                    if let Some(&i) = self.paths.get(p) {
                        if self.inodes[i].kind == NodeKind::Dir {
                            self.inodes[i] = base;
                            continue;
                        }
                    }
                    base
                }
                EntryKind::File(c) => Inode {
                    kind: NodeKind::File,
                    content: Some(c.clone()),
                    ..base
                },
                EntryKind::Whiteout | EntryKind::Opaque => {
                    // Only reachable if the name was changed by normalization
                    // in a way that hides the marker; treat as empty file.
                    Inode {
                        kind: NodeKind::File,
                        content: Some(Content::Zeros(0)),
                        ..base
                    }
                }
                EntryKind::Symlink(t) => Inode {
                    kind: NodeKind::Symlink,
                    target: Some(t.clone()),
                    ..base
                },
                EntryKind::Fifo => Inode {
                    kind: NodeKind::Fifo,
                    ..base
                },
                EntryKind::CharDev { major, minor } => Inode {
                    kind: NodeKind::CharDev,
                    rdev: Some((*major, *minor)),
                    ..base
                },
                EntryKind::BlockDev { major, minor } => Inode {
                    kind: NodeKind::BlockDev,
                    rdev: Some((*major, *minor)),
                    ..base
                },
                EntryKind::Hardlink(target) => {
                    let t = normalize(target).map_err(|k| err(tp, k))?;
                    if t == *p {
                        return Err(err(tp, ModelErrorKind::BadLinkTarget));
                    }
                    self.ensure_parents(&t, false).map_err(|k| err(tp, k))?;
                    let Some(&ti) = self.paths.get(&t) else {
                        return Err(err(tp, ModelErrorKind::MissingLinkTarget));
                    };
                    if self.inodes[ti].kind == NodeKind::Dir {
                        return Err(err(tp, ModelErrorKind::BadLinkTarget));
                    }
                    self.remove_subtree(p);
                    self.paths.insert(p.clone(), ti);
                    continue;
                }
            };
            self.remove_subtree(p);
            self.inodes.push(new_inode);
            self.paths.insert(p.clone(), self.inodes.len() - 1);
        }
        self.layers += 1;
        Ok(())
    }

    /// The expected tree (absolute paths), with content hashes computed.
    pub fn tree(&self) -> Tree {
        let mut links: HashMap<usize, u32> = HashMap::new();
        let mut subdirs: HashMap<Vec<u8>, u32> = HashMap::new();
        for (p, &i) in &self.paths {
            *links.entry(i).or_default() += 1;
            if !p.is_empty() && self.inodes[i].kind == NodeKind::Dir {
                *subdirs.entry(parent_of(p).0.to_vec()).or_default() += 1;
            }
        }
        let mut hashes: HashMap<usize, [u8; 32]> = HashMap::new();
        let mut out = Tree::new();
        for (p, &i) in &self.paths {
            let ino = &self.inodes[i];
            let sha = ino
                .content
                .as_ref()
                .map(|c| *hashes.entry(i).or_insert_with(|| c.sha256()));
            let size = match ino.kind {
                NodeKind::File => ino.content.as_ref().map_or(0, Content::size),
                NodeKind::Symlink => ino.target.as_ref().map_or(0, |t| t.len() as u64),
                _ => 0,
            };
            let nlink = if ino.kind == NodeKind::Dir {
                2 + subdirs.get(p).copied().unwrap_or(0)
            } else {
                links[&i]
            };
            let mut abs = vec![b'/'];
            abs.extend_from_slice(p);
            out.insert(
                abs,
                Node {
                    kind: ino.kind,
                    mode: ino.kind.type_bits() | ino.perm,
                    uid: ino.uid,
                    gid: ino.gid,
                    mtime: ino.mtime as i64,
                    size,
                    sha256: sha,
                    symlink_target: ino.target.clone(),
                    rdev: ino.rdev,
                    xattrs: Some(ino.xattrs.clone()),
                    link_group: Some(i as u64),
                    nlink: Some(nlink),
                },
            );
        }
        out
    }

    /// Content of the regular file at a normalized relative path.
    pub fn content_of(&self, path: &[u8]) -> Option<&Content> {
        self.paths
            .get(path)
            .and_then(|&i| self.inodes[i].content.as_ref())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::spec::Entry;

    fn t(layers: Vec<Vec<Entry>>) -> Result<Tree, ModelError> {
        let specs: Vec<LayerSpec> = layers.into_iter().map(LayerSpec::with).collect();
        Model::apply_all(&specs)
    }
    fn keys(tree: &Tree) -> Vec<String> {
        tree.keys()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect()
    }

    #[test]
    fn normalize_paths() {
        assert_eq!(normalize(b"./a//b/").unwrap(), b"a/b");
        assert_eq!(normalize(b"/a/./b").unwrap(), b"a/b");
        assert_eq!(normalize(b"a/../b").unwrap(), b"b");
        assert_eq!(normalize(b"./").unwrap(), b"");
        assert_eq!(normalize(b"../x"), Err(ModelErrorKind::Escapes));
        assert_eq!(normalize(b"a/../../x"), Err(ModelErrorKind::Escapes));
        assert_eq!(normalize(&[b'x'; 256]), Err(ModelErrorKind::NameTooLong));
        assert!(normalize(&[b'x'; 255]).is_ok());
    }

    #[test]
    fn implicit_parents() {
        let tree = t(vec![vec![Entry::file("a/b/c", "x")]]).unwrap();
        assert_eq!(keys(&tree), ["/", "/a", "/a/b", "/a/b/c"]);
        let a = &tree[&b"/a"[..]];
        assert_eq!((a.mode, a.uid, a.gid, a.mtime), (0o40755, 0, 0, 0));
        assert_eq!(tree[&b"/a"[..]].nlink, Some(3));
        assert_eq!(tree[&b"/"[..]].nlink, Some(3));
    }

    #[test]
    fn whiteout_removes_subtree_from_lower_only() {
        let tree = t(vec![
            vec![
                Entry::dir("d"),
                Entry::file("d/x", "1"),
                Entry::dir("d/sub"),
                Entry::file("d/sub/y", "2"),
                Entry::file("keep", "k"),
            ],
            vec![Entry::whiteout("d/sub"), Entry::whiteout("nonexistent")],
        ])
        .unwrap();
        assert_eq!(keys(&tree), ["/", "/d", "/d/x", "/keep"]);
        // Whiteout + re-add in the same layer: the new one survives.
        let tree = t(vec![
            vec![Entry::file("f", "old")],
            vec![
                Entry::whiteout("f"),
                Entry::dir("f"),
                Entry::file("f/z", "new"),
            ],
        ])
        .unwrap();
        assert_eq!(keys(&tree), ["/", "/f", "/f/z"]);
        // Whiteout after the entry in the same layer does not hide it.
        let tree = t(vec![
            vec![Entry::file("f", "old")],
            vec![Entry::file("f", "new"), Entry::whiteout("f")],
        ])
        .unwrap();
        assert_eq!(tree[&b"/f"[..]].sha256, Some(Content::from("new").sha256()));
        // Whiteout in a layer above removes.
        let tree = t(vec![
            vec![Entry::file("f", "old")],
            vec![Entry::file("g", "g")],
            vec![Entry::whiteout("f")],
        ])
        .unwrap();
        assert_eq!(keys(&tree), ["/", "/g"]);
    }

    #[test]
    fn opaque_dirs() {
        let tree = t(vec![
            vec![
                Entry::dir("o"),
                Entry::file("o/a", "a"),
                Entry::dir("o/s"),
                Entry::file("o/s/b", "b"),
                Entry::file("other", "x"),
            ],
            vec![Entry::opaque("o"), Entry::file("o/new", "n")],
        ])
        .unwrap();
        assert_eq!(keys(&tree), ["/", "/o", "/o/new", "/other"]);
        // Opaque marker after the re-added entry: still only hides lower.
        let tree = t(vec![
            vec![Entry::dir("o"), Entry::file("o/a", "a")],
            vec![
                Entry::dir("o").mode(0o700),
                Entry::file("o/a", "A"),
                Entry::opaque("o"),
            ],
        ])
        .unwrap();
        assert_eq!(keys(&tree), ["/", "/o", "/o/a"]);
        assert_eq!(tree[&b"/o"[..]].mode, 0o40700);
        assert_eq!(tree[&b"/o/a"[..]].sha256, Some(Content::from("A").sha256()));
        // Opaque on a missing dir creates it implicitly.
        let tree = t(vec![vec![Entry::opaque("m")]]).unwrap();
        assert_eq!(keys(&tree), ["/", "/m"]);
    }

    #[test]
    fn overwrite_semantics() {
        let tree = t(vec![
            vec![
                Entry::dir("d").mode(0o750).owner(5, 6).xattr("user.a", "1"),
                Entry::file("d/x", "x"),
                Entry::file("f", "f"),
            ],
            vec![
                Entry::dir("d").mode(0o711),
                Entry::dir("f"),
                Entry::symlink("l", "/nowhere"),
            ],
            vec![Entry::file("d", "now a file")],
        ])
        .unwrap();
        assert_eq!(keys(&tree), ["/", "/d", "/f", "/l"]);
        assert_eq!(tree[&b"/d"[..]].kind, NodeKind::File);
        assert_eq!(tree[&b"/f"[..]].kind, NodeKind::Dir);
        assert_eq!(
            tree[&b"/l"[..]].symlink_target.as_deref(),
            Some(&b"/nowhere"[..])
        );
        let tree = t(vec![
            vec![
                Entry::dir("d").mode(0o750).owner(5, 6).xattr("user.a", "1"),
                Entry::file("d/x", "x"),
            ],
            vec![Entry::dir("d").mode(0o711)],
        ])
        .unwrap();
        let d = &tree[&b"/d"[..]];
        assert_eq!(
            (d.mode, d.uid, d.xattrs.as_ref().unwrap().len()),
            (0o40711, 0, 0)
        );
        assert!(tree.contains_key(&b"/d/x"[..]));
    }

    #[test]
    fn hardlinks_across_layers() {
        let tree = t(vec![
            vec![
                Entry::file("f1", "one").mode(0o4755),
                Entry::hardlink("h1", "f1"),
                Entry::hardlink("h1b", "./f1"),
            ],
            vec![Entry::file("f1", "new"), Entry::hardlink("h2", "h1")],
            vec![Entry::whiteout("h1b")],
        ])
        .unwrap();
        let h1 = &tree[&b"/h1"[..]];
        let h2 = &tree[&b"/h2"[..]];
        let f1 = &tree[&b"/f1"[..]];
        assert_eq!(h1.link_group, h2.link_group);
        assert_ne!(h1.link_group, f1.link_group);
        assert_eq!(h1.nlink, Some(2));
        assert_eq!(f1.nlink, Some(1));
        assert_eq!(h1.mode, 0o104755);
        assert_eq!(h1.sha256, Some(Content::from("one").sha256()));
    }

    #[test]
    fn errors() {
        let e = t(vec![
            vec![Entry::file("ok", "")],
            vec![Entry::file("../evil", "x")],
        ])
        .unwrap_err();
        assert_eq!((e.layer, e.kind), (1, ModelErrorKind::Escapes));
        let e = t(vec![
            vec![Entry::symlink("l", "/etc")],
            vec![Entry::file("l/passwd", "x")],
        ])
        .unwrap_err();
        assert_eq!((e.layer, e.kind), (1, ModelErrorKind::ThroughSymlink));
        let e = t(vec![vec![Entry::hardlink("h", "missing")]]).unwrap_err();
        assert_eq!(e.kind, ModelErrorKind::MissingLinkTarget);
        // Hard link to a file added later in the same layer is missing.
        let e = t(vec![vec![Entry::hardlink("h", "f"), Entry::file("f", "")]]).unwrap_err();
        assert_eq!(e.kind, ModelErrorKind::MissingLinkTarget);
        let e = t(vec![vec![Entry::file("a", "1"), Entry::file("./a", "2")]]).unwrap_err();
        assert_eq!(e.kind, ModelErrorKind::Duplicate);
        let e = t(vec![vec![Entry::dir("d"), Entry::dir("d/")]]).unwrap_err();
        assert_eq!(e.kind, ModelErrorKind::Duplicate);
        let e = t(vec![vec![Entry::file("f", "1"), Entry::file("f/x", "2")]]).unwrap_err();
        assert_eq!(e.kind, ModelErrorKind::ParentNotDir);
        // Same path in different layers is fine.
        assert!(t(vec![
            vec![Entry::file("a", "1")],
            vec![Entry::file("a", "2")]
        ])
        .is_ok());
    }
}
