//! `lode agent` against hand-written NBD traffic: malformed handshakes,
//! abandoned connections, bad requests and unknown exports. Each abuse is
//! followed by a check that a well-behaved client is still served and the
//! agent is alive.
#![allow(clippy::unwrap_used, missing_docs)]

mod common_agent;

use common_agent::nbd_client::*;
use common_agent::*;
use std::collections::HashMap;
use std::io::Write;
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

const EXPORT: &str = "acme/blk";
const SIZE: u64 = 40 * MIB + 12 * KIB;

fn setup() -> (Env, BlockImage) {
    require_tool("qemu-io", "qemu-utils");
    let env = Env::new();
    let img = BlockImage::create(&env.path("src.raw"), SIZE);
    env.push(&img.path, "acme", "blk");
    (env, img)
}

/// A well-behaved client (qemu-io, its own connection) reads two pattern
/// regions correctly, and the agent process is alive.
fn others_still_served(agent: &mut Agent, img: &BlockImage, after: &str) {
    let pats = img.pattern_regions();
    let mut cmds = Vec::new();
    for &(r, p) in [pats[1], pats[pats.len() / 2]].iter() {
        cmds.push(format!(
            "read -P {p:#04x} {} {}",
            r * REGION,
            img.region_len(r)
        ));
    }
    let o = agent.qemu_io(EXPORT, &cmds);
    assert!(
        !qemu_io_failed(&o),
        "after {after}: another client is no longer served: {o:?}"
    );
    agent.assert_alive();
}

/// Garbage and abandoned handshakes end only their own connection.
#[test]
fn bad_handshakes_drop_only_that_client() {
    let t = Instant::now();
    let (env, img) = setup();
    let mut agent = env.agent("a", &[]);
    let sock = agent.sock.clone();

    // Garbage right after the server greeting.
    let mut s = connect(&sock).unwrap();
    read_greeting(&mut s).unwrap();
    s.write_all(&Rng::new(1).bytes(256)).unwrap();
    assert!(
        peer_closes(&mut s),
        "server kept a connection that sent garbage after the greeting"
    );
    others_still_served(&mut agent, &img, "garbage after the greeting");

    // Garbage before even reading the greeting.
    let mut s = connect(&sock).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert!(peer_closes(&mut s), "server kept an HTTP client");
    others_still_served(&mut agent, &img, "an HTTP request");

    // Connect and leave at once.
    drop(UnixStream::connect(&sock).unwrap());
    others_still_served(&mut agent, &img, "connect + close");

    // Leave after the client flags; after half an option header; after half
    // an option payload.
    let mut h = Handshake::start(&sock).unwrap();
    drop(h);
    h = Handshake::start(&sock).unwrap();
    h.s.write_all(&IHAVEOPT.to_be_bytes()[..5]).unwrap();
    drop(h);
    h = Handshake::start(&sock).unwrap();
    let mut opt = IHAVEOPT.to_be_bytes().to_vec();
    opt.extend_from_slice(&OPT_GO.to_be_bytes());
    opt.extend_from_slice(&1000u32.to_be_bytes());
    opt.extend_from_slice(&[0u8; 10]);
    h.s.write_all(&opt).unwrap();
    drop(h);
    others_still_served(&mut agent, &img, "handshakes abandoned midway");

    // An option claiming 1 GiB of data: refused without reading it.
    let mut h = Handshake::start(&sock).unwrap();
    let mut opt = IHAVEOPT.to_be_bytes().to_vec();
    opt.extend_from_slice(&OPT_GO.to_be_bytes());
    opt.extend_from_slice(&(1u32 << 30).to_be_bytes());
    h.s.write_all(&opt).unwrap();
    assert!(
        peer_closes(&mut h.s),
        "server kept a client announcing a 1 GiB option"
    );
    others_still_served(&mut agent, &img, "a 1 GiB option header");

    // A malformed GO payload gets an error reply; the handshake goes on.
    let mut h = Handshake::start(&sock).unwrap();
    h.send_option(OPT_GO, &[0, 0, 0, 50, b'x']).unwrap();
    let r = h.read_reply().unwrap();
    assert!(
        r.kind & 0x8000_0000 != 0,
        "malformed GO answered with {r:?}"
    );
    assert_eq!(
        h.list().unwrap(),
        vec![EXPORT.to_string()],
        "LIST after a malformed GO"
    );
    h.send_option(OPT_ABORT, &[]).unwrap();
    drop(h);

    // A client stalled mid-handshake does not block anyone.
    let mut stalled = Handshake::start(&sock).unwrap();
    stalled.s.write_all(&IHAVEOPT.to_be_bytes()).unwrap();
    others_still_served(&mut agent, &img, "a stalled handshake (still open)");
    drop(stalled);

    // The same over TCP.
    let mut tcp_agent = env.agent_tcp("tcp", &[]);
    let addr = tcp_agent.tcp_addr.clone().unwrap();
    let mut s = TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    read_greeting(&mut s).unwrap();
    s.write_all(&Rng::new(2).bytes(300)).unwrap();
    assert!(
        peer_closes(&mut s),
        "TCP: server kept a connection that sent garbage"
    );
    drop(TcpStream::connect(&addr).unwrap());
    others_still_served(&mut tcp_agent, &img, "TCP garbage");
    eprintln!(
        "bad_handshakes_drop_only_that_client: {:.1} s",
        t.elapsed().as_secs_f64()
    );
}

