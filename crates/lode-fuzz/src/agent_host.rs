//! lode-agent as a host service: what a VM's frontend, a restarted agent's
//! files and the control API's callers hand it.

use lode_agent::control::api::AttachRequest;
use lode_agent::control::registry::check_request;
use lode_agent::overlay::journal::replay;
use lode_agent::overlay::Bitmap;
use lode_agent::vhost::chain::{parse, walk, Bad, MAX_CHAIN};
use lode_agent::vhost::inflight::InflightRegion;
use std::path::{Component, Path};
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryMmap};

/// Guest memory of the chain target.
const MEM: usize = 64 << 10;

/// vhost-user descriptor chains: the input is guest memory (descriptor
/// table at 0, 64 entries), the first two bytes the head. Walking and
/// parsing never panic; a walked chain is bounded; a parsed request lies
/// in guest memory and its status byte is writable there.
pub fn vhost_chain(data: &[u8]) {
    let Ok(mem) = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM)]) else {
        return;
    };
    let n = data.len().min(MEM);
    if mem.write_slice(&data[..n], GuestAddress(0)).is_err() {
        return;
    }
    let head = data.first().copied().map_or(0, u16::from) % 80;
    let Some(descs) = walk(&mem, GuestAddress(0), 64, head) else {
        return;
    };
    assert!(!descs.is_empty() && descs.len() <= MAX_CHAIN);
    match parse(head, &descs, &mem) {
        Ok(r) => {
            assert!(mem.check_range(r.status, 1, vm_memory::Permissions::Write));
            for s in r.data_in.iter().chain(&r.data_out) {
                assert!(mem.check_range(s.addr, s.len, vm_memory::Permissions::Read));
            }
            assert!(
                r.in_len as u64 + r.out_len as u64
                    <= u64::from(lode_agent::range::MAX_REQUEST) + 16
            );
        }
        Err(Bad::Status(at)) => assert!(mem.check_range(at, 1, vm_memory::Permissions::Write)),
        Err(Bad::Drop) => {}
    }
}

/// The in-flight region a frontend hands a restarted agent: recovery never
/// panics, resubmits each head once, inside the queue, and resumes the
/// ring at the used index plus what it resubmits.
pub fn vhost_inflight(data: &[u8]) {
    let Some((&b0, rest)) = data.split_first() else {
        return;
    };
    let size = 1u16 << (b0 % 9); // 1..=256
    let Ok(r) = InflightRegion::anonymous(size) else {
        return;
    };
    // Fill the region with the input (through the public marking calls
    // would be too kind: write the raw bytes as a frontend could).
    let words: Vec<u64> = rest
        .chunks(8)
        .map(|c| {
            let mut w = [0u8; 8];
            w[..c.len()].copy_from_slice(c);
            u64::from_le_bytes(w)
        })
        .collect();
    r.fill_raw(&words);
    let used = u16::from_le_bytes([
        rest.first().copied().unwrap_or(0),
        rest.get(1).copied().unwrap_or(0),
    ]);
    let rec = r.recover(used, size);
    let mut seen = std::collections::HashSet::new();
    for h in &rec.resubmit {
        assert!(*h < size, "head {h} outside a queue of {size}");
        assert!(seen.insert(*h), "head {h} resubmitted twice");
    }
    assert_eq!(rec.next_avail, used.wrapping_add(rec.resubmit.len() as u16));
    assert_eq!(r.in_flight(), rec.resubmit.len());
}

/// The bitmap journal a restarted agent replays: never panics, sets no
/// page past the image, and a journal with a foreign boot id adds only
/// what a flush marker covers (a subset of what the same boot adds).
pub fn overlay_journal(data: &[u8]) {
    let Some((&w, rest)) = data.split_first() else {
        return;
    };
    let words = u64::from(w) + 1;
    let boot = rest
        .get(8..24)
        .and_then(|b| <[u8; 16]>::try_from(b).ok())
        .unwrap_or([0; 16]);
    let mut same = Bitmap::default();
    replay(rest, words, &boot, &mut same);
    let mut other = Bitmap::default();
    replay(rest, words, &[0xee; 16], &mut other);
    assert!(!same.any(words * 64, u64::MAX / 2), "a page past the image");
    assert!(other.count() <= same.count());
}

/// A control-API attach request: what parses round-trips, and what the
/// checks accept names no path outside its directory.
pub fn control_request(data: &[u8]) {
    let Ok(req) = serde_json::from_slice::<AttachRequest>(data) else {
        return;
    };
    let back: AttachRequest =
        serde_json::from_slice(&serde_json::to_vec(&req).expect("serializes")).expect("re-parses");
    assert_eq!(back, req);
    let Ok(c) = check_request(&req, (1000, 1000)) else {
        return;
    };
    for name in [Some(&req.tenant), Some(&req.image), req.overlay.as_ref()]
        .into_iter()
        .flatten()
    {
        for comp in Path::new(name).components() {
            assert!(
                matches!(comp, Component::Normal(_)),
                "{name:?} escapes its directory"
            );
        }
        assert!(!name.contains('/'), "{name:?} has a slash");
    }
    if req.owner.is_none() {
        assert_eq!((c.uid, c.gid), (1000, 1000));
    }
}
