//! `lode agent --vhost-user` driven by a real vhost-user frontend (rust-vmm's
//! `vhost` Frontend over the unix socket, guest memory shared with the agent
//! as QEMU shares it), without a VM, so that every request type and broken
//! chains can be sent on purpose:
//!
//! * features, configuration space, queue count and GET_ID;
//! * reads of any size and layout (split, indirect, many at once) equal the
//!   source image; out-of-range and misaligned reads get IOERR;
//! * writes, WRITE_ZEROES and DISCARD land in the session's private overlay;
//!   the next session (VM) sees the original image; named overlays persist;
//! * unknown request types get UNSUPP; malformed chains get IOERR or are
//!   returned unused, and the agent keeps serving;
//! * with the store gone, reads of uncached chunks get IOERR, never wrong
//!   bytes; a read-only export refuses writes;
//! * a frontend that disconnects with requests in flight does not take the
//!   agent down and its overlay is removed.
#![allow(clippy::unwrap_used, missing_docs)]

mod common_agent;

use common_agent::vhost_client::*;
use common_agent::*;
use std::fs;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use virtio_bindings::virtio_blk::*;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};

const TENANT: &str = "acme";
const NAME: &str = "blk";
const EXPORT: &str = "acme/blk";
/// 80 full chunks and a 12 KiB partial one.
const SIZE: u64 = 40 * MIB + 12 * KIB;
const SECTOR: u64 = 512;

fn setup() -> (Env, BlockImage) {
    let env = Env::new();
    let img = BlockImage::create(&env.path("src.raw"), SIZE);
    env.push(&img.path, TENANT, NAME);
    (env, img)
}

