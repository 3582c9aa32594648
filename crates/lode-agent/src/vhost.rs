//! vhost-user-blk export: one VM's virtio-blk disk served from one image.
//!
//! A [`VhostUserExport`] owns a listening unix socket bound to one export
//! (`TENANT/NAME[@OVERLAY]`). Each frontend (a QEMU process) that connects
//! is one *session*: the export is opened (its current manifest), a private
//! copy-on-write [`Overlay`] is created, and the guest's virtqueue is served
//! through the same read path as NBD ([`Overlay::read`] over
//! [`ImageHandle::read`]) until the frontend disconnects; then the overlay is
//! dropped (deleted unless named) and the next frontend may connect. Sessions
//! on one socket are served one after the other.
//!
//! ## Device
//!
//! Features: `VERSION_1`, `RING_F_INDIRECT_DESC`, `RING_F_EVENT_IDX`,
//! `BLK_F_SIZE_MAX`, `BLK_F_SEG_MAX`, `BLK_F_BLK_SIZE`, `BLK_F_TOPOLOGY`,
//! `BLK_F_FLUSH`, and
//! either `BLK_F_RO` (read-only) or `BLK_F_DISCARD` + `BLK_F_WRITE_ZEROES`.
//! One queue. Protocol features: `CONFIG`, `MQ` (reports one queue),
//! `REPLY_ACK`. See [`config_space`] for the configuration space.
//!
//! ## Request handling
//!
//! The vring worker thread of the vhost-user-backend crate pops descriptor
//! chains in ring order and checks each one (layout, every buffer inside
//! guest memory, sizes) before anything is read. Reads (`IN`, `GET_ID`) then
//! run **concurrently** on the tokio runtime, at most
//! [`DEVICE_REQUESTS`] at once (the worker thread waits for a slot, which is
//! the back-pressure); a request that changes or persists data (`OUT`,
//! `FLUSH`, `DISCARD`, `WRITE_ZEROES`) waits until every earlier request has
//! completed and runs alone, so no read ever races a write of the same pages
//! and a flush covers every write completed before it. Completions may come
//! back out of ring order, which virtio allows. The used ring is updated and
//! the guest notified per completion, honouring `EVENT_IDX`.
//!
//! Status bytes: `OK`; `IOERR` for a failed read (never wrong bytes), an
//! out-of-range or misaligned request, a write to a read-only device, or a
//! malformed chain whose status byte is still addressable; `UNSUPP` for an
//! unknown request type or unsupported flags. A chain without an addressable
//! status byte is returned to the guest with a used length of 0.

use crate::exports::ExportError;
use crate::image::ImageHandle;
use crate::nbd::{overlay_key, Server, MAX_REQUEST};
use crate::overlay::Overlay;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, RwLock};
use std::time::Instant;
use tokio::runtime::Handle;
use tokio::sync::Semaphore;
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::vhost_user::Listener;
use vhost_user_backend::{VhostUserBackend, VhostUserDaemon, VringRwLock, VringState, VringT};
use virtio_bindings::virtio_blk::*;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::{DescriptorChain, QueueT};
use vm_memory::{
    Address, Bytes, GuestAddress, GuestAddressSpace, GuestMemory, GuestMemoryAtomic, Permissions,
};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

type GuestMemoryMmap = vm_memory::GuestMemoryMmap<()>;
type Gm = GuestMemoryAtomic<GuestMemoryMmap>;

/// Requests of one device processed at once (as for one NBD connection).
pub const DEVICE_REQUESTS: usize = 16;
/// Largest virtqueue the device accepts (QEMU's default is 128).
pub const MAX_QUEUE_SIZE: usize = 1024;
/// Largest data segment of one request (`size_max`).
pub const SIZE_MAX: u32 = 256 << 10;
/// Most data segments in one request (`seg_max`): a 128-entry queue less
/// the header and status descriptors. `SEG_MAX × SIZE_MAX` stays below
/// [`MAX_REQUEST`], the largest transfer accepted.
pub const SEG_MAX: u32 = 126;
/// Serial number length of `GET_ID`.
const ID_BYTES: usize = VIRTIO_BLK_ID_BYTES as usize;
/// Size of a request header (`type`, `reserved`, `sector`).
const HEADER: usize = 16;
/// Size of a discard / write-zeroes segment.
const RANGE_SEG: usize = 16;
/// Sector unit of virtio-blk.
const SECTOR: u64 = 512;
/// Size of the configuration space answered (`struct virtio_blk_config`
/// and room to spare; unused fields read as zero).
const CONFIG_SIZE: usize = 256;

