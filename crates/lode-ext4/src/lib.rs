//! A deterministic, layer-stable ext4 image writer.
//!
//! `lode-ext4` writes an ext4 filesystem (4 KiB blocks, extents, no journal)
//! from a stack of layers given entry by entry. The same entries always give
//! the same bytes: nothing comes from the clock or from randomness, and every
//! allocation follows the layers' own order.
//!
//! The layout is chosen for deduplication at 512 KiB chunk granularity: each
//! layer's file data and the metadata it introduces live in a section of their
//! own that starts on a chunk boundary, so two images sharing their bottom N
//! layers share those sections byte for byte. See [`builder`] for the layout
//! and `docs/format.md` for the exact parameters.
//!
//! ```no_run
//! use lode_ext4::{Builder, Meta, Options};
//! let file = std::fs::File::create("out.ext4")?;
//! let mut b = Builder::new(file, Options::default());
//! b.begin_layer()?;
//! let data = b"hello\n";
//! b.add_file(&[b"hello.txt".to_vec()], Meta { perm: 0o644, ..Meta::default() }, 6, &mut &data[..])?;
//! b.end_layer()?;
//! b.finish()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod bitmap;
pub mod builder;
pub mod data;
pub mod error;
pub mod format;
mod geometry;
pub mod layout;
pub mod tree;

pub use builder::{Builder, Limits, Options, SettleHook, Settled, Special, Summary};
pub use data::{Dense, FileData};
pub use error::{Ext4Error, Result};
pub use format::inode::Timestamp;
pub use tree::Meta;
