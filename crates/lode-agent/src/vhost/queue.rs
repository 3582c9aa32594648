//! The virtqueue of one vhost-user session, served on tokio.
//!
//! A worker task waits on the queue's kick eventfd, pops descriptor chains
//! in ring order (after resubmitting what was in flight when the previous
//! agent died), checks each one ([`super::chain`]), and dispatches it: the
//! worker waits for the session's admission (a slot and the request's bytes
//! of the memory budget, which is the back-pressure) and the volume's order
//! (reads share it; writes, flushes, discards and write-zeroes wait for
//! every earlier request and run alone), then runs the request in a task.
//! Completions may come back out of ring order, which virtio allows; each
//! one goes on the used ring with its in-flight bookkeeping and notifies
//! the guest as `EVENT_IDX` allows.

use super::chain::{self, Bad, Request, RANGE_SEG};
use super::device::{CONFIG_SIZE, ID_BYTES};
use super::inflight::InflightRegion;
use crate::range::{BlockRange, SECTOR};
use crate::session::{RequestError, Session};
use std::fs::File;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use tokio::io::unix::AsyncFd;
use tokio::runtime::Handle;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use virtio_bindings::virtio_blk::*;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

/// Guest memory as mapped from the frontend's regions.
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<()>;

const OK: u8 = VIRTIO_BLK_S_OK as u8;
const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
const UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;

/// The queue and what drives it.
pub(crate) struct Ring {
    pub queue: Queue,
    pub kick: Option<File>,
    pub call: Option<Arc<File>>,
    pub enabled: bool,
    pub event_idx: bool,
    /// Heads to run again before popping (in-flight recovery).
    resubmit: Vec<u16>,
    /// Pop counter (in-flight bookkeeping).
    counter: u64,
}