/// Why a vhost-user-blk export failed.
#[derive(Debug, thiserror::Error)]
pub enum VhostError {
    /// The socket could not be created.
    #[error("vhost-user socket {path}: {source}")]
    Bind {
        /// Socket path.
        path: String,
        /// What failed.
        #[source]
        source: vhost::vhost_user::Error,
    },
    /// The export could not be opened.
    #[error(transparent)]
    Export(Box<ExportError>),
    /// A named overlay is already attached to another client.
    #[error("overlay of '{0}' is in use by another client")]
    OverlayInUse(String),
    /// The copy-on-write overlay could not be created.
    #[error("overlay of '{export}': {source}")]
    Overlay {
        /// Export name.
        export: String,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// The vhost-user daemon failed (creating its threads, accepting).
    #[error("vhost-user daemon for '{export}': {message}")]
    Daemon {
        /// Export name.
        export: String,
        /// The daemon's error.
        message: String,
    },
}

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

/// A guest buffer: one descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Seg {
    addr: GuestAddress,
    len: usize,
}

/// A checked request, ready to run.
#[derive(Debug)]
struct Request {
    head: u16,
    kind: u32,
    sector: u64,
    /// Device-readable buffers after the header.
    data_out: Vec<Seg>,
    out_len: usize,
    /// Device-writable buffers before the status byte.
    data_in: Vec<Seg>,
    in_len: usize,
    status: GuestAddress,
}

/// Why a chain cannot run.
#[derive(Debug, PartialEq, Eq)]
enum Bad {
    /// Malformed, but the status byte can be written.
    Status(GuestAddress),
    /// No status byte to write to.
    Drop,
}

/// Splits a chain into a [`Request`], checking every descriptor against
/// guest memory. Never panics on guest-controlled input.
fn parse_chain<M>(chain: DescriptorChain<M>, mem: &GuestMemoryMmap) -> Result<Request, Bad>
where
    M: std::ops::Deref,
    M::Target: GuestMemory,
{
    let head = chain.head_index();
    let mut readable: Vec<Seg> = Vec::new();
    let mut writable: Vec<Seg> = Vec::new();
    let mut order_ok = true;
    let mut in_memory = true;
    let mut total: u64 = 0;
    for d in chain {
        let seg = Seg {
            addr: d.addr(),
            len: d.len() as usize,
        };
        total += u64::from(d.len());
        let access = if d.is_write_only() {
            Permissions::Write
        } else {
            Permissions::Read
        };
        if seg.len > 0 && !mem.check_range(seg.addr, seg.len, access) {
            in_memory = false;
        }
        if d.is_write_only() {
            writable.push(seg);
        } else {
            if !writable.is_empty() {
                order_ok = false;
            }
            readable.push(seg);
        }
    }
    // The status byte: the last byte of the writable part.
    let status = match writable.last_mut() {
        Some(last) if last.len > 0 && mem.check_range(last.addr, last.len, Permissions::Write) => {
            last.len -= 1;
            last.addr.checked_add(last.len as u64).ok_or(Bad::Drop)?
        }
        _ => return Err(Bad::Drop),
    };
    let max = u64::from(MAX_REQUEST) + (HEADER as u64) + 1;
    if !order_ok || !in_memory || total > max {
        return Err(Bad::Status(status));
    }
    let header = gather(mem, &readable, 0, HEADER).map_err(|_| Bad::Status(status))?;
    let mut kind = [0u8; 4];
    kind.copy_from_slice(&header[0..4]);
    let mut sector = [0u8; 8];
    sector.copy_from_slice(&header[8..16]);
    let (kind, sector) = (u32::from_le_bytes(kind), u64::from_le_bytes(sector));
    let data_out = skip(&readable, HEADER);
    let data_in: Vec<Seg> = writable.into_iter().filter(|s| s.len > 0).collect();
    Ok(Request {
        head,
        kind,
        sector,
        out_len: data_out.iter().map(|s| s.len).sum(),
        data_out,
        in_len: data_in.iter().map(|s| s.len).sum(),
        data_in,
        status,
    })
}

