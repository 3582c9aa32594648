//! A minimal vhost-user-blk *frontend* (the part QEMU plays), for tests of
//! `lode agent --vhost-user` without a VM: rust-vmm's `vhost` Frontend
//! speaks the protocol; guest memory is a shared file mapping handed to the
//! backend; requests are split-virtqueue descriptor chains written here by
//! hand, so tests can also send chains no driver would.

use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use vhost::vhost_user::message::{
    VhostUserConfigFlags, VhostUserInflight, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_bindings::virtio_blk::*;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryBackend};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

type Mem = vm_memory::GuestMemoryMmap<()>;

/// Guest memory size.
pub const MEM_SIZE: usize = 48 << 20;
/// Queue size (QEMU's default).
pub const QSIZE: u16 = 128;
const DESC: u64 = 0x0;
const AVAIL: u64 = 0x1000;
const USED: u64 = 0x2000;
const INDIRECT: u64 = 0x4000;
const DATA: u64 = 0x10000;

const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const F_INDIRECT: u16 = 4;

pub const S_OK: u8 = VIRTIO_BLK_S_OK as u8;
pub const S_IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
pub const S_UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;

/// One buffer of a chain: (guest address, length, device-writable).
#[derive(Clone, Copy, Debug)]
pub struct Buf {
    pub addr: u64,
    pub len: u32,
    pub write: bool,
}

/// A request to send: its buffers, and where its status byte and input
/// data are (to read back after completion).
#[derive(Clone, Debug)]
pub struct Chain {
    pub bufs: Vec<Buf>,
    /// Put the buffers in an indirect table.
    pub indirect: bool,
    pub status_at: Option<u64>,
    pub data_in: Vec<Buf>,
}

/// What the device returned for a chain.
#[derive(Clone, Debug)]
pub struct Done {
    pub used_len: u32,
    pub status: Option<u8>,
    pub data: Vec<u8>,
}

/// A connected vhost-user-blk frontend with one queue.
pub struct VhostBlk {
    fe: Frontend,
    pub mem: Mem,
    kick: EventFd,
    call: EventFd,
    avail_idx: u16,
    used_seen: u16,
    /// Bump allocator of the data area (reset per batch).
    next_data: u64,
    /// Device features offered by the backend.
    pub offered: u64,
    /// How often a wait checks the used ring (benchmarks poll faster).
    pub poll: Duration,
    /// The in-flight region (when tracked), kept across reconnections as
    /// QEMU keeps it.
    inflight: Option<(std::fs::File, VhostUserInflight)>,
    /// The first 60 bytes of the configuration space.
    pub config: Vec<u8>,
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

impl VhostBlk {
    /// Connects to a vhost-user-blk backend and sets up one queue, retrying
    /// the connection for up to 10 s while the backend gets ready.
    pub fn connect(sock: &Path) -> VhostBlk {
        VhostBlk::connect_with(sock, false)
    }

    fn frontend(sock: &Path) -> Frontend {
        let t = Instant::now();
        loop {
            match Frontend::connect(sock, 1) {
                Ok(f) => break f,
                Err(e) if t.elapsed() < Duration::from_secs(10) => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("cannot connect to {}: {e}", sock.display()),
            }
        }
    }

    /// Connects like QEMU does with in-flight tracking
    /// (`VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD`) when `tracked`.
    pub fn connect_with(sock: &Path, tracked: bool) -> VhostBlk {
        let fe = VhostBlk::frontend(sock);
        let file = tempfile::tempfile().unwrap();
        file.set_len(MEM_SIZE as u64).unwrap();
        let mem = Mem::from_ranges_with_files(&[(
            GuestAddress(0),
            MEM_SIZE,
            Some(FileOffset::new(file, 0)),
        )])
        .unwrap();
        let mut c = VhostBlk {
            fe,
            mem,
            kick: EventFd::new(EFD_NONBLOCK).unwrap(),
            call: EventFd::new(EFD_NONBLOCK).unwrap(),
            avail_idx: 0,
            used_seen: 0,
            next_data: DATA,
            offered: 0,
            config: Vec::new(),
            inflight: None,
            poll: Duration::from_millis(1),
        };
        c.setup(tracked, 0);
        c
    }

    /// Connects again after the backend went away, as QEMU does: same guest
    /// memory and rings, the in-flight region handed back, the ring resumed
    /// at the used index (the backend adds what it finds in flight).
    pub fn reconnect(&mut self, sock: &Path) {
        self.fe = VhostBlk::frontend(sock);
        let used: u16 = self
            .mem
            .load(GuestAddress(USED + 2), Ordering::Acquire)
            .unwrap();
        self.setup(self.inflight.is_some(), used);
    }

