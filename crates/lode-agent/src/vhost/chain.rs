//! Descriptor chains: walked from the guest's descriptor table by head
//! index (so a chain can be resubmitted after a restart without the avail
//! ring), checked, and split into a [`Request`]. Every address and length
//! here comes from the guest: nothing is trusted, nothing may panic
//! (fuzzed by `agent_vhost_chain`).

use crate::range::MAX_REQUEST;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, Permissions};

const DESC_F_NEXT: u16 = 1;
const DESC_F_WRITE: u16 = 2;
const DESC_F_INDIRECT: u16 = 4;
/// Bytes of one descriptor.
const DESC_SIZE: u64 = 16;
/// Most descriptors in one chain, direct and indirect together: a longer
/// one is a loop or an abuse and is dropped.
pub const MAX_CHAIN: usize = 4096;
/// Size of a request header (`type`, `reserved`, `sector`).
pub const HEADER: usize = 16;
/// Size of a discard / write-zeroes segment.
pub const RANGE_SEG: usize = 16;

/// One descriptor as the guest wrote it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Desc {
    /// Guest physical address.
    pub addr: u64,
    /// Length.
    pub len: u32,
    /// Device-writable.
    pub write: bool,
}

/// A guest buffer: one descriptor, checked to lie in guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seg {
    /// Start.
    pub addr: GuestAddress,
    /// Length.
    pub len: usize,
}

/// A checked request, ready to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Head descriptor index (what completes it on the used ring).
    pub head: u16,
    /// `VIRTIO_BLK_T_*`.
    pub kind: u32,
    /// First sector.
    pub sector: u64,
    /// Device-readable buffers after the header.
    pub data_out: Vec<Seg>,
    /// Their total length.
    pub out_len: usize,
    /// Device-writable buffers before the status byte.
    pub data_in: Vec<Seg>,
    /// Their total length.
    pub in_len: usize,
    /// Where the status byte goes.
    pub status: GuestAddress,
}

/// Why a chain cannot run.
#[derive(Debug, PartialEq, Eq)]
pub enum Bad {
    /// Malformed, but the status byte can be written.
    Status(GuestAddress),
    /// No status byte to write to (or no sane chain at all).
    Drop,
}

fn read_desc<M: GuestMemory>(mem: &M, table: GuestAddress, index: u16) -> Option<(Desc, u16, u16)> {
    let at = table.checked_add(u64::from(index) * DESC_SIZE)?;
    let mut b = [0u8; DESC_SIZE as usize];
    mem.read_slice(&mut b, at).ok()?;
    let addr = u64::from_le_bytes(b[0..8].try_into().ok()?);
    let len = u32::from_le_bytes(b[8..12].try_into().ok()?);
    let flags = u16::from_le_bytes(b[12..14].try_into().ok()?);
    let next = u16::from_le_bytes(b[14..16].try_into().ok()?);
    Some((
        Desc {
            addr,
            len,
            write: flags & DESC_F_WRITE != 0,
        },
        flags,
        next,
    ))
}

/// The descriptors of the chain starting at `head` of the table at `table`
/// (`size` entries), following `NEXT` links and one level of indirect
/// table; `None` for a broken chain (a head or link out of the table, an
/// unreadable descriptor, a nested or chained indirect table, a loop).
pub fn walk<M: GuestMemory>(
    mem: &M,
    table: GuestAddress,
    size: u16,
    head: u16,
) -> Option<Vec<Desc>> {
    let mut out = Vec::new();
    let (mut table, mut size, mut index) = (table, size, head);
    let mut indirect = false;
    loop {
        if index >= size || out.len() >= MAX_CHAIN {
            return None;
        }
        let (d, flags, next) = read_desc(mem, table, index)?;
        if flags & DESC_F_INDIRECT != 0 {
            if indirect
                || flags & DESC_F_NEXT != 0
                || d.len == 0
                || u64::from(d.len) % DESC_SIZE != 0
            {
                return None;
            }
            let n = u64::from(d.len) / DESC_SIZE;
            if n > MAX_CHAIN as u64 {
                return None;
            }
            indirect = true;
            table = GuestAddress(d.addr);
            size = n as u16;
            index = 0;
            continue;
        }
        out.push(d);
        if flags & DESC_F_NEXT == 0 {
            return Some(out);
        }
        index = next;
    }
}