/// An agent serving `exports` (`(socket name, EXPORT[,ro])`) over
/// vhost-user (and NBD on its usual socket, which the harness waits for).
fn agent(env: &Env, extra: &[&str], exports: &[(&str, &str)]) -> (Agent, Vec<PathBuf>) {
    let mut args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    let mut socks = Vec::new();
    for (name, export) in exports {
        let sock = env.path(name);
        args.push("--vhost-user".into());
        args.push(format!("{}={export}", sock.display()));
        socks.push(sock);
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    (env.agent("a", &refs), socks)
}

/// Waits until the agent counts `n` vhost-user sessions.
fn wait_sessions(agent: &Agent, n: f64) {
    let t = Instant::now();
    while agent.metric("lode_vhost_user_sessions_total") < n {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "session {n} not counted"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn vhost_user_device_reads_writes_and_private_overlays() {
    let t = Instant::now();
    let (env, img) = setup();
    let (mut agent, socks) = agent(&env, &[], &[("vu.sock", EXPORT)]);
    let mut d = VhostBlk::connect(&socks[0]);

    // Device description.
    assert_eq!(d.capacity(), SIZE / SECTOR, "capacity in sectors");
    assert_eq!(d.blk_size(), 512, "logical block");
    assert_eq!(d.physical_block_exp(), 3, "4 KiB physical block hint");
    assert!(
        d.seg_max() >= 1 && d.seg_max() <= u32::from(QSIZE) - 2,
        "seg_max {}",
        d.seg_max()
    );
    for (bit, what) in [
        (VIRTIO_BLK_F_FLUSH, "FLUSH"),
        (VIRTIO_BLK_F_SEG_MAX, "SEG_MAX"),
        (VIRTIO_BLK_F_BLK_SIZE, "BLK_SIZE"),
        (VIRTIO_BLK_F_DISCARD, "DISCARD"),
        (VIRTIO_BLK_F_WRITE_ZEROES, "WRITE_ZEROES"),
        (VIRTIO_RING_F_EVENT_IDX, "EVENT_IDX"),
        (VIRTIO_RING_F_INDIRECT_DESC, "INDIRECT_DESC"),
    ] {
        assert!(d.offers(bit), "feature {what} not offered");
    }
    assert!(!d.offers(VIRTIO_BLK_F_RO), "read-write export offered RO");
    let (st, id) = d.get_id();
    assert_eq!(st, S_OK, "GET_ID");
    assert_eq!(&id[..EXPORT.len()], EXPORT.as_bytes(), "serial");
    assert!(id[EXPORT.len()..].iter().all(|&b| b == 0), "serial padding");
    wait_sessions(&agent, 1.0);

    // Reads: sizes, offsets (crossing chunk boundaries, the partial last
    // chunk, holes), split into 1..=9 buffers.
    let mut rng = Rng::new(11);
    for i in 0..40 {
        let len = (1 + rng.below(2 * CHUNK / SECTOR)) * SECTOR;
        let sector = rng.below((SIZE - len) / SECTOR + 1);
        let segs = 1 + (i % 9) as usize;
        let (st, data) = d.read(sector, len as usize, segs);
        assert_eq!(st, S_OK, "read {len} at sector {sector}");
        assert_same_bytes(&data, img.slice(sector * SECTOR, len), "vhost read");
    }
    let tail = 12 * KIB;
    assert_same_bytes(
        &d.read_ok((SIZE - tail) / SECTOR, tail as usize),
        img.slice(SIZE - tail, tail),
        "the partial last chunk",
    );
    // An indirect chain, and a batch of 24 reads in flight at once.
    let mut c = d.chain(VIRTIO_BLK_T_IN, 2048, &[], 256 * KIB as usize, 5);
    c.indirect = true;
    let r = d.run1(c);
    assert_eq!(r.status, Some(S_OK), "indirect read");
    assert_eq!(
        r.used_len as u64,
        256 * KIB + 1,
        "used length: data + status"
    );
    assert_same_bytes(
        &r.data,
        img.slice(2048 * SECTOR, 256 * KIB),
        "indirect read",
    );
    let batch: Vec<Chain> = (0..24u64)
        .map(|k| d.chain(VIRTIO_BLK_T_IN, k * 1000 + 7, &[], 64 * KIB as usize, 2))
        .collect();
    for (k, r) in d.run(&batch).into_iter().enumerate() {
        let off = (k as u64 * 1000 + 7) * SECTOR;
        assert_eq!(r.status, Some(S_OK), "batch read {k}");
        assert_same_bytes(&r.data, img.slice(off, 64 * KIB), "batch read");
    }

    // Bad reads: past the end, straddling the end, not a sector multiple.
    assert_eq!(
        d.read(SIZE / SECTOR, 512, 1).0,
        S_IOERR,
        "read past the end"
    );
    assert_eq!(
        d.read(SIZE / SECTOR - 1, 1024, 1).0,
        S_IOERR,
        "read across the end"
    );
    assert_eq!(d.read(0, 100, 1).0, S_IOERR, "read of 100 bytes");
    assert_eq!(d.read(u64::MAX / 2, 512, 1).0, S_IOERR, "sector overflow");
    // Unknown and unsupported types.
    assert_eq!(d.simple(99, None), S_UNSUPP, "type 99");
    assert_eq!(d.simple(VIRTIO_BLK_T_SCSI_CMD, None), S_UNSUPP, "SCSI_CMD");

    // Writes: unaligned to pages (sector 9 = 4608), then read back whole pages.
    let mut data = vec![0u8; 3 * 4096 + 1024];
    rng.fill(&mut data);
    assert_eq!(d.write(9, &data), S_OK, "write");
    let mut want = img.slice(0, 20 * KIB).to_vec();
    want[9 * 512..9 * 512 + data.len()].copy_from_slice(&data);
    assert_same_bytes(&d.read_ok(0, 20 * KIB as usize), &want, "read after write");
    assert_eq!(
        d.write(SIZE / SECTOR, &[1u8; 512]),
        S_IOERR,
        "write past the end"
    );
    assert_eq!(d.simple(VIRTIO_BLK_T_FLUSH, None), S_OK, "flush");
    // WRITE_ZEROES over a pattern region and a chunk boundary; DISCARD.
    let zs = (CHUNK - 8 * KIB) / SECTOR;
    assert_eq!(
        d.simple(VIRTIO_BLK_T_WRITE_ZEROES, Some((zs, 32, 0))),
        S_OK,
        "write zeroes"
    );
    let got = d.read_ok(zs - 8, 48 * 512);
    assert_same_bytes(
        &got[..4096],
        img.slice((zs - 8) * SECTOR, 4096),
        "before the zeroes",
    );
    assert!(
        got[4096..4096 + 16 * 1024].iter().all(|&b| b == 0),
        "zeroed range"
    );
    assert_same_bytes(
        &got[4096 + 16 * 1024..],
        img.slice((zs + 32) * SECTOR, 4096),
        "after the zeroes",
    );
    assert_eq!(
        d.simple(
            VIRTIO_BLK_T_WRITE_ZEROES,
            Some((zs, 8, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP))
        ),
        S_OK,
        "write zeroes with unmap"
    );
    assert_eq!(
        d.simple(VIRTIO_BLK_T_WRITE_ZEROES, Some((SIZE / SECTOR - 4, 8, 0))),
        S_IOERR,
        "write zeroes past the end"
    );
    assert_eq!(
        d.simple(VIRTIO_BLK_T_DISCARD, Some((64, 64, 0))),
        S_OK,
        "discard"
    );
    assert_eq!(
        d.simple(VIRTIO_BLK_T_DISCARD, Some((64, 64, 1))),
        S_UNSUPP,
        "discard flags"
    );

    // Malformed chains.
    let mut bad: Vec<(Chain, &str, Option<u8>)> = Vec::new();
    // A header of 8 bytes.
    let mut c = d.chain(VIRTIO_BLK_T_IN, 0, &[], 512, 1);
    c.bufs[0].len = 8;
    bad.push((c, "short header", Some(S_IOERR)));
    // A data buffer outside guest memory.
    let mut c = d.chain(VIRTIO_BLK_T_IN, 0, &[], 512, 1);
    c.bufs[1].addr = (MEM_SIZE as u64) - 100;
    c.data_in.clear();
    bad.push((c, "buffer outside memory", Some(S_IOERR)));
    // A readable buffer after a writable one.
    let mut c = d.chain(VIRTIO_BLK_T_IN, 0, &[], 512, 1);
    let h = c.bufs.remove(0);
    c.bufs.insert(1, h);
    c.data_in.clear();
    bad.push((c, "readable after writable", Some(S_IOERR)));
    // No writable byte at all: nowhere to put a status.
    let mut c = d.chain(VIRTIO_BLK_T_OUT, 0, &[7u8; 512], 0, 0);
    c.bufs.pop();
    c.status_at = None;
    bad.push((c, "no status byte", None));
    // An absurd transfer: 64 MiB claimed in one buffer.
    let mut c = d.chain(VIRTIO_BLK_T_IN, 0, &[], 512, 1);
    c.bufs[1].len = 64 << 20;
    c.data_in.clear();
    bad.push((c, "64 MiB buffer", Some(S_IOERR)));
    for (c, what, want) in bad {
        let r = d.run1(c);
        match want {
            Some(s) => assert_eq!(r.status, Some(s), "{what}: status"),
            None => assert!(
                r.status.is_none() || r.status == Some(0xff) || r.status == Some(S_IOERR),
                "{what}: status {:?}",
                r.status
            ),
        }
        assert!(r.used_len <= 1, "{what}: used length {}", r.used_len);
    }
    // The device still works, and the malformed write changed nothing.
    assert_same_bytes(
        &d.read_ok(0, 20 * KIB as usize),
        &want,
        "read after malformed chains",
    );
    agent.assert_alive();

    // Disconnect: the overlay goes; the next VM sees the original image.
    drop(d);
    agent.assert_no_connection_overlays();
    let mut d = VhostBlk::connect(&socks[0]);
    assert_same_bytes(
        &d.read_ok(0, 20 * KIB as usize),
        img.slice(0, 20 * KIB),
        "new session",
    );
    assert_same_bytes(
        &d.read_ok(zs - 8, 48 * 512),
        img.slice((zs - 8) * SECTOR, 48 * 512),
        "new session, zeroed range",
    );
    wait_sessions(&agent, 2.0);
    drop(d);
    agent.assert_no_connection_overlays();
    agent.assert_alive();
    eprintln!(
        "vhost_user_device_reads_writes_and_private_overlays: {:.1} s",
        t.elapsed().as_secs_f64()
    );
}

/// Read-only and named exports, a failing store, and a frontend that goes
/// away with requests in flight.
#[test]
fn vhost_user_failures_read_only_and_named_overlays() {
    let t = Instant::now();
    let (env, img) = setup();
    let ro = format!("{EXPORT},ro");
    let named = format!("{EXPORT}@keep");
    let (mut agent, socks) = agent(
        &env,
        &["--store-timeout", "2", "--store-retries", "1"],
        &[
            ("ro.sock", &ro),
            ("named.sock", &named),
            ("rw.sock", EXPORT),
        ],
    );

    // Read-only: RO offered, writes refused, reads and flush fine.
    let mut d = VhostBlk::connect(&socks[0]);
    assert!(d.offers(VIRTIO_BLK_F_RO), "RO not offered");
    assert!(
        !d.offers(VIRTIO_BLK_F_DISCARD),
        "DISCARD offered on a read-only disk"
    );
    assert_eq!(
        d.write(0, &[1u8; 4096]),
        S_IOERR,
        "write to a read-only disk"
    );
    assert_eq!(d.simple(VIRTIO_BLK_T_FLUSH, None), S_OK, "flush");
    assert_same_bytes(&d.read_ok(0, 8192), img.slice(0, 8192), "read-only read");
    drop(d);

    // Named overlay: writes survive the session.
    let mut d = VhostBlk::connect(&socks[1]);
    assert_eq!(d.write(64, &[0x42u8; 4096]), S_OK, "named write");
    assert_eq!(d.simple(VIRTIO_BLK_T_FLUSH, None), S_OK, "named flush");
    drop(d);
    let mut d = VhostBlk::connect(&socks[1]);
    assert_eq!(
        d.read_ok(64, 4096),
        vec![0x42u8; 4096],
        "named overlay after reconnect"
    );
    drop(d);

    // Store gone: an uncached chunk fails with IOERR within the bounded
    // time, never with wrong bytes; cached chunks are still served.
    let mut d = VhostBlk::connect(&socks[2]);
    assert_same_bytes(
        &d.read_ok(0, 2 * CHUNK as usize),
        img.slice(0, 2 * CHUNK),
        "warm-up",
    );
    let chunks = store_root(&env.store).join("chunks");
    let away = env.path("chunks-away");
    fs::rename(&chunks, &away).unwrap();
    let t0 = Instant::now();
    let c = d.chain(VIRTIO_BLK_T_IN, 40 * CHUNK / SECTOR + 1, &[], 8192, 2);
    let r = d.run_with(&[c], Duration::from_secs(15)).pop().unwrap();
    assert_eq!(r.status, Some(S_IOERR), "read with the store gone");
    assert!(
        r.data.iter().all(|&b| b == 0xa5),
        "bytes written into the guest's buffer on a failed read"
    );
    assert!(
        t0.elapsed() < Duration::from_secs(12),
        "error took {:?}",
        t0.elapsed()
    );
    assert_same_bytes(
        &d.read_ok(8, 4096),
        img.slice(4096, 4096),
        "cached read, store gone",
    );
    fs::rename(&away, &chunks).unwrap();
    assert_same_bytes(
        &d.read_ok(40 * CHUNK / SECTOR + 1, 8192),
        img.slice(40 * CHUNK + SECTOR, 8192),
        "store back",
    );

    // Gone with 30 reads of uncached data in flight (indirect chains).
    let batch: Vec<Chain> = (0..30u64)
        .map(|k| {
            let sector = (50 + k % 25) * CHUNK / SECTOR;
            let mut c = d.chain(VIRTIO_BLK_T_IN, sector, &[], 128 * KIB as usize, 4);
            c.indirect = true;
            c
        })
        .collect();
    d.submit(&batch);
    drop(d);
    agent.assert_no_connection_overlays();
    agent.assert_alive();
    let mut d = VhostBlk::connect(&socks[2]);
    assert_same_bytes(
        &d.read_ok(60 * CHUNK / SECTOR, 4096),
        img.slice(60 * CHUNK, 4096),
        "after an abrupt disconnect",
    );
    drop(d);
    agent.assert_no_connection_overlays();
    agent.assert_alive();
    eprintln!(
        "vhost_user_failures_read_only_and_named_overlays: {:.1} s",
        t.elapsed().as_secs_f64()
    );
}

/// Requests in flight when the agent is SIGKILLed complete after the
/// frontend reconnects to the restarted agent (`INFLIGHT_SHMFD`): the new
/// agent finds them in the shared region and resubmits them, reads and a
/// write queued behind them, with the right data and no error.
#[test]
fn in_flight_requests_survive_a_killed_agent() {
    let (env, img) = setup();
    let mut svc = common_agent::service::Service::new(&env, "inf");
    // Every store fetch takes 1.5 s: the reads are in flight when the agent dies.
    svc.extra = vec!["--inject-store-latency-ms".into(), "1500".into()];
    svc.start();
    let v = svc.attach(&[EXPORT, "--rw", "--via", "vhost-user"]);
    let sock = PathBuf::from(v["socket"].as_str().unwrap());
    let mut d = VhostBlk::connect_with(&sock, true);
    // Chunks that are stored (not holes): each read waits for the store.
    let at = [10u64, 17, 24, 31, 44, 51];
    let mut chains: Vec<Chain> = at
        .iter()
        .map(|c| {
            d.chain(
                VIRTIO_BLK_T_IN,
                c * CHUNK / SECTOR,
                &[],
                64 * KIB as usize,
                2,
            )
        })
        .collect();
    let data = vec![0x5eu8; 8192];
    chains.push(d.chain(VIRTIO_BLK_T_OUT, 3 * CHUNK / SECTOR, &data, 0, 1));
    let heads = d.submit(&chains);
    let t = Instant::now();
    while d.inflight_marked() < chains.len() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "requests not marked in flight: {} of {}",
            d.inflight_marked(),
            chains.len()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    svc.kill();
    svc.start();
    d.reconnect(&sock);
    let done = d.collect(&chains, &heads, Duration::from_secs(60));
    for (k, r) in done.iter().enumerate().take(6) {
        let off = at[k] * CHUNK;
        assert_eq!(r.status, Some(S_OK), "read {k} after the restart");
        assert_same_bytes(&r.data, img.slice(off, 64 * KIB), "resubmitted read");
    }
    assert_eq!(done[6].status, Some(S_OK), "write after the restart");
    assert_eq!(d.inflight_marked(), 0, "requests left marked in flight");
    assert_eq!(
        d.read_ok(3 * CHUNK / SECTOR, 8192),
        data,
        "the write landed"
    );
    svc.assert_alive();
}
