//! The merged directory tree and the OCI layer rules that change it.
//!
//! Nodes live in an arena; a node's index is its creation order, which is the
//! layer order and, inside a layer, the tar order. Every allocation decision
//! is taken in that order, so it depends only on the layers below and the
//! current one: this is what makes a layer's section identical in every image
//! that shares the layers up to it.

use crate::error::{show_path, Ext4Error, Result};
use crate::format::extent::Extent;
use crate::format::inline::Inline;
use crate::format::inode::Timestamp;
use crate::format::xattr::{Placement, Xattrs};
use std::collections::{BTreeMap, HashSet};

/// Index of a node in the arena.
pub type NodeId = usize;

/// Metadata carried by every entry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Meta {
    /// Permission bits, including setuid, setgid and sticky (`0o7777`).
    pub perm: u16,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time (also used for access, change and creation time).
    pub mtime: Timestamp,
    /// Extended attributes by full name (`user.x`, `security.capability`, ...).
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl Meta {
    /// Metadata of a directory that no layer describes (an implied parent).
    pub fn implied_dir() -> Self {
        Meta {
            perm: 0o755,
            ..Meta::default()
        }
    }
}

/// What a node is.
#[derive(Clone, Debug)]
pub enum Kind {
    /// Directory with its entries, sorted by name bytes.
    Dir {
        /// Entries by name.
        children: BTreeMap<Vec<u8>, NodeId>,
    },
    /// Regular file.
    File {
        /// Size in bytes.
        size: u64,
        /// Where its non-zero blocks are.
        extents: Vec<Extent>,
    },
    /// Symbolic link with its target, stored verbatim.
    Symlink {
        /// Target bytes.
        target: Vec<u8>,
    },
    /// FIFO.
    Fifo,
    /// Character device.
    CharDev {
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
    },
    /// Block device.
    BlockDev {
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
    },
}

impl Kind {
    /// True for directories.
    pub fn is_dir(&self) -> bool {
        matches!(self, Kind::Dir { .. })
    }
}

/// One inode-to-be.
#[derive(Clone, Debug)]
pub struct Node {
    /// What it is.
    pub kind: Kind,
    /// Its metadata.
    pub meta: Meta,
    /// Its extended attributes, encoded and placed.
    pub xattrs: Placement,
    /// Layer that created it.
    pub layer: usize,
    /// Layer whose entry last set its metadata.
    pub meta_layer: usize,
    /// Inode number, 0 until assigned.
    pub ino: u32,
    /// Directory entries pointing at it (non-directories).
    pub links: u32,
    /// False once no directory entry points at it.
    pub alive: bool,
    /// Directories: entries changed in the current layer.
    pub dirty: bool,
    /// Blocks allocated to the node (extent tree, symlink, xattr and directory blocks).
    pub blocks: NodeBlocks,
}

impl Node {
    /// Whether its contents may be kept in the inode (inline data): only
    /// when its in-inode attribute area is free for `system.data` (no
    /// attributes, or all of them in a block).
    pub fn may_inline(&self) -> bool {
        !matches!(self.xattrs, Placement::Inline(_))
    }
}

/// Blocks other than file data that a node owns.
#[derive(Clone, Debug, Default)]
pub struct NodeBlocks {
    /// Extent tree blocks below the inode's root.
    pub tree: Vec<u64>,
    /// Block holding a slow symlink's target.
    pub symlink: Option<u64>,
    /// Block holding the extended attributes.
    pub xattr: Option<u64>,
    /// Current directory contents: first block and count.
    pub dir: Option<(u64, u64)>,
    /// Extent tree blocks of the directory contents.
    pub dir_tree: Vec<u64>,
    /// The directory contents are hash-indexed (`EXT4_INDEX_FL`).
    pub dir_indexed: bool,
    /// Contents kept in the inode instead (inline data): a small file's
    /// bytes, or a small directory's current entries.
    pub inline: Option<Inline>,
}