/// Splits a walked chain into a [`Request`], checking every buffer against
/// guest memory.
pub fn parse<M: GuestMemory>(head: u16, descs: &[Desc], mem: &M) -> Result<Request, Bad> {
    let mut readable: Vec<Seg> = Vec::new();
    let mut writable: Vec<Seg> = Vec::new();
    let mut order_ok = true;
    let mut in_memory = true;
    let mut total: u64 = 0;
    for d in descs {
        let seg = Seg {
            addr: GuestAddress(d.addr),
            len: d.len as usize,
        };
        total += u64::from(d.len);
        let access = if d.write {
            Permissions::Write
        } else {
            Permissions::Read
        };
        if seg.len > 0 && !mem.check_range(seg.addr, seg.len, access) {
            in_memory = false;
        }
        if d.write {
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
    let kind = u32::from_le_bytes(header[0..4].try_into().map_err(|_| Bad::Status(status))?);
    let sector = u64::from_le_bytes(header[8..16].try_into().map_err(|_| Bad::Status(status))?);
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
pub fn skip(segs: &[Seg], mut n: usize) -> Vec<Seg> {
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
pub fn gather<M: GuestMemory>(
    mem: &M,
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
pub fn scatter<M: GuestMemory>(
    mem: &M,
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

#[cfg(test)]
mod tests {
    use super::*;

    type Mem = vm_memory::GuestMemoryMmap<()>;

    fn mem() -> Mem {
        Mem::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap_or_else(|e| panic!("{e}"))
    }

    fn put(m: &Mem, table: u64, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let mut b = addr.to_le_bytes().to_vec();
        b.extend_from_slice(&len.to_le_bytes());
        b.extend_from_slice(&flags.to_le_bytes());
        b.extend_from_slice(&next.to_le_bytes());
        m.write_slice(&b, GuestAddress(table + 16 * u64::from(i)))
            .unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn walks_direct_indirect_and_refuses_loops() {
        let m = mem();
        put(&m, 0, 0, 0x1000, 16, DESC_F_NEXT, 1);
        put(&m, 0, 1, 0x2000, 512, DESC_F_NEXT | DESC_F_WRITE, 2);
        put(&m, 0, 2, 0x3000, 1, DESC_F_WRITE, 0);
        let d = walk(&m, GuestAddress(0), 8, 0).unwrap_or_default();
        assert_eq!(d.len(), 3);
        assert!(!d[0].write && d[1].write);
        // A loop.
        put(&m, 0, 3, 0x1000, 16, DESC_F_NEXT, 3);
        assert_eq!(walk(&m, GuestAddress(0), 8, 3), None);
        // A link out of the table, a head out of the table.
        put(&m, 0, 4, 0x1000, 16, DESC_F_NEXT, 200);
        assert_eq!(walk(&m, GuestAddress(0), 8, 4), None);
        assert_eq!(walk(&m, GuestAddress(0), 8, 8), None);
        // Indirect: a table of 3 at 0x8000.
        put(&m, 0x8000, 0, 0x1000, 16, DESC_F_NEXT, 1);
        put(&m, 0x8000, 1, 0x2000, 4096, DESC_F_NEXT | DESC_F_WRITE, 2);
        put(&m, 0x8000, 2, 0x3000, 1, DESC_F_WRITE, 0);
        put(&m, 0, 5, 0x8000, 48, DESC_F_INDIRECT, 0);
        assert_eq!(walk(&m, GuestAddress(0), 8, 5).map(|d| d.len()), Some(3));
        // Indirect with NEXT, nested indirect, bad length: refused.
        put(&m, 0, 6, 0x8000, 48, DESC_F_INDIRECT | DESC_F_NEXT, 0);
        assert_eq!(walk(&m, GuestAddress(0), 8, 6), None);
        put(&m, 0x8000, 2, 0x8000, 48, DESC_F_INDIRECT, 0);
        assert_eq!(walk(&m, GuestAddress(0), 8, 5), None);
        put(&m, 0, 7, 0x8000, 47, DESC_F_INDIRECT, 0);
        assert_eq!(walk(&m, GuestAddress(0), 8, 7), None);
        // A table past the end of memory.
        assert_eq!(walk(&m, GuestAddress(u64::MAX - 8), 8, 1), None);
    }

    #[test]
    fn parses_requests_and_finds_the_status_byte() {
        let m = mem();
        let hdr: Vec<u8> = [
            1u32.to_le_bytes().to_vec(),
            vec![0; 4],
            9u64.to_le_bytes().to_vec(),
        ]
        .concat();
        m.write_slice(&hdr, GuestAddress(0x1000))
            .unwrap_or_else(|e| panic!("{e}"));
        let descs = [
            Desc {
                addr: 0x1000,
                len: 16,
                write: false,
            },
            Desc {
                addr: 0x2000,
                len: 1024,
                write: false,
            },
            Desc {
                addr: 0x3000,
                len: 1,
                write: true,
            },
        ];
        let r = parse(4, &descs, &m).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!((r.kind, r.sector, r.out_len, r.in_len), (1, 9, 1024, 0));
        assert_eq!(r.status, GuestAddress(0x3000));
        // No writable byte: dropped; a buffer outside memory: IOERR status.
        assert_eq!(parse(4, &descs[..2], &m), Err(Bad::Drop));
        let mut out = descs;
        out[1].addr = (1 << 20) - 10;
        assert_eq!(parse(4, &out, &m), Err(Bad::Status(GuestAddress(0x3000))));
    }
}