/// `segs` without their first `n` bytes.
fn skip(segs: &[Seg], mut n: usize) -> Vec<Seg> {
    let mut out = Vec::new();
    for s in segs {
        if n >= s.len {
            n -= s.len;
            continue;
        }
        out.push(Seg {
            // In guest memory (checked), so no overflow; wrapping just in case.
            addr: GuestAddress(s.addr.0.wrapping_add(n as u64)),
            len: s.len - n,
        });
        n = 0;
    }
    out
}

/// Reads `len` bytes starting `from` bytes into the buffers `segs`.
fn gather(
    mem: &GuestMemoryMmap,
    segs: &[Seg],
    from: usize,
    len: usize,
) -> Result<Vec<u8>, vm_memory::GuestMemoryError> {
    let mut out = vec![0u8; len];
    let mut at = 0;
    for s in skip(segs, from) {
        if at == len {
            break;
        }
        let n = s.len.min(len - at);
        mem.read_slice(&mut out[at..at + n], s.addr)?;
        at += n;
    }
    if at < len {
        return Err(vm_memory::GuestMemoryError::PartialBuffer {
            expected: len,
            completed: at,
        });
    }
    Ok(out)
}

/// Writes `data` over the buffers `segs`, in order.
fn scatter(
    mem: &GuestMemoryMmap,
    segs: &[Seg],
    data: &[u8],
) -> Result<(), vm_memory::GuestMemoryError> {
    let mut at = 0;
    for s in segs {
        if at == data.len() {
            break;
        }
        let n = s.len.min(data.len() - at);
        mem.write_slice(&data[at..at + n], s.addr)?;
        at += n;
    }
    Ok(())
}

/// The byte range `sector × 512 .. + len`, if inside an image of `size` bytes.
fn byte_range(sector: u64, len: u64, size: u64) -> Option<u64> {
    let off = sector.checked_mul(SECTOR)?;
    let end = off.checked_add(len)?;
    (len > 0 && len <= u64::from(MAX_REQUEST) && end <= size).then_some(off)
}

/// One session's device: the image, its overlay, and the vring state.
struct Device {
    export: String,
    image: Arc<ImageHandle>,
    /// Set once the frontend is connected (`Err` if the session is not
    /// served: no overlay, requests fail).
    overlay: OnceLock<Result<Overlay, ()>>,
    overlay_set: (Mutex<()>, Condvar),
    /// Held by the vring worker while it pops and dispatches chains.
    busy: Mutex<()>,
    /// A malformed chain was logged (once per session: a guest cannot flood the log).
    warned: AtomicBool,
    read_only: bool,
    rt: Handle,
    slots: Arc<Semaphore>,
    mem: RwLock<Gm>,
    event_idx: AtomicBool,
    first_read: Arc<OnceLock<Instant>>,
    id: [u8; ID_BYTES],
    config: [u8; CONFIG_SIZE],
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device")
            .field("export", &self.export)
            .field("read_only", &self.read_only)
            .finish_non_exhaustive()
    }
}

/// The [`VhostUserBackend`] of one session (cheap to clone).
#[derive(Clone, Debug)]
struct Backend(Arc<Device>);

impl Device {
    fn set_overlay(&self, o: Result<Overlay, ()>) {
        let _ = self.overlay.set(o);
        let _g = self.overlay_set.0.lock().unwrap_or_else(|p| p.into_inner());
        self.overlay_set.1.notify_all();
    }

