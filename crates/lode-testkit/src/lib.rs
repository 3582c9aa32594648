//! Test and benchmark support for lode.
//!
//! * [`spec`]: the layer description model ([`LayerSpec`], [`Entry`]) and
//!   [`content`]: streamable file contents (pseudo-random, zeros, sparse).
//! * [`rawtar`]: tar members written byte by byte for hostile inputs.
//! * [`tarw`]: writes a `LayerSpec` as a tar stream (PAX / GNU long names,
//!   PAX xattrs, big ids and sizes, devices).
//! * [`image`]: OCI image layouts and docker archives, with [`image::Tamper`]
//!   knobs for corrupted variants.
//! * [`model`]: the oracle applying OCI layer semantics.
//! * [`read_ext4`] (ext4-view) and [`read_mount`] (loop mount): read an ext4
//!   image back; [`compare`] diffs a read-back tree with the model.
//! * [`chunks`]: [`unique_chunk_bytes`] for layer-stability checks.
//! * [`cli`]: running `lode flatten`, e2fsck, failure-contract checks.
//! * [`proxy`]: a TCP proxy that delays a link or injects faults into it.
//! * [`services`]: a real `memcached` on loopback, free ports, required tools.
//! * [`vm_image`]: busybox images for the micro-VM tests.
//! * [`gen`]: proptest strategies for valid random stacks; [`fixtures`]:
//!   hand-written stacks.

pub mod chunks;
pub mod cli;
pub mod compare;
pub mod content;
pub mod fixtures;
pub mod gen;
pub mod image;
pub mod model;
pub mod proxy;
pub mod rawtar;
pub mod read_ext4;
pub mod read_mount;
pub mod services;
pub mod spec;
pub mod tarw;
pub mod vm_image;

pub use chunks::unique_chunk_bytes;
pub use cli::{
    assert_all_identical, assert_e2fsck_clean, bad_input_violations, docker_source, e2fsck,
    files_identical, oci_source, verify_image, Flatten,
};
pub use compare::{assert_trees_match, diff_trees, CompareOptions};
pub use content::noise;
pub use content::{Content, SparseRegion};
pub use image::{
    write_docker_archive, write_docker_archive_with, write_oci_layout, write_oci_layout_from_tars,
    write_oci_layout_of_blobs, write_oci_layout_streamed, write_oci_layout_with, Compression,
    DockerLayout, DockerOptions, ImageInfo, OciOptions, Tamper, TarWriter,
};
pub use model::{Model, ModelError, ModelErrorKind, Node, NodeKind, Tree};
pub use read_ext4::read_ext4_view;
pub use read_mount::{can_loop_mount, is_root, read_via_mount, LoopMount};
pub use spec::{Entry, EntryKind, LayerSpec, LongNames, Meta, Xattrs};