/// Bad requests after GO get EINVAL in the simple reply and leave the
/// connection usable; vanishing mid-request hurts nobody.
#[test]
fn bad_requests_get_einval() {
    let t = Instant::now();
    let (env, img) = setup();
    let mut agent = env.agent("a", &[]);
    let mut c = Conn::go_ok(&agent.sock, EXPORT);
    assert_eq!(c.size, SIZE, "export size in NBD_INFO_EXPORT");
    assert_eq!(
        c.block_sizes,
        Some((1, 4096, 32 << 20)),
        "NBD_INFO_BLOCK_SIZE"
    );

    let cases: &[(&str, u16, u64, u32)] = &[
        ("READ past the end", CMD_READ, SIZE - 100, 4096),
        ("READ starting at the end", CMD_READ, SIZE, 1),
        ("READ whose end overflows u64", CMD_READ, u64::MAX - 10, 100),
        ("READ of length 0", CMD_READ, 0, 0),
        ("READ of 33 MiB", CMD_READ, 0, 33 << 20),
        ("READ of u32::MAX bytes", CMD_READ, 0, u32::MAX),
        ("unknown command 99", 99, 0, 4096),
        ("WRITE of length 0", CMD_WRITE, 0, 0),
        ("TRIM past the end", CMD_TRIM, SIZE - 4096, 8192),
    ];
    for &(what, cmd, off, len) in cases {
        let e = c
            .command(cmd, off, len, &[])
            .unwrap_or_else(|e| panic!("{what}: connection broken: {e}"));
        assert_eq!(e, EINVAL, "{what}: error code");
    }
    // A WRITE past the end carries its payload: refused, stream stays in sync.
    assert_eq!(
        c.write(SIZE - 10, &[0xaa; 20]).unwrap(),
        EINVAL,
        "WRITE past the end"
    );
    // Valid requests still work on the same connection.
    assert_eq!(c.command(CMD_FLUSH, 0, 0, &[]).unwrap(), 0, "FLUSH");
    assert_eq!(c.command(CMD_TRIM, 0, 4096, &[]).unwrap(), 0, "TRIM");
    assert_same_bytes(
        &c.read_ok(SIZE - 100, 100),
        img.slice(SIZE - 100, 100),
        "READ of the last 100 bytes",
    );
    let big = c.read_ok(MIB, 32 << 20);
    assert_same_bytes(&big, img.slice(MIB, 32 << 20), "READ of exactly 32 MiB");

    // Pipelined reads: replies may come in any order, each with its handle.
    let mut rng = Rng::new(3);
    let mut want = HashMap::new();
    for _ in 0..12 {
        let len = 1 + rng.below(3 * CHUNK) as u32;
        let off = rng.below(SIZE - u64::from(len));
        let h = c.send_request(CMD_READ, off, len, &[]).unwrap();
        want.insert(h, (off, len));
    }
    while !want.is_empty() {
        let r = c.read_reply().unwrap();
        let (off, len) = want
            .remove(&r.handle)
            .unwrap_or_else(|| panic!("reply for unknown handle {}", r.handle));
        assert_eq!(r.error, 0, "pipelined READ {len} at {off}");
        let mut buf = vec![0u8; len as usize];
        std::io::Read::read_exact(&mut c.s, &mut buf).unwrap();
        assert_same_bytes(
            &buf,
            img.slice(off, u64::from(len)),
            &format!("pipelined READ {len} at {off}"),
        );
    }

    // Vanish with a read in flight, and with half a request header.
    c.send_request(CMD_READ, 0, 32 << 20, &[]).unwrap();
    drop(c);
    let mut c = Conn::go_ok(&agent.sock, EXPORT);
    let mut hdr = REQUEST_MAGIC.to_be_bytes().to_vec();
    hdr.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 1, 0, 0]);
    c.s.write_all(&hdr).unwrap();
    drop(c);
    others_still_served(&mut agent, &img, "clients vanishing mid-request");

    // A bad request magic drops the client.
    let mut c = Conn::go_ok(&agent.sock, EXPORT);
    c.s.write_all(&[0x55; 28]).unwrap();
    assert!(
        peer_closes(&mut c.s),
        "server kept a client that sent a bad request magic"
    );
    others_still_served(&mut agent, &img, "a bad request magic");
    agent.assert_no_connection_overlays();
    eprintln!(
        "bad_requests_get_einval: {:.1} s",
        t.elapsed().as_secs_f64()
    );
}