    /// Waits until the session has decided on the overlay.
    fn wait_overlay(&self) {
        let mut g = self.overlay_set.0.lock().unwrap_or_else(|p| p.into_inner());
        while self.overlay.get().is_none() {
            g = self
                .overlay_set
                .1
                .wait(g)
                .unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Waits until no chain is being dispatched and no request is in flight
    /// (when a ring stops or the session ends, so nothing touches the ring
    /// or the overlay afterwards).
    fn drain(&self) {
        let _idle = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        let n = DEVICE_REQUESTS as u32;
        let _all = self.rt.block_on(self.slots.acquire_many(n));
    }

    fn malformed(&self, what: &str) {
        if !self.warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(export = %self.export, "{what} (further ones not logged)");
        }
    }

    fn process_queue(self: &Arc<Self>, vring: &VringRwLock) {
        self.wait_overlay();
        let _busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        let event_idx = self.event_idx.load(Ordering::Acquire);
        loop {
            if event_idx {
                if let Err(e) = vring.disable_notification() {
                    tracing::debug!(error = %e, "disable_notification");
                }
            }
            loop {
                let mem = self
                    .mem
                    .read()
                    .unwrap_or_else(|p| p.into_inner())
                    .memory()
                    .into_inner();
                let chain = vring
                    .get_mut()
                    .get_queue_mut()
                    .pop_descriptor_chain(mem.clone());
                let Some(chain) = chain else { break };
                self.submit(vring, chain, mem);
            }
            if !event_idx {
                break;
            }
            match vring.enable_notification() {
                Ok(true) => continue,
                Ok(false) => break,
                Err(e) => {
                    tracing::debug!(error = %e, "enable_notification");
                    break;
                }
            }
        }
    }

    fn submit(
        self: &Arc<Self>,
        vring: &VringRwLock,
        chain: DescriptorChain<Arc<GuestMemoryMmap>>,
        mem: Arc<GuestMemoryMmap>,
    ) {
        let head = chain.head_index();
        let req = match parse_chain(chain, &mem) {
            Ok(r) => r,
            Err(Bad::Status(at)) => {
                self.malformed("malformed descriptor chain");
                let len = match mem.write_slice(&[VIRTIO_BLK_S_IOERR as u8], at) {
                    Ok(()) => 1,
                    Err(_) => 0,
                };
                complete(vring, head, len);
                return;
            }
            Err(Bad::Drop) => {
                self.malformed("descriptor chain without a status byte dropped");
                complete(vring, head, 0);
                return;
            }
        };
        let shared = matches!(req.kind, VIRTIO_BLK_T_IN | VIRTIO_BLK_T_GET_ID);
        let n = if shared { 1 } else { DEVICE_REQUESTS as u32 };
        let Ok(permit) = self.rt.block_on(self.slots.clone().acquire_many_owned(n)) else {
            return; // never closed
        };
        let dev = self.clone();
        let vring = vring.clone();
        self.rt.spawn(async move {
            let (status, written) = dev.execute(&mem, &req).await;
            let used = match mem.write_slice(&[status], req.status) {
                Ok(()) => written as u32 + 1,
                Err(_) => 0,
            };
            complete(&vring, req.head, used);
            drop(permit);
        });
    }

    /// Runs one request; returns its status and the data bytes written.
    async fn execute(&self, mem: &GuestMemoryMmap, req: &Request) -> (u8, usize) {
        const OK: u8 = VIRTIO_BLK_S_OK as u8;
        const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
        const UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;
        let size = self.image.size();
        let Some(Ok(overlay)) = self.overlay.get() else {
            return (IOERR, 0);
        };
        match req.kind {
            VIRTIO_BLK_T_IN => {
                self.first_read.get_or_init(Instant::now);
                let len = req.in_len as u64;
                let Some(off) =
                    byte_range(req.sector, len, size).filter(|_| len.is_multiple_of(SECTOR))
                else {
                    tracing::debug!(sector = req.sector, len, "read out of range");
                    return (IOERR, 0);
                };
                match overlay.read(&self.image, off, len).await {
                    Ok(data) => match scatter(mem, &req.data_in, &data) {
                        Ok(()) => (OK, req.in_len),
                        Err(_) => (IOERR, 0),
                    },
                    Err(e) => {
                        tracing::warn!(export = %self.export, error = %e, off, len, "read failed");
                        (IOERR, 0)
                    }
                }
            }
            VIRTIO_BLK_T_OUT => {
                let len = req.out_len as u64;
                let off = byte_range(req.sector, len, size).filter(|_| len.is_multiple_of(SECTOR));
                let Some(off) = off.filter(|_| !self.read_only) else {
                    return (IOERR, 0);
                };
                let Ok(data) = gather(mem, &req.data_out, 0, req.out_len) else {
                    return (IOERR, 0);
                };
                match overlay.write(&self.image, off, &data).await {
                    Ok(()) => (OK, 0),
                    Err(e) => {
                        tracing::warn!(export = %self.export, error = %e, off, len, "write failed");
                        (IOERR, 0)
                    }
                }
            }
            VIRTIO_BLK_T_FLUSH => match overlay.flush() {
                Ok(()) => (OK, 0),
                Err(e) => {
                    tracing::warn!(export = %self.export, error = %e, "flush failed");
                    (IOERR, 0)
                }
            },
            VIRTIO_BLK_T_GET_ID => {
                let n = req.in_len.min(ID_BYTES);
                match scatter(mem, &req.data_in, &self.id[..n]) {
                    Ok(()) => (OK, n),
                    Err(_) => (IOERR, 0),
                }
            }
            VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => {
                self.ranges(overlay, mem, req, size).await
            }
            _ => (UNSUPP, 0),
        }
    }

    /// `DISCARD` (advisory: the overlay keeps its pages, reads return the
    /// previous data) and `WRITE_ZEROES` (zeros written into the overlay).
    async fn ranges(
        &self,
        overlay: &Overlay,
        mem: &GuestMemoryMmap,
        req: &Request,
        size: u64,
    ) -> (u8, usize) {
        const OK: u8 = VIRTIO_BLK_S_OK as u8;
        const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
        const UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;
        if self.read_only {
            return (UNSUPP, 0);
        }
        // One segment, as advertised (max_discard_seg = max_write_zeroes_seg = 1).
        if req.out_len != RANGE_SEG {
            return (IOERR, 0);
        }
        let Ok(seg) = gather(mem, &req.data_out, 0, RANGE_SEG) else {
            return (IOERR, 0);
        };
        let mut w = [0u8; 8];
        w.copy_from_slice(&seg[0..8]);
        let sector = u64::from_le_bytes(w);
        let mut h = [0u8; 4];
        h.copy_from_slice(&seg[8..12]);
        let sectors = u32::from_le_bytes(h);
        h.copy_from_slice(&seg[12..16]);
        let flags = u32::from_le_bytes(h);
        let allowed = if req.kind == VIRTIO_BLK_T_WRITE_ZEROES {
            VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP
        } else {
            0
        };
        if flags & !allowed != 0 {
            return (UNSUPP, 0);
        }
        let len = u64::from(sectors) * SECTOR;
        let Some(off) = byte_range(sector, len, size) else {
            return (IOERR, 0);
        };
        if req.kind == VIRTIO_BLK_T_DISCARD {
            return (OK, 0);
        }
        const PIECE: u64 = 1 << 20;
        let zeros = vec![0u8; PIECE.min(len) as usize];
        let mut at = off;
        while at < off + len {
            let n = PIECE.min(off + len - at) as usize;
            if let Err(e) = overlay.write(&self.image, at, &zeros[..n]).await {
                tracing::warn!(export = %self.export, error = %e, "write zeroes failed");
                return (IOERR, 0);
            }
            at += n as u64;
        }
        (OK, 0)
    }
}

/// Puts `head` on the used ring and notifies the guest if it asked to be.
fn complete(vring: &VringRwLock, head: u16, len: u32) {
    let notify = {
        let mut st: std::sync::RwLockWriteGuard<'_, VringState<Gm>> = vring.get_mut();
        if let Err(e) = st.add_used(head, len) {
            tracing::warn!(error = %e, "cannot add to the used ring");
            return;
        }
        st.needs_notification().unwrap_or(true)
    };
    if notify {
        if let Err(e) = vring.signal_used_queue() {
            tracing::debug!(error = %e, "cannot notify the guest");
        }
    }
}

impl VhostUserBackend for Backend {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        1
    }