    /// Requests the backend marks in flight in the shared region.
    pub fn inflight_marked(&self) -> usize {
        let Some((f, info)) = &self.inflight else {
            return 0;
        };
        let mut b = vec![0u8; info.mmap_size as usize];
        use std::os::unix::fs::FileExt;
        f.read_exact_at(&mut b, info.mmap_offset).unwrap();
        (0..info.queue_size as usize)
            .filter(|h| b[16 + 16 * h] == 1)
            .count()
    }

    fn hva(&self, gpa: u64) -> u64 {
        let r = self.mem.iter().next().unwrap();
        r.as_ptr() as u64 + gpa
    }

    fn setup(&mut self, tracked: bool, base: u16) {
        self.fe.set_owner().unwrap();
        self.offered = self.fe.get_features().unwrap();
        let want = 1u64 << VIRTIO_F_VERSION_1
            | 1 << VIRTIO_RING_F_INDIRECT_DESC
            | 1 << VIRTIO_RING_F_EVENT_IDX
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
            | 1 << VIRTIO_BLK_F_SEG_MAX
            | 1 << VIRTIO_BLK_F_BLK_SIZE
            | 1 << VIRTIO_BLK_F_FLUSH
            | 1 << VIRTIO_BLK_F_RO
            | 1 << VIRTIO_BLK_F_DISCARD
            | 1 << VIRTIO_BLK_F_WRITE_ZEROES;
        self.fe.set_features(self.offered & want).unwrap();
        let pf = self.fe.get_protocol_features().unwrap();
        assert!(
            pf.contains(VhostUserProtocolFeatures::CONFIG),
            "backend lacks the CONFIG protocol feature (QEMU requires it): {pf:?}"
        );
        let mut want_pf = VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK;
        if tracked {
            assert!(
                pf.contains(VhostUserProtocolFeatures::INFLIGHT_SHMFD),
                "backend lacks INFLIGHT_SHMFD: {pf:?}"
            );
            want_pf |= VhostUserProtocolFeatures::INFLIGHT_SHMFD;
        }
        self.fe.set_protocol_features(pf & want_pf).unwrap();
        if tracked {
            if self.inflight.is_none() {
                let ask = VhostUserInflight::new(0, 0, 1, QSIZE);
                let (info, file) = self.fe.get_inflight_fd(&ask).unwrap();
                self.inflight = Some((file, info));
            }
            let (file, info) = self.inflight.as_ref().unwrap();
            self.fe.set_inflight_fd(info, file.as_raw_fd()).unwrap();
        }
        assert_eq!(self.fe.get_queue_num().unwrap(), 1, "queues");
        let (_, cfg) = self
            .fe
            .get_config(0, 60, VhostUserConfigFlags::empty(), &[0u8; 60])
            .unwrap();
        self.config = cfg;
        let region =
            VhostUserMemoryRegionInfo::from_guest_region(self.mem.iter().next().unwrap()).unwrap();
        self.fe.set_mem_table(&[region]).unwrap();
        self.fe.set_vring_num(0, QSIZE).unwrap();
        self.fe
            .set_vring_addr(
                0,
                &VringConfigData {
                    queue_max_size: QSIZE,
                    queue_size: QSIZE,
                    flags: 0,
                    desc_table_addr: self.hva(DESC),
                    used_ring_addr: self.hva(USED),
                    avail_ring_addr: self.hva(AVAIL),
                    log_addr: None,
                },
            )
            .unwrap();
        self.fe.set_vring_base(0, base).unwrap();
        self.fe.set_vring_call(0, &self.call).unwrap();
        self.fe.set_vring_kick(0, &self.kick).unwrap();
        self.fe.set_vring_enable(0, true).unwrap();
    }

    /// Capacity from the configuration space, in 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        u64::from_le_bytes(self.config[0..8].try_into().unwrap())
    }

    /// `seg_max` from the configuration space.
    pub fn seg_max(&self) -> u32 {
        le_u32(&self.config, 12)
    }

    /// `blk_size` from the configuration space.
    pub fn blk_size(&self) -> u32 {
        le_u32(&self.config, 20)
    }

    /// `physical_block_exp` from the configuration space.
    pub fn physical_block_exp(&self) -> u8 {
        self.config[24]
    }

    /// Whether the backend offered virtio-blk feature `bit`.
    pub fn offers(&self, bit: u32) -> bool {
        self.offered & (1u64 << bit) != 0
    }

    /// Reserves `len` bytes of the data area (16-byte aligned).
    pub fn alloc(&mut self, len: usize) -> u64 {
        let at = self.next_data;
        self.next_data = (at + len as u64).next_multiple_of(16);
        assert!(
            self.next_data <= MEM_SIZE as u64,
            "test data area exhausted"
        );
        at
    }

    /// Writes `data` into guest memory at `at`.
    pub fn put(&self, at: u64, data: &[u8]) {
        self.mem.write_slice(data, GuestAddress(at)).unwrap();
    }