/// The merged tree of all layers applied so far.
#[derive(Debug)]
pub struct Tree {
    /// All nodes ever created, alive or not.
    pub nodes: Vec<Node>,
    /// The layer being applied.
    pub layer: usize,
    /// Entries given explicitly in the current layer, as (parent directory,
    /// name), to refuse duplicates. A directory has one path, so the pair
    /// names the path; and it costs one name per entry, where full paths
    /// would cost depth² for deeply nested trees.
    seen: HashSet<(NodeId, Vec<u8>)>,
    /// The root was given explicitly in the current layer.
    root_seen: bool,
    /// Most nodes (inodes) the tree may hold.
    max_nodes: u64,
}

/// Root directory's node.
pub const ROOT: NodeId = 0;
/// `/lost+found`'s node.
pub const LOST_FOUND: NodeId = 1;

fn placement(path: &[Vec<u8>], meta: &Meta) -> Result<Placement> {
    let err = |problem| Ext4Error::Xattr {
        path: show_path(path),
        problem,
    };
    let x = Xattrs::from_map(&meta.xattrs).map_err(err)?;
    x.place(crate::format::inode::INLINE_XATTR_SPACE)
        .map_err(err)
}

impl Tree {
    /// A tree holding only `/` and `/lost+found`, with no limit on nodes
    /// beyond the format's.
    pub fn new() -> Self {
        Self::with_max_nodes(u64::MAX)
    }

    /// A tree holding only `/` and `/lost+found` that refuses to grow past
    /// `max_nodes` nodes (inodes) with [`Ext4Error::InodeLimit`].
    pub fn with_max_nodes(max_nodes: u64) -> Self {
        let mut t = Tree {
            nodes: Vec::new(),
            layer: 0,
            seen: HashSet::new(),
            root_seen: false,
            max_nodes: u64::MAX,
        };
        let root = t.push(
            Kind::Dir {
                children: BTreeMap::new(),
            },
            Meta::implied_dir(),
            Placement::None,
        );
        let lf_meta = Meta {
            perm: 0o700,
            ..Meta::default()
        };
        let lf = t.push(
            Kind::Dir {
                children: BTreeMap::new(),
            },
            lf_meta,
            Placement::None,
        );
        t.nodes[root].ino = crate::layout::ROOT_INO;
        t.nodes[lf].ino = crate::layout::LOST_FOUND_INO;
        t.children_mut(ROOT).insert(b"lost+found".to_vec(), lf);
        t.max_nodes = max_nodes;
        t
    }

    /// Adds a node, within the node limit.
    fn push_checked(&mut self, kind: Kind, meta: Meta, xattrs: Placement) -> Result<NodeId> {
        if self.nodes.len() as u64 >= self.max_nodes {
            return Err(Ext4Error::InodeLimit {
                limit: self.max_nodes,
            });
        }
        Ok(self.push(kind, meta, xattrs))
    }

    fn push(&mut self, kind: Kind, meta: Meta, xattrs: Placement) -> NodeId {
        self.nodes.push(Node {
            kind,
            meta,
            xattrs,
            layer: self.layer,
            meta_layer: self.layer,
            ino: 0,
            links: 1,
            alive: true,
            dirty: true,
            blocks: NodeBlocks::default(),
        });
        self.nodes.len() - 1
    }

    /// Starts applying layer `layer`.
    pub fn begin_layer(&mut self, layer: usize) {
        self.layer = layer;
        self.seen.clear();
        self.root_seen = false;
        for n in &mut self.nodes {
            n.dirty = false;
        }
        // Layer 0 writes the first version of `/` and `/lost+found`.
        if layer == 0 {
            self.nodes[ROOT].dirty = true;
            self.nodes[LOST_FOUND].dirty = true;
        }
    }

    fn children(&self, id: NodeId) -> &BTreeMap<Vec<u8>, NodeId> {
        match &self.nodes[id].kind {
            Kind::Dir { children } => children,
            _ => unreachable!("children of a non-directory"),
        }
    }

    fn children_mut(&mut self, id: NodeId) -> &mut BTreeMap<Vec<u8>, NodeId> {
        match &mut self.nodes[id].kind {
            Kind::Dir { children } => children,
            _ => unreachable!("children of a non-directory"),
        }
    }