struct Worker {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// One session's device: the volume session, guest memory, the ring.
pub(crate) struct Device {
    pub session: Session,
    pub rt: Handle,
    pub config: [u8; CONFIG_SIZE],
    pub id: [u8; ID_BYTES],
    pub read_only: bool,
    mem: RwLock<Arc<GuestMemoryMmap>>,
    pub ring: Mutex<Ring>,
    pub inflight: Mutex<Option<Arc<InflightRegion>>>,
    worker: Mutex<Option<Worker>>,
    /// A malformed chain was logged (once per session: a guest cannot flood the log).
    warned: AtomicBool,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device")
            .field("volume", &self.session.volume().id)
            .field("read_only", &self.read_only)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Device {
    pub(crate) fn new(
        session: Session,
        rt: Handle,
        max_queue: u16,
    ) -> Result<Device, virtio_queue::Error> {
        let v = session.volume().clone();
        Ok(Device {
            config: super::device::config_space(v.size()),
            id: super::device::serial(&v.image.export),
            read_only: v.read_only,
            session,
            rt,
            mem: RwLock::new(Arc::new(GuestMemoryMmap::new())),
            ring: Mutex::new(Ring {
                queue: Queue::new(max_queue)?,
                kick: None,
                call: None,
                enabled: false,
                event_idx: false,
                resubmit: Vec::new(),
                counter: 0,
            }),
            inflight: Mutex::new(None),
            worker: Mutex::new(None),
            warned: AtomicBool::new(false),
        })
    }

    /// The current guest memory.
    pub(crate) fn memory(&self) -> Arc<GuestMemoryMmap> {
        self.mem.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replaces the guest memory (requests in flight keep the old mapping).
    pub(crate) fn set_memory(&self, m: GuestMemoryMmap) {
        *self.mem.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(m);
    }

    fn malformed(&self, what: &str) {
        if !self.warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(volume = %self.session.volume().id, "{what} (further ones not logged)");
        }
    }

    /// Starts the worker when the ring is complete (memory, addresses,
    /// kick, enabled) and none runs: first recovers what was in flight.
    /// Called from the protocol thread.
    pub(crate) fn maybe_start(self: &Arc<Self>) {
        let mut w = lock(&self.worker);
        if w.is_some() {
            return;
        }
        let mem = self.memory();
        let mut reconnected = false;
        let kick = {
            let mut ring = lock(&self.ring);
            if !ring.enabled || ring.kick.is_none() {
                return;
            }
            // `is_valid` also requires the queue to be marked ready.
            ring.queue.set_ready(true);
            if !ring.queue.is_valid(&*mem) {
                ring.queue.set_ready(false);
                return;
            }
            let used = ring
                .queue
                .used_idx(&*mem, Ordering::Acquire)
                .map(|w| w.0)
                .unwrap_or(0);
            ring.queue.set_next_used(used);
            if let Some(region) = lock(&self.inflight).as_ref() {
                let rec = region.recover(used, ring.queue.size());
                if !rec.resubmit.is_empty() {
                    tracing::info!(volume = %self.session.volume().id, requests = rec.resubmit.len(),
                        "resubmitting requests in flight before the restart");
                }
                ring.queue.set_next_avail(rec.next_avail);
                ring.resubmit = rec.resubmit;
                ring.counter = rec.counter;
                reconnected = !rec.fresh;
            }
            match ring.kick.as_ref().map(File::try_clone) {
                Some(Ok(k)) => k,
                _ => return,
            }
        };
        let (stop, rx) = watch::channel(false);
        let dev = self.clone();
        let task = self.rt.spawn(async move { dev.run(kick, rx).await });
        *w = Some(Worker { stop, task });
        if reconnected {
            // The previous agent may have put completions on the used ring
            // without notifying the guest: an extra interrupt is harmless.
            self.notify();
        }
    }

    /// Signals the guest's call eventfd.
    fn notify(&self) {
        let call = lock(&self.ring).call.clone();
        if let Some(c) = call {
            if let Err(e) = (&*c).write_all(&1u64.to_ne_bytes()) {
                tracing::debug!(error = %e, "cannot notify the guest");
            }
        }
    }

    /// Stops the worker and waits until no request is in flight (a stopped
    /// ring, a disabled ring, a reset). Called from the protocol thread.
    pub(crate) fn stop(&self) {
        let w = lock(&self.worker).take();
        if let Some(w) = w {
            w.stop.send_replace(true);
            let _ = self.rt.block_on(w.task);
        }
        self.rt.block_on(self.session.drain());
        lock(&self.ring).queue.set_ready(false);
    }

    /// Stops the worker and drains, from the runtime.
    pub(crate) async fn stop_async(&self) {
        let w = lock(&self.worker).take();
        if let Some(w) = w {
            w.stop.send_replace(true);
            let _ = w.task.await;
        }
        self.session.drain().await;
    }

    async fn run(self: Arc<Self>, kick: File, mut stop: watch::Receiver<bool>) {
        if let Err(e) = nix::fcntl::fcntl(
            &kick,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        ) {
            tracing::warn!(error = %e, "kick eventfd: cannot make it non-blocking");
            return;
        }
        // `AsyncFd::new` is deprecated for types that may not own their
        // descriptor; a `File` owns it for the AsyncFd's whole life.
        #[allow(deprecated)]
        let kick = match AsyncFd::new(kick) {
            Ok(k) => k,
            Err(e) => {
                tracing::warn!(error = %e, "kick eventfd: cannot watch it");
                return;
            }
        };
        loop {
            if !self.process(&mut stop).await {
                return;
            }
            tokio::select! {
                _ = crate::serve::stopped(&mut stop) => return,
                r = kick.readable() => match r {
                    Ok(mut g) => {
                        // Readiness is cleared only when the eventfd is
                        // empty: a kick between a read and a clear is never lost.
                        let mut b = [0u8; 8];
                        let _ = g.try_io(|k| {
                            let mut f: &File = k.get_ref();
                            f.read(&mut b)
                        });
                    }
                    Err(_) => return,
                },
            }
        }
    }

    /// Pops and dispatches every available chain; false when stopped.
    async fn process(self: &Arc<Self>, stop: &mut watch::Receiver<bool>) -> bool {
        loop {
            let mem = self.memory();
            let (heads, table, size, event_idx) = {
                let mut ring = lock(&self.ring);
                let mut heads = std::mem::take(&mut ring.resubmit);
                if ring.event_idx {
                    let _ = ring.queue.disable_notification(&*mem);
                }
                let inflight = lock(&self.inflight).clone();
                while let Some(c) = ring.queue.pop_descriptor_chain(&*mem) {
                    let h = c.head_index();
                    if let Some(r) = &inflight {
                        r.popped(h, ring.counter);
                    }
                    ring.counter = ring.counter.wrapping_add(1);
                    heads.push(h);
                }
                (
                    heads,
                    GuestAddress(ring.queue.desc_table()),
                    ring.queue.size(),
                    ring.event_idx,
                )
            };
            let popped = !heads.is_empty();
            // Every popped chain is dispatched, even when stopping: it is
            // marked in flight and counted in the ring's next index, so a
            // chain left behind would never complete.
            for head in heads {
                self.submit(head, &mem, table, size).await;
            }
            let stopping = *stop.borrow();
            if stopping {
                return false;
            }
            if event_idx {
                let more = lock(&self.ring)
                    .queue
                    .enable_notification(&*mem)
                    .unwrap_or(false);
                if !more {
                    return true;
                }
            } else if !popped {
                return true;
            }
        }
    }

    /// Checks chain `head` and starts it (or answers it at once when malformed).
    async fn submit(
        self: &Arc<Self>,
        head: u16,
        mem: &Arc<GuestMemoryMmap>,
        table: GuestAddress,
        size: u16,
    ) {
        let parsed = chain::walk(&**mem, table, size, head)
            .ok_or(Bad::Drop)
            .and_then(|d| chain::parse(head, &d, &**mem));
        let req = match parsed {
            Ok(r) => r,
            Err(Bad::Status(at)) => {
                self.malformed("malformed descriptor chain");
                let len = u32::from(mem.write_slice(&[IOERR], at).is_ok());
                self.complete(head, len);
                return;
            }
            Err(Bad::Drop) => {
                self.malformed("descriptor chain without a status byte dropped");
                self.complete(head, 0);
                return;
            }
        };
        let shared = matches!(req.kind, VIRTIO_BLK_T_IN | VIRTIO_BLK_T_GET_ID);
        let ticket = self.session.admit(req.in_len.max(req.out_len) as u64).await;
        let volume = self.session.volume().clone();
        let (read_turn, write_turn) = if shared {
            (Some(volume.read_turn().await), None)
        } else {
            (None, Some(volume.write_turn().await))
        };
        let dev = self.clone();
        let mem = mem.clone();
        self.rt.spawn(async move {
            let (status, written) = dev.execute(&mem, &req).await;
            let used = match mem.write_slice(&[status], req.status) {
                Ok(()) => written as u32 + 1,
                Err(_) => 0,
            };
            dev.complete(req.head, used);
            drop((read_turn, write_turn, dev));
            drop(ticket);
        });
    }

    /// Puts `head` on the used ring (with in-flight bookkeeping) and
    /// notifies the guest if it asked to be.
    pub(crate) fn complete(&self, head: u16, len: u32) {
        let mem = self.memory();
        let inflight = lock(&self.inflight).clone();
        let (notify, call) = {
            let mut ring = lock(&self.ring);
            if let Some(r) = &inflight {
                r.completing(head);
            }
            if let Err(e) = ring.queue.add_used(&*mem, head, len) {
                tracing::warn!(error = %e, "cannot add to the used ring");
                return;
            }
            if let Some(r) = &inflight {
                r.completed(head, ring.queue.next_used());
            }
            (
                ring.queue.needs_notification(&*mem).unwrap_or(true),
                ring.call.clone(),
            )
        };
        if notify {
            if let Some(c) = call {
                if let Err(e) = (&*c).write_all(&1u64.to_ne_bytes()) {
                    tracing::debug!(error = %e, "cannot notify the guest");
                }
            }
        }
    }

    /// Runs one request; returns its status and the data bytes written.
    async fn execute(&self, mem: &GuestMemoryMmap, req: &Request) -> (u8, usize) {
        let volume = self.session.volume();
        let size = volume.size();
        let fail = |e: &RequestError, what: &str| {
            if !matches!(e, RequestError::Range(_) | RequestError::ReadOnly(_)) {
                tracing::warn!(volume = %volume.id, error = %e, "{what} failed");
            }
            (IOERR, 0)
        };
        match req.kind {
            VIRTIO_BLK_T_IN => {
                let range = match BlockRange::from_sectors(req.sector, req.in_len as u64, size) {
                    Ok(r) => r,
                    Err(e) => return fail(&e.into(), "read"),
                };
                match volume.read(range).await {
                    Ok(data) => match chain::scatter(mem, &req.data_in, &data) {
                        Ok(()) => (OK, req.in_len),
                        Err(_) => (IOERR, 0),
                    },
                    Err(e) => fail(&e, "read"),
                }
            }
            VIRTIO_BLK_T_OUT => {
                let range = match BlockRange::from_sectors(req.sector, req.out_len as u64, size) {
                    Ok(r) => r,
                    Err(e) => return fail(&e.into(), "write"),
                };
                let Ok(data) = chain::gather(mem, &req.data_out, 0, req.out_len) else {
                    return (IOERR, 0);
                };
                match volume.write(range, data.into()).await {
                    Ok(()) => (OK, 0),
                    Err(e) => fail(&e, "write"),
                }
            }
            VIRTIO_BLK_T_FLUSH => match volume.flush_request().await {
                Ok(()) => (OK, 0),
                Err(e) => fail(&e, "flush"),
            },
            VIRTIO_BLK_T_GET_ID => {
                let n = req.in_len.min(ID_BYTES);
                match chain::scatter(mem, &req.data_in, &self.id[..n]) {
                    Ok(()) => (OK, n),
                    Err(_) => (IOERR, 0),
                }
            }
            VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => self.ranges(mem, req, size).await,
            _ => (UNSUPP, 0),
        }
    }

    /// `DISCARD` (advisory: the overlay keeps its pages, reads return the
    /// previous data) and `WRITE_ZEROES` (zeros written into the overlay).
    async fn ranges(&self, mem: &GuestMemoryMmap, req: &Request, size: u64) -> (u8, usize) {
        if self.read_only {
            return (UNSUPP, 0);
        }
        // One segment, as advertised (max_discard_seg = max_write_zeroes_seg = 1).
        if req.out_len != RANGE_SEG {
            return (IOERR, 0);
        }
        let Ok(seg) = chain::gather(mem, &req.data_out, 0, RANGE_SEG) else {
            return (IOERR, 0);
        };
        let sector = u64::from_le_bytes(seg[0..8].try_into().unwrap_or_default());
        let sectors = u32::from_le_bytes(seg[8..12].try_into().unwrap_or_default());
        let flags = u32::from_le_bytes(seg[12..16].try_into().unwrap_or_default());
        let allowed = if req.kind == VIRTIO_BLK_T_WRITE_ZEROES {
            VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP
        } else {
            0
        };
        if flags & !allowed != 0 {
            return (UNSUPP, 0);
        }
        let Ok(range) = BlockRange::from_sectors(sector, u64::from(sectors) * SECTOR, size) else {
            return (IOERR, 0);
        };
        if req.kind == VIRTIO_BLK_T_DISCARD {
            return (OK, 0);
        }
        match self.session.volume().write_zeroes(range).await {
            Ok(()) => (OK, 0),
            Err(e) => {
                tracing::warn!(error = %e, "write zeroes failed");
                (IOERR, 0)
            }
        }
    }
}