    /// A request header buffer.
    pub fn header(&mut self, kind: u32, sector: u64) -> Buf {
        let at = self.alloc(16);
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&kind.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        self.put(at, &h);
        Buf {
            addr: at,
            len: 16,
            write: false,
        }
    }

    /// A status byte buffer, preset to 0xff (no status written).
    pub fn status(&mut self) -> Buf {
        let at = self.alloc(1);
        self.put(at, &[0xff]);
        Buf {
            addr: at,
            len: 1,
            write: true,
        }
    }

    /// A device-writable data area of `len` bytes split in `segs` buffers,
    /// filled with 0xa5 so untouched bytes show.
    pub fn data_in(&mut self, len: usize, segs: usize) -> Vec<Buf> {
        let mut out = Vec::new();
        let mut left = len;
        for i in 0..segs {
            let n = if i + 1 == segs {
                left
            } else {
                (len / segs).max(1).min(left)
            };
            if n == 0 {
                continue;
            }
            let at = self.alloc(n);
            self.put(at, &vec![0xa5; n]);
            out.push(Buf {
                addr: at,
                len: n as u32,
                write: true,
            });
            left -= n;
        }
        out
    }

    /// A device-readable data buffer holding `data`.
    pub fn data_out(&mut self, data: &[u8]) -> Buf {
        let at = self.alloc(data.len());
        self.put(at, data);
        Buf {
            addr: at,
            len: data.len() as u32,
            write: false,
        }
    }

    /// The standard chain: header, data, status.
    pub fn chain(
        &mut self,
        kind: u32,
        sector: u64,
        out: &[u8],
        in_len: usize,
        segs: usize,
    ) -> Chain {
        let mut bufs = vec![self.header(kind, sector)];
        if !out.is_empty() {
            bufs.push(self.data_out(out));
        }
        let din = self.data_in(in_len, segs.max(1));
        bufs.extend(din.iter().copied());
        let st = self.status();
        bufs.push(st);
        Chain {
            bufs,
            indirect: false,
            status_at: Some(st.addr),
            data_in: din,
        }
    }