    fn max_queue_size(&self) -> usize {
        MAX_QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        device_features(self.0.read_only)
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
    }

    fn set_event_idx(&self, enabled: bool) {
        self.0.event_idx.store(enabled, Ordering::Release);
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let (o, n) = (offset as usize, size as usize);
        match o.checked_add(n) {
            Some(end) if end <= CONFIG_SIZE => self.0.config[o..end].to_vec(),
            _ => Vec::new(), // the frontend gets an error reply
        }
    }

    fn set_config(&self, _offset: u32, _buf: &[u8]) -> std::io::Result<()> {
        Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            "the configuration space is read-only",
        ))
    }

    fn update_memory(&self, mem: Gm) -> std::io::Result<()> {
        *self.0.mem.write().unwrap_or_else(|p| p.into_inner()) = mem;
        Ok(())
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        new_event_consumer_and_notifier(EventFlag::NONBLOCK).ok()
    }

    fn stop_vring(&self, _queue_index: u32) -> std::io::Result<()> {
        self.0.drain();
        Ok(())
    }

    fn reset_device(&self) {
        self.0.drain();
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[VringRwLock],
        _thread_id: usize,
    ) -> std::io::Result<()> {
        // An error here would stop the worker thread for good: log instead.
        if evset != EventSet::IN {
            tracing::debug!(?evset, "unexpected vring event");
            return Ok(());
        }
        match vrings.get(usize::from(device_event)) {
            Some(vring) => self.0.process_queue(vring),
            None => tracing::debug!(device_event, "event for an unknown queue"),
        }
        Ok(())
    }
}

