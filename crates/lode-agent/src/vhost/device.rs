//! What the vhost-user-blk device looks like to the guest: its virtio
//! features, protocol features and configuration space.

use crate::range::{MAX_REQUEST, SECTOR};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use virtio_bindings::virtio_blk::*;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};

/// Largest virtqueue the device accepts (QEMU's default is 128).
pub const MAX_QUEUE_SIZE: u16 = 1024;
/// Largest data segment of one request (`size_max`).
pub const SIZE_MAX: u32 = 256 << 10;
/// Most data segments in one request (`seg_max`): a 128-entry queue less
/// the header and status descriptors. `SEG_MAX × SIZE_MAX` stays below
/// [`MAX_REQUEST`], the largest transfer accepted.
pub const SEG_MAX: u32 = 126;
/// Serial number length of `GET_ID`.
pub const ID_BYTES: usize = VIRTIO_BLK_ID_BYTES as usize;
/// Size of the configuration space answered (`struct virtio_blk_config`
/// and room to spare; unused fields read as zero).
pub const CONFIG_SIZE: usize = 256;

/// The virtio feature bits the device offers.
pub fn device_features(read_only: bool) -> u64 {
    let mut f = 1u64 << VIRTIO_F_VERSION_1
        | 1 << VIRTIO_RING_F_INDIRECT_DESC
        | 1 << VIRTIO_RING_F_EVENT_IDX
        | 1 << VIRTIO_BLK_F_SIZE_MAX
        | 1 << VIRTIO_BLK_F_SEG_MAX
        | 1 << VIRTIO_BLK_F_BLK_SIZE
        | 1 << VIRTIO_BLK_F_TOPOLOGY
        | 1 << VIRTIO_BLK_F_FLUSH
        | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
    if read_only {
        f |= 1 << VIRTIO_BLK_F_RO;
    } else {
        f |= 1 << VIRTIO_BLK_F_DISCARD | 1 << VIRTIO_BLK_F_WRITE_ZEROES;
    }
    f
}

/// The vhost-user protocol features offered: `CONFIG`, `MQ` (one queue),
/// `REPLY_ACK`, and `INFLIGHT_SHMFD` (in-flight requests survive a
/// restart of the agent: see [`super::inflight`]).
pub fn protocol_features() -> VhostUserProtocolFeatures {
    VhostUserProtocolFeatures::CONFIG
        | VhostUserProtocolFeatures::MQ
        | VhostUserProtocolFeatures::REPLY_ACK
        | VhostUserProtocolFeatures::INFLIGHT_SHMFD
}

/// The configuration space (`struct virtio_blk_config`, little-endian) of
/// an image of `size` bytes: `capacity` in 512-byte sectors, `size_max`,
/// `seg_max`, `blk_size` 512 (the logical block: any filesystem block size
/// works, 1 KiB ones too) with the topology hint of 4 KiB physical blocks
/// (`physical_block_exp` 3, `min_io_size` 8: the overlay's page, so aligned
/// writes need no read-modify-write) when the size is a multiple of 4 KiB,
/// `num_queues` 1, and discard / write-zeroes limits of one segment of at
/// most [`MAX_REQUEST`] bytes, 4 KiB aligned.
pub fn config_space(size: u64) -> [u8; CONFIG_SIZE] {
    let mut c = [0u8; CONFIG_SIZE];
    let exp: u8 = if size.is_multiple_of(4096) { 3 } else { 0 };
    let sectors_max = MAX_REQUEST / SECTOR as u32;
    let mut put = |at: usize, b: &[u8]| c[at..at + b.len()].copy_from_slice(b);
    put(0, &(size / SECTOR).to_le_bytes()); // capacity
    put(8, &SIZE_MAX.to_le_bytes()); // size_max
    put(12, &SEG_MAX.to_le_bytes()); // seg_max
    put(20, &(SECTOR as u32).to_le_bytes()); // blk_size
    put(24, &[exp]); // physical_block_exp
    put(26, &(1u16 << exp).to_le_bytes()); // min_io_size, in logical blocks
    put(34, &1u16.to_le_bytes()); // num_queues
    put(36, &sectors_max.to_le_bytes()); // max_discard_sectors
    put(40, &1u32.to_le_bytes()); // max_discard_seg
    put(44, &8u32.to_le_bytes()); // discard_sector_alignment
    put(48, &sectors_max.to_le_bytes()); // max_write_zeroes_sectors
    put(52, &1u32.to_le_bytes()); // max_write_zeroes_seg
    c
}

/// `GET_ID`'s serial: the export name, zero-padded (cut at 20 bytes).
pub fn serial(export: &str) -> [u8; ID_BYTES] {
    let mut id = [0u8; ID_BYTES];
    let n = export.len().min(ID_BYTES);
    id[..n].copy_from_slice(&export.as_bytes()[..n]);
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_layout() {
        let c = config_space(64 << 20);
        assert_eq!(
            u64::from_le_bytes(c[0..8].try_into().unwrap_or_default()),
            131072
        );
        assert_eq!(
            u32::from_le_bytes(c[20..24].try_into().unwrap_or_default()),
            512
        );
        assert_eq!(
            u32::from_le_bytes(c[12..16].try_into().unwrap_or_default()),
            SEG_MAX
        );
        assert_eq!((c[24], c[26]), (3, 8));
        let odd = config_space(64 << 20 | 512);
        assert_eq!((odd[24], odd[26]), (0, 1));
        assert!(u64::from(SEG_MAX) * u64::from(SIZE_MAX) <= u64::from(MAX_REQUEST));
        assert_eq!(&serial("t/img")[..6], b"t/img\0");
    }
}