    /// Looks a path up without changing anything. `Ok(None)` if some component
    /// is missing or not a directory; an error if it passes through a symlink.
    pub fn lookup(&self, path: &[Vec<u8>]) -> Result<Option<NodeId>> {
        let mut cur = ROOT;
        for (i, c) in path.iter().enumerate() {
            match &self.nodes[cur].kind {
                Kind::Dir { children } => match children.get(c) {
                    Some(&id) => cur = id,
                    None => return Ok(None),
                },
                Kind::Symlink { .. } => {
                    return Err(Ext4Error::ThroughSymlink {
                        path: show_path(path),
                        symlink: show_path(&path[..i]),
                    })
                }
                _ => return Ok(None),
            }
        }
        Ok(Some(cur))
    }

    /// Walks to the parent directory of `path`, creating implied directories and
    /// replacing lower-layer non-directories on the way.
    fn parent_for_write(&mut self, path: &[Vec<u8>]) -> Result<NodeId> {
        let mut cur = ROOT;
        for (i, c) in path[..path.len() - 1].iter().enumerate() {
            let next = self.children(cur).get(c).copied();
            cur = match next {
                Some(id) if self.nodes[id].kind.is_dir() => id,
                Some(id) if matches!(self.nodes[id].kind, Kind::Symlink { .. }) => {
                    return Err(Ext4Error::ThroughSymlink {
                        path: show_path(path),
                        symlink: show_path(&path[..=i]),
                    })
                }
                Some(id) if self.nodes[id].layer == self.layer => {
                    return Err(Ext4Error::NotADirectory {
                        path: show_path(path),
                        component: show_path(&path[..=i]),
                    })
                }
                Some(_) | None => {
                    let d = self.push_checked(
                        Kind::Dir {
                            children: BTreeMap::new(),
                        },
                        Meta::implied_dir(),
                        Placement::None,
                    )?;
                    self.attach(cur, c.clone(), d);
                    d
                }
            };
        }
        Ok(cur)
    }

    /// Puts `id` at `parent/name`, detaching whatever was there.
    fn attach(&mut self, parent: NodeId, name: Vec<u8>, id: NodeId) {
        if let Some(old) = self.children_mut(parent).insert(name, id) {
            if old != id {
                self.release(old);
            }
        }
        self.nodes[parent].dirty = true;
    }

    /// Drops one reference to `id`, and its subtree once it has none
    /// (iteratively: a tree may be nested as deep as its input allows).
    fn release(&mut self, id: NodeId) {
        let mut stack = vec![id];
        while let Some(id) = stack.pop() {
            let n = &mut self.nodes[id];
            n.links = n.links.saturating_sub(1);
            if n.links > 0 {
                continue;
            }
            n.alive = false;
            if let Kind::Dir { children } = &mut n.kind {
                stack.extend(std::mem::take(children).into_values());
            }
        }
    }

    /// Checks the name components of a new entry's path.
    fn check_components(path: &[Vec<u8>]) -> Result<()> {
        if path.is_empty() {
            return Err(Ext4Error::BadPath {
                path: "/".into(),
                reason: "the root can only be a directory",
            });
        }
        for c in path {
            if c.len() > 255 {
                return Err(Ext4Error::NameTooLong {
                    path: show_path(path),
                    len: c.len(),
                });
            }
            if c.is_empty() || c == b"." || c == b".." || c.contains(&b'/') || c.contains(&0) {
                return Err(Ext4Error::BadPath {
                    path: show_path(path),
                    reason: "invalid name component",
                });
            }
        }
        Ok(())
    }

    /// Checks a new entry's path and walks to (creating) its parent; refuses
    /// a path given twice in the layer. Returns the parent directory.
    fn parent_of_new(&mut self, path: &[Vec<u8>]) -> Result<NodeId> {
        Self::check_components(path)?;
        let parent = self.parent_for_write(path)?;
        if !self.seen.insert((parent, path[path.len() - 1].clone())) {
            return Err(Ext4Error::Duplicate {
                path: show_path(path),
            });
        }
        Ok(parent)
    }