/// Stops a [`VhostUserExport`] from another thread.
#[derive(Clone, Debug)]
pub struct StopHandle {
    control: Arc<Control>,
    path: PathBuf,
}

#[derive(Default)]
struct Control {
    stopping: AtomicBool,
    session: Mutex<Option<vhost_user_backend::ShutdownHandle>>,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control")
            .field("stopping", &self.stopping)
            .finish_non_exhaustive()
    }
}

impl StopHandle {
    /// Ends the current session (its frontend is disconnected), and makes
    /// [`VhostUserExport::serve_one`] and [`VhostUserExport::serve`] return
    /// instead of waiting for another frontend.
    pub fn stop(&self) {
        self.control.stopping.store(true, Ordering::SeqCst);
        if let Some(s) = self
            .control
            .session
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            s.shutdown();
        }
        // Wake a thread blocked in accept().
        let _ = UnixStream::connect(&self.path);
    }
}

/// What one session did.
#[derive(Debug, Clone, Default)]
pub struct SessionReport {
    /// Pages the guest wrote into its overlay.
    pub written_pages: u64,
}

/// A vhost-user-blk export on a unix socket: one VM at a time, each with a
/// private copy-on-write overlay.
pub struct VhostUserExport {
    server: Arc<Server>,
    export: String,
    read_only: bool,
    listener: Listener,
    path: PathBuf,
    rt: Handle,
    control: Arc<Control>,
}

impl std::fmt::Debug for VhostUserExport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VhostUserExport")
            .field("export", &self.export)
            .field("path", &self.path)
            .field("read_only", &self.read_only)
            .finish_non_exhaustive()
    }
}

