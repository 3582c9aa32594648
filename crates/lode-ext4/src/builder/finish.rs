//! The finishing writes: the geometry is planned from the sections written,
//! then the inode tables, block and inode bitmaps, group descriptors and the
//! superblock are written (the only bytes written after the layers).

use super::{io_err, Builder, Summary};
use crate::bitmap::Bitmap;
use crate::error::{Ext4Error, Result};
use crate::format::inode::{self, mode, InodeRecord};
use crate::format::superblock::{self, GroupDesc, SuperblockParams};
use crate::geometry::Geometry;
use crate::layout::*;
use std::os::unix::fs::FileExt;

impl Builder {
    /// Writes the global structures and returns what the image holds.
    pub fn finish(mut self) -> Result<Summary> {
        if self.in_layer {
            return Err(Ext4Error::Misuse("finish inside a layer"));
        }
        if self.layers == 0 {
            return Err(Ext4Error::Misuse("finish before any layer"));
        }
        // Any directory whose entries changed after its last write (only
        // possible for lost+found edits in later layers) was rewritten there.
        self.close_section()?;
        let sections_end = self.cursor;
        let next_group = self.next_group;
        let geo = Geometry::plan(sections_end, next_group, self.opts.size, self.max_mtime)?;
        let mut used = Bitmap::new(geo.blocks);
        used.set_range(0, 1 + geo.gdt_blocks);
        used.set_range(geo.block_bitmaps, geo.groups);
        used.set_range(geo.inode_bitmaps, geo.groups);
        let mut tables = self.tables.clone();
        if let Some(t) = geo.table0 {
            // Group 0 holds the directories of every layer (as far as they
            // fit), `/` first: the inodes upper layers change most. In chunk
            // 0, which differs per image anyway, their changes cost no chunk
            // of a lower layer's section; the slot reserved in layer 0's
            // section stays free (zeros).
            tables[0] = t;
        }
        for g in next_group..geo.groups {
            tables.push(geo.spare_tables + (g - next_group) * INODE_TABLE_BLOCKS);
        }
        for &t in &tables {
            used.set_range(t, INODE_TABLE_BLOCKS);
        }
        let mut inodes = Bitmap::new(geo.groups * u64::from(INODES_PER_GROUP));
        inodes.set_range(0, u64::from(FIRST_INO) - 1);
        let mut dirs_per_group = vec![0u64; geo.groups as usize];
        let mut records: Vec<(u32, InodeRecord)> = Vec::new();
        for id in 0..self.tree.nodes.len() {
            if !self.tree.nodes[id].alive {
                continue;
            }
            let (ino, rec, owned) = self.inode_record(id)?;
            for (start, len) in owned {
                if used.set_range(start, len) != 0 {
                    return Err(Ext4Error::Misuse("two inodes claim one block"));
                }
            }
            inodes.set(u64::from(ino) - 1);
            if rec.mode & 0o170000 == mode::S_IFDIR {
                dirs_per_group[((ino - 1) / INODES_PER_GROUP) as usize] += 1;
            }
            records.push((ino, rec));
        }
        records.sort_by_key(|(ino, _)| *ino);
        // Inode tables.
        let per_group = INODES_PER_GROUP as usize;
        let mut i = 0;
        while i < records.len() {
            let g = ((records[i].0 - 1) / INODES_PER_GROUP) as usize;
            let mut table = vec![0u8; per_group * INODE_SIZE as usize];
            while i < records.len() && ((records[i].0 - 1) / INODES_PER_GROUP) as usize == g {
                let slot = ((records[i].0 - 1) % INODES_PER_GROUP) as usize * INODE_SIZE as usize;
                table[slot..slot + INODE_SIZE as usize]
                    .copy_from_slice(&inode::encode_inode(&records[i].1));
                i += 1;
            }
            self.write_at(tables[g], &table)?;
        }
        // Bitmaps and group descriptors.
        let mut gdt = vec![0u8; (geo.gdt_blocks * BLOCK_SIZE) as usize];
        let mut bb = vec![0u8; BLOCK_SIZE as usize];
        let ipg = u64::from(INODES_PER_GROUP);
        for g in 0..geo.groups {
            let first = g * BLOCKS_PER_GROUP;
            let last = (first + BLOCKS_PER_GROUP).min(geo.blocks);
            used.export(first, &mut bb);
            self.write_at(geo.block_bitmaps + g, &bb)?;
            let mut ib = vec![0xFFu8; BLOCK_SIZE as usize];
            inodes.export(g * ipg, &mut ib[..(ipg / 8) as usize]);
            self.write_at(geo.inode_bitmaps + g, &ib)?;
            let d = GroupDesc {
                block_bitmap: (geo.block_bitmaps + g) as u32,
                inode_bitmap: (geo.inode_bitmaps + g) as u32,
                inode_table: tables[g as usize] as u32,
                free_blocks: ((last - first) - used.count_range(first, last)) as u16,
                free_inodes: (ipg - inodes.count_range(g * ipg, (g + 1) * ipg)) as u16,
                used_dirs: dirs_per_group[g as usize] as u16,
            };
            let off = (g * DESC_SIZE) as usize;
            gdt[off..off + DESC_SIZE as usize].copy_from_slice(&superblock::encode_group_desc(&d));
        }
        self.write_at(1, &gdt)?;
        let blocks_used = used.count_range(0, geo.blocks);
        let inodes_used = inodes.count_range(0, geo.groups * ipg);
        let sb = superblock::encode_superblock(&SuperblockParams {
            blocks_count: geo.blocks,
            groups: geo.groups,
            free_blocks: geo.blocks - blocks_used,
            free_inodes: geo.groups * ipg - inodes_used,
            uuid: self.opts.uuid,
            hash_seed: self.opts.hash_seed,
            label: self.opts.label.clone(),
            timestamp: geo.timestamp,
        });
        self.out
            .write_all_at(&sb, 1024)
            .map_err(io_err("writing the superblock"))?;
        self.out
            .set_len(geo.blocks * BLOCK_SIZE)
            .map_err(io_err("setting the image size"))?;
        Ok(Summary {
            image_bytes: geo.blocks * BLOCK_SIZE,
            groups: geo.groups,
            inodes_used,
            blocks_used,
            data_bytes: self.data_bytes,
            sections_end_block: sections_end,
        })
    }
}