    fn write_desc(&self, table: u64, i: u16, b: &Buf, next: Option<u16>) {
        let mut d = [0u8; 16];
        d[0..8].copy_from_slice(&b.addr.to_le_bytes());
        d[8..12].copy_from_slice(&b.len.to_le_bytes());
        let mut flags = if b.write { F_WRITE } else { 0 };
        if next.is_some() {
            flags |= F_NEXT;
        }
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..16].copy_from_slice(&next.unwrap_or(0).to_le_bytes());
        self.put(table + u64::from(i) * 16, &d);
    }

    /// Makes `chains` available at once and kicks; returns their heads.
    pub fn submit(&mut self, chains: &[Chain]) -> Vec<u16> {
        let mut heads = Vec::new();
        let mut next: u16 = 0;
        let mut ind_at = INDIRECT;
        for c in chains {
            let head = next;
            if c.indirect {
                for (k, b) in c.bufs.iter().enumerate() {
                    let nx = (k + 1 < c.bufs.len()).then_some(k as u16 + 1);
                    self.write_desc(ind_at, k as u16, b, nx);
                }
                let mut d = [0u8; 16];
                d[0..8].copy_from_slice(&ind_at.to_le_bytes());
                d[8..12].copy_from_slice(&((c.bufs.len() * 16) as u32).to_le_bytes());
                d[12..14].copy_from_slice(&F_INDIRECT.to_le_bytes());
                self.put(DESC + u64::from(head) * 16, &d);
                ind_at += (c.bufs.len() * 16) as u64;
                next += 1;
            } else {
                for (k, b) in c.bufs.iter().enumerate() {
                    let i = next + k as u16;
                    let nx = (k + 1 < c.bufs.len()).then_some(i + 1);
                    self.write_desc(DESC, i, b, nx);
                }
                next += c.bufs.len() as u16;
            }
            assert!(next <= QSIZE, "batch needs more than {QSIZE} descriptors");
            heads.push(head);
        }
        for &h in &heads {
            let slot = AVAIL + 4 + 2 * u64::from(self.avail_idx % QSIZE);
            self.put(slot, &h.to_le_bytes());
            self.avail_idx = self.avail_idx.wrapping_add(1);
        }
        // used_event: ask for a notification after every buffer.
        self.put(
            AVAIL + 4 + 2 * u64::from(QSIZE),
            &self.used_seen.to_le_bytes(),
        );
        self.mem
            .store(self.avail_idx, GuestAddress(AVAIL + 2), Ordering::Release)
            .unwrap();
        self.kick.write(1).unwrap();
        heads
    }

    /// Makes `chains` available at once, kicks, and waits (up to `limit`)
    /// for all of them to be used. Results in `chains` order.
    pub fn run_with(&mut self, chains: &[Chain], limit: Duration) -> Vec<Done> {
        let heads = self.submit(chains);
        self.collect(chains, &heads, limit)
    }

    /// Waits (up to `limit`) for the submitted `chains` (with `heads`) to
    /// be used. Results in `chains` order.
    pub fn collect(&mut self, chains: &[Chain], heads: &[u16], limit: Duration) -> Vec<Done> {
        let want = self.used_seen.wrapping_add(chains.len() as u16);
        let t = Instant::now();
        loop {
            let idx: u16 = self
                .mem
                .load(GuestAddress(USED + 2), Ordering::Acquire)
                .unwrap();
            if idx == want {
                break;
            }
            assert!(
                t.elapsed() < limit,
                "device used {} of {} buffers within {limit:?}",
                idx.wrapping_sub(self.used_seen),
                chains.len()
            );
            std::thread::sleep(self.poll);
        }
        let mut lens = std::collections::HashMap::new();
        for k in 0..chains.len() as u16 {
            let slot = USED + 4 + 8 * u64::from(self.used_seen.wrapping_add(k) % QSIZE);
            let mut e = [0u8; 8];
            self.mem.read_slice(&mut e, GuestAddress(slot)).unwrap();
            let id = le_u32(&e, 0) as u16;
            assert!(
                lens.insert(id, le_u32(&e, 4)).is_none(),
                "head {id} used twice"
            );
        }
        self.used_seen = want;
        // used_event asked for a notification: the call eventfd must fire
        // (EVENT_IDX honoured; a missing interrupt would hang a real guest).
        let t = Instant::now();
        while self.call.read().is_err() {
            assert!(
                t.elapsed() < Duration::from_secs(2),
                "buffers used but the guest was never notified"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        let out = chains
            .iter()
            .zip(heads)
            .map(|(c, h)| {
                let used_len = *lens
                    .get(h)
                    .unwrap_or_else(|| panic!("head {h} never used; used: {lens:?}"));
                let status = c.status_at.map(|a| {
                    let mut b = [0u8];
                    self.mem.read_slice(&mut b, GuestAddress(a)).unwrap();
                    b[0]
                });
                let mut data = Vec::new();
                for b in &c.data_in {
                    let mut v = vec![0u8; b.len as usize];
                    self.mem.read_slice(&mut v, GuestAddress(b.addr)).unwrap();
                    data.extend_from_slice(&v);
                }
                Done {
                    used_len,
                    status,
                    data,
                }
            })
            .collect();
        self.next_data = DATA;
        out
    }

    /// [`VhostBlk::run_with`] with a 30 s limit.
    pub fn run(&mut self, chains: &[Chain]) -> Vec<Done> {
        self.run_with(chains, Duration::from_secs(30))
    }

    /// One chain.
    pub fn run1(&mut self, c: Chain) -> Done {
        self.run(&[c]).pop().unwrap()
    }

    /// Reads `len` bytes at `sector` (in `segs` buffers); (status, data).
    pub fn read(&mut self, sector: u64, len: usize, segs: usize) -> (u8, Vec<u8>) {
        let c = self.chain(VIRTIO_BLK_T_IN, sector, &[], len, segs);
        let d = self.run1(c);
        (d.status.unwrap(), d.data)
    }

    /// Reads and requires success.
    pub fn read_ok(&mut self, sector: u64, len: usize) -> Vec<u8> {
        let (st, data) = self.read(sector, len, 3);
        assert_eq!(st, S_OK, "read of {len} bytes at sector {sector}");
        data
    }

    /// Writes `data` at `sector`; the status.
    pub fn write(&mut self, sector: u64, data: &[u8]) -> u8 {
        let c = self.chain(VIRTIO_BLK_T_OUT, sector, data, 0, 0);
        self.run1(c).status.unwrap()
    }

    /// A request with no data (FLUSH) or a 16-byte range segment
    /// (DISCARD / WRITE_ZEROES); the status.
    pub fn simple(&mut self, kind: u32, range: Option<(u64, u32, u32)>) -> u8 {
        let mut seg = Vec::new();
        if let Some((sector, n, flags)) = range {
            seg.extend_from_slice(&sector.to_le_bytes());
            seg.extend_from_slice(&n.to_le_bytes());
            seg.extend_from_slice(&flags.to_le_bytes());
        }
        let c = self.chain(kind, 0, &seg, 0, 0);
        self.run1(c).status.unwrap()
    }

    /// GET_ID: (status, the 20 id bytes).
    pub fn get_id(&mut self) -> (u8, Vec<u8>) {
        let c = self.chain(VIRTIO_BLK_T_GET_ID, 0, &[], VIRTIO_BLK_ID_BYTES as usize, 1);
        let d = self.run1(c);
        (d.status.unwrap(), d.data)
    }
}