    /// Adds or updates a directory. An existing directory keeps its entries and
    /// takes the new metadata, as the OCI spec says.
    pub fn add_dir(&mut self, path: &[Vec<u8>], meta: Meta) -> Result<NodeId> {
        let xattrs = placement(path, &meta)?;
        if path.is_empty() {
            if std::mem::replace(&mut self.root_seen, true) {
                return Err(Ext4Error::Duplicate { path: "/".into() });
            }
            return Ok(self.set_meta(ROOT, meta, xattrs));
        }
        let parent = self.parent_of_new(path)?;
        let name = &path[path.len() - 1];
        if let Some(&id) = self.children(parent).get(name) {
            if self.nodes[id].kind.is_dir() {
                return Ok(self.set_meta(id, meta, xattrs));
            }
        }
        let id = self.push_checked(
            Kind::Dir {
                children: BTreeMap::new(),
            },
            meta,
            xattrs,
        )?;
        self.attach(parent, name.clone(), id);
        Ok(id)
    }

    fn set_meta(&mut self, id: NodeId, meta: Meta, xattrs: Placement) -> NodeId {
        let layer = self.layer;
        let n = &mut self.nodes[id];
        n.meta = meta;
        n.xattrs = xattrs;
        n.meta_layer = layer;
        id
    }

    /// Adds a non-directory node at `path`, replacing what was there.
    pub fn add_node(&mut self, path: &[Vec<u8>], kind: Kind, meta: Meta) -> Result<NodeId> {
        debug_assert!(!kind.is_dir());
        let xattrs = placement(path, &meta)?;
        if let Kind::Symlink { target } = &kind {
            if target.is_empty() || target.len() >= crate::layout::BLOCK_SIZE as usize {
                return Err(Ext4Error::BadSymlink {
                    path: show_path(path),
                    len: target.len(),
                });
            }
        }
        let parent = self.parent_of_new(path)?;
        let name = &path[path.len() - 1];
        if let Some(&old) = self.children(parent).get(name) {
            if self.nodes[old].layer == self.layer && self.nodes[old].kind.is_dir() {
                return Err(Ext4Error::Duplicate {
                    path: show_path(path),
                });
            }
        }
        let id = self.push_checked(kind, meta, xattrs)?;
        self.attach(parent, name.clone(), id);
        Ok(id)
    }

    /// Adds a hard link at `path` to the node at `target`.
    pub fn add_hardlink(&mut self, path: &[Vec<u8>], target: &[Vec<u8>]) -> Result<NodeId> {
        let missing = || Ext4Error::HardlinkTargetMissing {
            path: show_path(path),
            target: show_path(target),
        };
        let id = self.lookup(target)?.ok_or_else(missing)?;
        if target.is_empty() || self.nodes[id].kind.is_dir() {
            return Err(Ext4Error::HardlinkToDirectory {
                path: show_path(path),
                target: show_path(target),
            });
        }
        if self.nodes[id].links >= crate::layout::LINK_MAX {
            return Err(Ext4Error::TooManyLinks {
                path: show_path(path),
            });
        }
        let parent = self.parent_of_new(path)?;
        let name = &path[path.len() - 1];
        if self.children(parent).get(name) == Some(&id) {
            return Ok(id);
        }
        if let Some(&old) = self.children(parent).get(name) {
            if self.nodes[old].layer == self.layer && self.nodes[old].kind.is_dir() {
                return Err(Ext4Error::Duplicate {
                    path: show_path(path),
                });
            }
        }
        self.nodes[id].links += 1;
        self.attach(parent, name.clone(), id);
        Ok(id)
    }