/// A WRITE announcing more than 32 MiB is not read: the client is dropped.
#[test]
fn oversize_write_drops_the_client() {
    let (env, img) = setup();
    let mut agent = env.agent("a", &[]);
    let mut c = Conn::go_ok(&agent.sock, EXPORT);
    c.send_request(CMD_WRITE, 0, 33 << 20, &[]).unwrap();
    let _ = c.s.write_all(&[0u8; 4096]);
    // Either an EINVAL reply then close, or a close: never a success.
    if let Ok(r) = c.read_reply() {
        assert_ne!(r.error, 0, "a 33 MiB WRITE was accepted");
    }
    assert!(
        peer_closes(&mut c.s),
        "server kept a client that announced a 33 MiB WRITE"
    );
    others_still_served(&mut agent, &img, "a 33 MiB WRITE");
}

/// Unknown exports: GO and INFO answer NBD_REP_ERR_UNKNOWN (and the
/// handshake can go on); EXPORT_NAME closes the connection.
#[test]
fn unknown_exports_are_refused() {
    let (env, img) = setup();
    let mut agent = env.agent("a", &[]);
    let mut h = Handshake::start(&agent.sock).unwrap();
    for bad in [
        "acme/nope",
        "other/blk",
        "acme",
        "",
        "acme/blk/../x",
        "acme/blk@bad/overlay",
    ] {
        let r = h.go_or_info(OPT_GO, bad).unwrap();
        let last = r.last().unwrap();
        assert_eq!(
            last.kind,
            REP_ERR_UNKNOWN,
            "GO {bad:?}: reply type {:#x} ({})",
            last.kind,
            String::from_utf8_lossy(&last.data)
        );
        let r = h.go_or_info(OPT_INFO, bad).unwrap();
        assert_eq!(r.last().unwrap().kind, REP_ERR_UNKNOWN, "INFO {bad:?}");
    }
    // INFO on a known export, then GO on the same connection.
    let r = h.go_or_info(OPT_INFO, EXPORT).unwrap();
    assert_eq!(r.last().unwrap().kind, REP_ACK, "INFO {EXPORT}");
    let r = h.go_or_info(OPT_GO, EXPORT).unwrap();
    assert_eq!(
        r.last().unwrap().kind,
        REP_ACK,
        "GO {EXPORT} after refusals"
    );

    let mut h = Handshake::start(&agent.sock).unwrap();
    h.send_option(OPT_EXPORT_NAME, b"acme/nope").unwrap();
    assert!(
        peer_closes(&mut h.s),
        "EXPORT_NAME of an unknown export must close the connection"
    );
    others_still_served(&mut agent, &img, "unknown exports");
}