impl VhostUserExport {
    /// Checks that `export` opens, then listens on `socket` (an existing
    /// file there is replaced). Must run inside the tokio runtime whose
    /// handle the sessions use.
    pub async fn bind(
        server: Arc<Server>,
        export: &str,
        socket: &Path,
        read_only: bool,
    ) -> Result<VhostUserExport, VhostError> {
        server
            .exports()
            .open(export)
            .await
            .map_err(|e| VhostError::Export(Box::new(e)))?;
        let listener = Listener::new(socket, true).map_err(|source| VhostError::Bind {
            path: socket.display().to_string(),
            source,
        })?;
        Ok(VhostUserExport {
            server,
            export: export.to_string(),
            read_only,
            listener,
            path: socket.to_path_buf(),
            rt: Handle::current(),
            control: Arc::default(),
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A handle that stops this export from another thread.
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle {
            control: self.control.clone(),
            path: self.path.clone(),
        }
    }

    /// Serves frontends one after the other until stopped. A session that
    /// fails (e.g. the store is unreachable when the export is re-opened)
    /// is logged and retried after a pause (200 ms doubling to 5 s).
    ///
    /// Blocking: call it from a thread of its own, not from the runtime.
    pub fn serve(mut self) {
        let mut pause = std::time::Duration::from_millis(200);
        while !self.control.stopping.load(Ordering::SeqCst) {
            match self.serve_one() {
                Ok(_) => pause = std::time::Duration::from_millis(200),
                Err(e) => {
                    tracing::warn!(error = %e, "vhost-user session failed");
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(std::time::Duration::from_secs(5));
                }
            }
        }
    }

    /// Waits for one frontend and serves it until it disconnects; `None`
    /// when stopped before a frontend connected. The overlay is dropped
    /// (deleted unless named) before this returns.
    ///
    /// Blocking: call it from a thread of its own, not from the runtime.
    pub fn serve_one(&mut self) -> Result<Option<SessionReport>, VhostError> {
        // The image is opened before a frontend connects: the configuration
        // space (capacity) is among the first things it asks for.
        let (name, image) = self
            .rt
            .block_on(self.server.exports().open(&self.export))
            .map_err(|e| VhostError::Export(Box::new(e)))?;
        let mut id = [0u8; ID_BYTES];
        let n = image.export.len().min(ID_BYTES);
        id[..n].copy_from_slice(&image.export.as_bytes()[..n]);
        let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
        let dev = Arc::new(Device {
            export: self.export.clone(),
            config: config_space(image.size()),
            image: image.clone(),
            overlay: OnceLock::new(),
            overlay_set: (Mutex::new(()), Condvar::new()),
            busy: Mutex::new(()),
            warned: AtomicBool::new(false),
            read_only: self.read_only,
            rt: self.rt.clone(),
            slots: Arc::new(Semaphore::new(DEVICE_REQUESTS)),
            mem: RwLock::new(mem.clone()),
            event_idx: AtomicBool::new(false),
            first_read: self.server.first_read.clone(),
            id,
        });
        let daemon_err = |e: vhost_user_backend::Error| VhostError::Daemon {
            export: self.export.clone(),
            message: e.to_string(),
        };
        let mut daemon = VhostUserDaemon::new(
            format!("vhost-user-blk {}", self.export),
            Backend(dev.clone()),
            mem,
        )
        .map_err(daemon_err)?;
        daemon.start(&mut self.listener).map_err(daemon_err)?;
        *self
            .control
            .session
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = daemon.shutdown_handle();
        // A frontend is connected. Its overlay (and the claim of a named
        // one) is made only now, so an idle socket holds no overlay; the
        // vring worker waits for it should requests come first.
        let key = overlay_key(&name);
        let claimed = self.server.claim(&key);
        let outcome: Result<bool, VhostError> = if self.control.stopping.load(Ordering::SeqCst) {
            // The wake-up of `StopHandle::stop`, or a late frontend.
            Ok(false)
        } else if !claimed {
            Err(VhostError::OverlayInUse(self.export.clone()))
        } else {
            self.server
                .attach_overlay(&self.export, &image, key.as_deref())
                .map(|o| {
                    dev.set_overlay(Ok(o));
                    true
                })
                .map_err(|source| VhostError::Overlay {
                    export: self.export.clone(),
                    source,
                })
        };
        let serving = matches!(outcome, Ok(true));
        if serving {
            self.server.vhost_sessions.fetch_add(1, Ordering::Relaxed);
            self.rt.block_on(self.server.exports().activate(&image));
            tracing::info!(export = %self.export, "vhost-user frontend connected");
        } else {
            dev.set_overlay(Err(()));
            daemon.request_shutdown();
        }
        let result = daemon.wait();
        *self
            .control
            .session
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = None;
        // Dropping the daemon stops and joins the vring worker thread; then
        // no request is left in flight and the overlay can go.
        drop(daemon);
        dev.drain();
        if let Err(e) = result {
            tracing::debug!(export = %self.export, error = %e, "vhost-user session ended");
        }
        let written_pages = dev
            .overlay
            .get()
            .and_then(|o| o.as_ref().ok())
            .map(Overlay::written_pages)
            .unwrap_or(0);
        if serving {
            tracing::info!(export = %self.export, "vhost-user frontend disconnected");
            if let Err(e) = self
                .rt
                .block_on(self.server.exports().save_working_set(&image))
            {
                tracing::warn!(error = %e, export = %self.export, "cannot store the working set");
            }
        }
        // The overlay is deleted (or, if named, saved) here, before its name
        // is released for the next client.
        if Arc::try_unwrap(dev).is_err() {
            tracing::warn!(export = %self.export, "device still referenced at session end");
        }
        if claimed {
            self.server.release(&key);
        }
        match outcome {
            Ok(true) => Ok(Some(SessionReport { written_pages })),
            Ok(false) => Ok(None),
            Err(e) => Err(e),
        }
    }
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
    }

    #[test]
    fn ranges() {
        assert_eq!(byte_range(0, 4096, 8192), Some(0));
        assert_eq!(byte_range(8, 4096, 8192), Some(4096));
        assert_eq!(byte_range(9, 4096, 8192), None);
        assert_eq!(byte_range(0, 0, 8192), None);
        assert_eq!(byte_range(u64::MAX / 256, 512, u64::MAX), None);
    }

    #[test]
    fn skipping() {
        let s = [
            Seg {
                addr: GuestAddress(0x1000),
                len: 10,
            },
            Seg {
                addr: GuestAddress(0x2000),
                len: 20,
            },
        ];
        assert_eq!(
            skip(&s, 16),
            vec![Seg {
                addr: GuestAddress(0x2006),
                len: 14
            }]
        );
        assert_eq!(skip(&s, 30), vec![]);
        assert_eq!(skip(&s, 40), vec![]);
    }
}