    /// Removes lower-layer content below `id`; returns true when something of
    /// the current layer remains, so `id` itself must stay. Iterative, with
    /// an explicit stack: a tree may be nested as deep as its input allows.
    fn prune_lower(&mut self, id: NodeId) -> bool {
        /// A directory being pruned: its entries (a snapshot), the next one
        /// to look at, whether it must stay, and its name in its parent.
        struct Frame {
            id: NodeId,
            kids: Vec<(Vec<u8>, NodeId)>,
            next: usize,
            keep: bool,
            name: Vec<u8>,
        }
        let layer = self.layer;
        // Some(keep) for what needs no descent: current-layer content stays,
        // lower-layer non-directories go.
        let settled = |t: &Tree, id: NodeId| {
            if t.nodes[id].layer == layer {
                Some(true)
            } else if !t.nodes[id].kind.is_dir() {
                Some(false)
            } else {
                None
            }
        };
        let frame = |t: &Tree, id: NodeId, name: Vec<u8>| Frame {
            id,
            kids: t
                .children(id)
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect(),
            next: 0,
            keep: t.nodes[id].meta_layer == layer,
            name,
        };
        if let Some(keep) = settled(self, id) {
            return keep;
        }
        let mut stack = vec![frame(self, id, Vec::new())];
        loop {
            let Some(top) = stack.last_mut() else {
                return false;
            };
            if top.next < top.kids.len() {
                let (name, k) = std::mem::take(&mut top.kids[top.next]);
                top.next += 1;
                let dir = top.id;
                match settled(self, k) {
                    Some(true) => top.keep = true,
                    Some(false) => self.unlink(dir, &name, k),
                    None => {
                        let f = frame(self, k, name);
                        stack.push(f);
                    }
                }
                continue;
            }
            let done = stack.pop().expect("not empty");
            match stack.last_mut() {
                None => return done.keep,
                Some(parent) if done.keep => parent.keep = true,
                Some(parent) => {
                    let dir = parent.id;
                    self.unlink(dir, &done.name, done.id);
                }
            }
        }
    }

    /// Removes `dir/name` (which is `id`) and drops its reference.
    fn unlink(&mut self, dir: NodeId, name: &[u8], id: NodeId) {
        self.children_mut(dir).remove(name);
        self.nodes[dir].dirty = true;
        self.release(id);
    }

    /// Applies a whiteout `.wh.NAME` found in directory `dir`: hides `dir/NAME`
    /// as lower layers left it (content of the current layer stays).
    pub fn whiteout(&mut self, dir: &[Vec<u8>], name: &[u8]) -> Result<()> {
        let Some(d) = self.lookup(dir)? else {
            return Ok(());
        };
        if !self.nodes[d].kind.is_dir() {
            return Ok(());
        }
        let Some(&id) = self.children(d).get(name) else {
            return Ok(());
        };
        if id == LOST_FOUND {
            // ext4 needs its lost+found: hide what lower layers put in it instead.
            return self.opaque(&[b"lost+found".to_vec()]);
        }
        if !self.prune_lower(id) {
            self.unlink(d, name, id);
        }
        Ok(())
    }

    /// Applies an opaque marker in `dir`: hides every lower-layer entry of it.
    pub fn opaque(&mut self, dir: &[Vec<u8>]) -> Result<()> {
        let d = match self.lookup(dir)? {
            Some(d) if self.nodes[d].kind.is_dir() => d,
            _ => {
                // The marker implies the directory: create it like a parent.
                let mut probe = dir.to_vec();
                probe.push(b"probe".to_vec());
                self.parent_for_write(&probe)?
            }
        };
        let kids: Vec<(Vec<u8>, NodeId)> = self
            .children(d)
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        for (name, k) in kids {
            if d == ROOT && k == LOST_FOUND {
                continue;
            }
            if !self.prune_lower(k) {
                self.unlink(d, &name, k);
            }
        }
        Ok(())
    }

    /// Live nodes created in the current layer, directories first, each group in
    /// creation order: the order in which they get inode numbers.
    pub fn new_in_layer(&self) -> Vec<NodeId> {
        let mine = |dir: bool| {
            self.nodes
                .iter()
                .enumerate()
                .filter(move |(_, n)| {
                    n.alive && n.layer == self.layer && n.ino == 0 && n.kind.is_dir() == dir
                })
                .map(|(i, _)| i)
        };
        mine(true).chain(mine(false)).collect()
    }

    /// Entries of a directory for encoding: `(name, child)`, sorted by name.
    pub fn entries(&self, id: NodeId) -> impl Iterator<Item = (&Vec<u8>, NodeId)> {
        self.children(id).iter().map(|(k, v)| (k, *v))
    }

    /// Number of subdirectories of a directory.
    pub fn subdirs(&self, id: NodeId) -> usize {
        self.children(id)
            .values()
            .filter(|&&c| self.nodes[c].kind.is_dir())
            .count()
    }

    /// Parent directory of every live directory (the root is its own parent).
    pub fn parents(&self) -> Vec<NodeId> {
        let mut parent = vec![ROOT; self.nodes.len()];
        for (i, n) in self.nodes.iter().enumerate() {
            if let (true, Kind::Dir { children }) = (n.alive, &n.kind) {
                for &c in children.values() {
                    if self.nodes[c].kind.is_dir() {
                        parent[c] = i;
                    }
                }
            }
        }
        parent
    }
}

