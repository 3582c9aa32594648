//! Images as `ext4-view` reads them (`lode cat`, `lode_agent::files`, the
//! frontend's run settings): lode reads images it did not write, so a
//! hostile superblock, inode (inline data included), extent tree or
//! directory must give an error, never a panic or a read out of bounds.

use ext4_view::{Ext4, Ext4Read, FileType, PathBuf};
use std::collections::HashMap;

/// Block size of the images the input describes.
const BLOCK: usize = 4096;
/// One input record: a block number (u32, little-endian), then the block.
const RECORD: usize = 4 + BLOCK;
/// Most directory entries the walk visits, and bytes it reads per file.
const MAX_ENTRIES: usize = 4096;
const MAX_FILE_READ: usize = 64 * 1024;

/// A sparse image: the blocks the input gives, zeros everywhere else.
struct Sparse(HashMap<u64, Vec<u8>>);

impl Ext4Read for Sparse {
    fn read(
        &mut self,
        start_byte: u64,
        dst: &mut [u8],
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync + 'static>> {
        let mut pos = start_byte;
        for out in dst.chunks_mut(BLOCK) {
            // ext4-view reads whole blocks, or parts of one block.
            let (block, off) = (pos / BLOCK as u64, (pos % BLOCK as u64) as usize);
            let n = out.len().min(BLOCK - off);
            match self.0.get(&block) {
                Some(b) => out[..n].copy_from_slice(&b[off..off + n]),
                None => out[..n].fill(0),
            }
            out[n..].fill(0);
            pos += out.len() as u64;
        }
        Ok(())
    }
}

/// Encodes an image's non-zero blocks as this target's input (the seeds).
pub fn sparse_records(image: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, block) in image.chunks(BLOCK).enumerate() {
        if block.iter().any(|&b| b != 0) {
            out.extend_from_slice(&(i as u32).to_le_bytes());
            out.extend_from_slice(block);
            out.resize(out.len() + BLOCK - block.len(), 0);
        }
    }
    out
}

/// `ext4_view_image`: arbitrary bytes as records of (block number, 4 KiB
/// block), an image that is zero elsewhere; loads it and walks the whole
/// tree, reading directories, files (at most 64 KiB each), symlinks and
/// metadata. Every error is accepted; a panic is a bug. A file that reads
/// must read exactly its size (up to the cap).
pub fn image(data: &[u8]) {
    let Some(fs) = load(data) else {
        return;
    };
    walk(&fs);
}

/// Loads the image this target's input describes.
pub fn load(data: &[u8]) -> Option<Ext4> {
    let mut blocks = HashMap::new();
    for rec in data.chunks(RECORD) {
        let mut idx = [0u8; 4];
        let head = rec.len().min(4);
        idx[..head].copy_from_slice(&rec[..head]);
        let mut block = vec![0u8; BLOCK];
        if rec.len() > 4 {
            block[..rec.len() - 4].copy_from_slice(&rec[4..]);
        }
        blocks.insert(u64::from(u32::from_le_bytes(idx)), block);
    }
    Ext4::load(Box::new(Sparse(blocks))).ok()
}

fn walk(fs: &Ext4) {
    let mut stack = vec![PathBuf::new("/")];
    let mut visited = 0usize;
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs.read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            visited += 1;
            if visited > MAX_ENTRIES {
                return;
            }
            let Ok(entry) = entry else {
                break;
            };
            let name = entry.file_name();
            if name == "." || name == ".." {
                continue;
            }
            let path = entry.path();
            let _ = fs.symlink_metadata(&path);
            match entry.file_type() {
                Ok(FileType::Directory) => stack.push(path),
                Ok(FileType::Regular) => read_file(fs, &path),
                Ok(FileType::Symlink) => {
                    let _ = fs.read_link(&path);
                }
                _ => {}
            }
        }
    }
}

fn read_file(fs: &Ext4, path: &PathBuf) {
    let Ok(mut file) = fs.open(path) else {
        return;
    };
    let size = file.metadata().len();
    let mut buf = vec![0u8; 4096];
    let mut total = 0usize;
    while total < MAX_FILE_READ {
        match file.read_bytes(&mut buf) {
            Ok(0) => {
                assert_eq!(total as u64, size, "a file read ended before its size");
                return;
            }
            Ok(n) => total += n,
            Err(_) => return,
        }
    }
}