/// A named overlay serves one connection at a time.
#[test]
fn named_overlay_is_exclusive() {
    let (env, img) = setup();
    let mut agent = env.agent("a", &[]);
    let mut a = Conn::go_ok(&agent.sock, "acme/blk@vm1");
    assert_eq!(a.write(0, &[1, 2, 3]).unwrap(), 0);
    match Conn::go(&agent.sock, "acme/blk@vm1") {
        Err(GoError::Refused { kind, .. }) => {
            assert_eq!(kind, REP_ERR_POLICY, "second GO of a named overlay in use")
        }
        Err(e) => panic!("second GO of a named overlay in use: {e:?}"),
        Ok(_) => panic!("a named overlay was given to two connections at once"),
    }
    assert_eq!(a.command(CMD_FLUSH, 0, 0, &[]).unwrap(), 0);
    a.disconnect();
    // Once released (asynchronously), the next connection gets it with the write.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut b = loop {
        match Conn::go(&agent.sock, "acme/blk@vm1") {
            Ok(b) => break b,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "named overlay never released: {e:?}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    };
    let mut want = img.slice(0, 8).to_vec();
    want[..3].copy_from_slice(&[1, 2, 3]);
    assert_eq!(b.read_ok(0, 8), want, "named overlay content on reconnect");
    b.disconnect();
    others_still_served(&mut agent, &img, "named overlays");
}

/// Writes at the end of an image whose size is not a multiple of the 4 KiB
/// overlay page: the short last page is copied, written and read back right.
#[test]
fn writes_at_an_unaligned_image_end() {
    let env = Env::new();
    let size = 3 * CHUNK + 1536;
    let img = BlockImage::create(&env.path("odd.raw"), size);
    env.push(&img.path, "acme", "odd");
    let agent = env.agent("a", &[]);
    let mut c = Conn::go_ok(&agent.sock, "acme/odd");
    assert_eq!(c.size, size);
    let mut want = img.data.clone();
    for (off, len, byte) in [
        (size - 100, 100u64, 0x11u8),
        (size - 4200, 200, 0x22),
        (size - 1536, 1, 0x33),
        (size - 6000, 6000, 0x44),
    ] {
        assert_eq!(
            c.write(off, &vec![byte; len as usize]).unwrap(),
            0,
            "WRITE {len} at {off}"
        );
        want[off as usize..(off + len) as usize].fill(byte);
        let from = size - 3 * PAGE_LEN;
        assert_same_bytes(
            &c.read_ok(from, (size - from) as u32),
            &want[from as usize..],
            &format!("tail after WRITE {len} at {off}"),
        );
    }
    assert_eq!(
        c.write(size - 10, &[0; 11]).unwrap(),
        EINVAL,
        "WRITE one byte past the end"
    );
    assert_same_bytes(
        &c.read_ok(0, size as u32),
        &want,
        "whole image through the writer",
    );
    let mut other = Conn::go_ok(&agent.sock, "acme/odd");
    assert_same_bytes(
        &other.read_ok(0, size as u32),
        &img.data,
        "whole image through another connection",
    );
    c.disconnect();
    other.disconnect();
    agent.assert_no_connection_overlays();
}

const PAGE_LEN: u64 = 4096;