impl Default for Tree {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Vec<Vec<u8>> {
        s.split('/')
            .filter(|c| !c.is_empty())
            .map(|c| c.as_bytes().to_vec())
            .collect()
    }

    fn file() -> Kind {
        Kind::File {
            size: 0,
            extents: vec![],
        }
    }

    fn names(t: &Tree, path: &str) -> Vec<String> {
        let id = t.lookup(&p(path)).unwrap().unwrap();
        t.entries(id)
            .map(|(k, _)| String::from_utf8_lossy(k).into_owned())
            .collect()
    }

    #[test]
    fn whiteout_hides_lower_but_not_same_layer() {
        let mut t = Tree::new();
        t.begin_layer(0);
        t.add_node(&p("a/x"), file(), Meta::default()).unwrap();
        t.add_node(&p("a/y"), file(), Meta::default()).unwrap();
        t.begin_layer(1);
        t.whiteout(&p("a"), b"x").unwrap();
        t.add_node(&p("a/z"), file(), Meta::default()).unwrap();
        t.whiteout(&p("a"), b"z").unwrap();
        assert_eq!(names(&t, "a"), vec!["y", "z"]);
    }

    #[test]
    fn opaque_keeps_only_current_layer() {
        let mut t = Tree::new();
        t.begin_layer(0);
        t.add_node(&p("d/old"), file(), Meta::default()).unwrap();
        t.add_node(&p("d/sub/deep"), file(), Meta::default())
            .unwrap();
        t.begin_layer(1);
        t.add_dir(&p("d"), Meta::implied_dir()).unwrap();
        t.add_node(&p("d/new"), file(), Meta::default()).unwrap();
        t.opaque(&p("d")).unwrap();
        assert_eq!(names(&t, "d"), vec!["new"]);
        assert_eq!(names(&t, ""), vec!["d", "lost+found"]);
    }

    #[test]
    fn duplicates_and_symlinks_are_refused() {
        let mut t = Tree::new();
        t.begin_layer(0);
        t.add_node(&p("f"), file(), Meta::default()).unwrap();
        assert!(matches!(
            t.add_node(&p("f"), file(), Meta::default()),
            Err(Ext4Error::Duplicate { .. })
        ));
        t.add_node(
            &p("l"),
            Kind::Symlink {
                target: b"/etc".to_vec(),
            },
            Meta::default(),
        )
        .unwrap();
        assert!(matches!(
            t.add_node(&p("l/x"), file(), Meta::default()),
            Err(Ext4Error::ThroughSymlink { .. })
        ));
        assert!(matches!(
            t.add_node(&p("f/x"), file(), Meta::default()),
            Err(Ext4Error::NotADirectory { .. })
        ));
    }

    #[test]
    fn hard_links_count_and_survive_removal_of_one_name() {
        let mut t = Tree::new();
        t.begin_layer(0);
        let f = t.add_node(&p("a"), file(), Meta::default()).unwrap();
        t.add_hardlink(&p("b"), &p("a")).unwrap();
        assert_eq!(t.nodes[f].links, 2);
        assert!(matches!(
            t.add_hardlink(&p("c"), &p("nope")),
            Err(Ext4Error::HardlinkTargetMissing { .. })
        ));
        t.begin_layer(1);
        t.whiteout(&[], b"a").unwrap();
        assert_eq!(t.nodes[f].links, 1);
        assert!(t.nodes[f].alive);
        t.begin_layer(2);
        t.whiteout(&[], b"b").unwrap();
        assert!(!t.nodes[f].alive);
    }

    #[test]
    fn replacing_a_lower_file_with_a_directory_parent() {
        let mut t = Tree::new();
        t.begin_layer(0);
        let f = t.add_node(&p("x"), file(), Meta::default()).unwrap();
        t.begin_layer(1);
        t.add_node(&p("x/y"), file(), Meta::default()).unwrap();
        assert!(!t.nodes[f].alive);
        assert_eq!(names(&t, "x"), vec!["y"]);
    }
}
