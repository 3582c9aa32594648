//! `lode agent` through standard NBD clients: qemu-img, qemu-io, nbdinfo.
//!
//! * whole-image copies equal the source and `lode pull`;
//! * random reads (pattern checks and hex dumps) equal the source;
//! * writes land in a private copy-on-write overlay: visible to their own
//!   connection (partial pages too), never to another connection; named
//!   overlays persist across connections;
//! * export listing and unknown exports.
#![allow(clippy::unwrap_used, missing_docs)]

mod common_agent;

use common_agent::nbd_client::Conn;
use common_agent::*;
use std::time::Instant;

const TENANT: &str = "acme";
const NAME: &str = "blk";
const EXPORT: &str = "acme/blk";
/// 80 full chunks and a 12 KiB partial one.
const SIZE: u64 = 40 * MIB + 12 * KIB;

fn setup() -> (Env, BlockImage) {
    require_tool("qemu-img", "qemu-utils");
    require_tool("qemu-io", "qemu-utils");
    let env = Env::new();
    let img = BlockImage::create(&env.path("src.raw"), SIZE);
    env.push(&img.path, TENANT, NAME);
    (env, img)
}

fn hx(b: u8) -> String {
    format!("{b:#04x}")
}

/// Test 1 of the brief: `qemu-img convert` of the export is byte-identical to the source and
/// to `lode pull`.
#[test]
fn qemu_img_convert_equals_source_and_pull() {
    let t = Instant::now();
    let (env, img) = setup();
    let agent = env.agent("a", &[]);
    let out = env.path("out.raw");
    qemu_img_convert(&agent.uri(EXPORT), &out).ok();
    assert_file_is(
        &out,
        &img.data,
        "qemu-img convert of the NBD export vs the source",
    );
    let pulled = env.path("pulled.raw");
    env.pull(TENANT, NAME, &pulled);
    assert_file_is(&pulled, &img.data, "lode pull vs the source");
    // Only stored chunks were fetched, each once; holes never.
    let unique = env.inspect(TENANT, NAME)["unique_chunks"].as_u64().unwrap();
    assert_eq!(
        agent.metric(STORE_HITS),
        unique as f64,
        "store fetches for one full read"
    );
    eprintln!(
        "qemu_img_convert_equals_source_and_pull: {:.1} s",
        t.elapsed().as_secs_f64()
    );
}

/// Test 2a of the brief: Random reads through qemu-io: byte-pattern checks in many regions
/// (`read -P`) and hex dumps of unaligned ranges that cross region, page and
/// chunk boundaries (`read -v`), all against the source.
#[test]
fn qemu_io_random_reads_match_source() {
    let t = Instant::now();
    let (env, img) = setup();
    let agent = env.agent("a", &[]);
    let uri = agent.uri(EXPORT);
    let mut rng = Rng::new(7);

    let patterns = img.pattern_regions();
    let mut cmds = Vec::new();
    // Whole regions, the short last one included.
    for &(r, p) in patterns.iter().step_by(9).chain(patterns.last()) {
        cmds.push(format!(
            "read -P {} {} {}",
            hx(p),
            r * REGION,
            img.region_len(r)
        ));
    }
    // Random sub-ranges of pattern regions.
    for _ in 0..60 {
        let (r, p) = patterns[rng.below(patterns.len() as u64) as usize];
        let rl = img.region_len(r);
        let off = rng.below(rl);
        let len = 1 + rng.below(rl - off);
        cmds.push(format!("read -P {} {} {}", hx(p), r * REGION + off, len));
    }
    // Holes read as zeros.
    for c in [3u64, 8, 48, 78] {
        assert_eq!(BlockImage::region(c * CHUNK / REGION), Region::Zero);
        cmds.push(format!("read -P 0 {} {}", c * CHUNK, CHUNK));
    }
    let o = qemu_io_ok(&uri, &cmds);
    let text = o.stdout_str();
    // Negative control: a wrong pattern must be reported as a failure.
    let (r, p) = patterns[3];
    let wrong = qemu_io(
        &uri,
        &[format!("read -P {} {} 512", hx(p ^ 0xff), r * REGION)],
    );
    assert!(
        qemu_io_failed(&wrong),
        "qemu-io did not report a pattern mismatch: {wrong:?}"
    );
    assert_eq!(
        text.matches("read ").count(),
        cmds.len(),
        "qemu-io did not run every read:\n{text}"
    );

    // Unaligned hex dumps, compared byte for byte.
    let mut ranges = vec![
        (CHUNK - 5, 11),
        (CHUNK * 15 - 300, 700),
        (SIZE - 37, 37),
        (0, 1),
        (REGION - 1, 2),
    ];
    for _ in 0..20 {
        let len = 1 + rng.below(600);
        let off = rng.below(SIZE - len);
        ranges.push((off, len));
    }
    let cmds: Vec<String> = ranges
        .iter()
        .map(|(o, l)| format!("read -v {o} {l}"))
        .collect();
    let o = qemu_io_ok(&uri, &cmds);
    let text = o.stdout_str();
    for (off, len) in ranges {
        // Each dump is parsed from its own section of the output.
        let marker = format!("read {len}/{len} bytes at offset {off}\n");
        let end = text
            .find(&marker)
            .unwrap_or_else(|| panic!("no output for read -v {off} {len}:\n{text}"));
        let start = text[..end]
            .rfind(" ops/sec)\n")
            .map(|i| i + 10)
            .unwrap_or(0);
        let got = parse_qemu_io_dump(&text[start..end], off, len);
        assert_same_bytes(
            &got,
            img.slice(off, len),
            &format!("qemu-io read -v {off} {len}"),
        );
    }
    eprintln!(
        "qemu_io_random_reads_match_source: {:.1} s",
        t.elapsed().as_secs_f64()
    );
}

/// Test 2b of the brief: Writes go to a private overlay: the writing connection reads them back
/// (aligned, partial-page and chunk-crossing), the bytes around them keep their
/// original values, and another connection still sees the image.
#[test]
fn writes_are_private_to_their_connection() {
    let t = Instant::now();
    let (env, img) = setup();
    let agent = env.agent("a", &[]);
    let uri = agent.uri(EXPORT);
    let Region::Pattern(p0) = BlockImage::region(0) else {
        panic!("region 0 is a pattern")
    };
    let Region::Pattern(p7) = BlockImage::region(7) else {
        panic!("region 7 is a pattern")
    };
    assert_eq!(
        BlockImage::region(8),
        Region::Random,
        "chunk 1 is random data"
    );

    // Expected view of the writing connection.
    let mut mine = img.data.clone();
    mine[4096..12288].fill(0xab);
    mine[100..110].fill(0xcd);
    let cross = (CHUNK - 3000, 7000u64);
    mine[cross.0 as usize..(cross.0 + cross.1) as usize].fill(0xee);

    let o = qemu_io_ok(
        &uri,
        &[
            "write -P 0xab 4096 8192".into(),
            "read -P 0xab 4096 8192".into(),
            format!("read -P {} 0 100", hx(p0)),
            // Partial page: 10 bytes at 100 inside page 0.
            "write -P 0xcd 100 10".into(),
            "read -P 0xcd 100 10".into(),
            format!("read -P {} 0 100", hx(p0)),
            format!("read -P {} 110 3986", hx(p0)),
            format!("read -P {} 12288 {}", hx(p0), REGION - 12288),
            // Partial pages on both ends, across a chunk boundary into random data.
            format!("write -P 0xee {} {}", cross.0, cross.1),
            format!("read -P {} {} {}", hx(p7), 7 * REGION, cross.0 - 7 * REGION),
            format!("read -v {} {}", CHUNK - 8192, 16384),
        ],
    );
    let text = o.stdout_str();
    let dump_start = text
        .find(&format!("{:08x}:", CHUNK - 8192))
        .expect("hex dump in qemu-io output");
    let got = parse_qemu_io_dump(&text[dump_start..], CHUNK - 8192, 16384);
    assert_same_bytes(
        &got,
        &mine[(CHUNK - 8192) as usize..(CHUNK + 8192) as usize],
        "write across a chunk boundary, read back",
    );

    // A new connection sees none of it.
    qemu_io_ok(
        &uri,
        &[
            format!("read -P {} 0 {}", hx(p0), REGION),
            format!("read -P {} {} {}", hx(p7), 7 * REGION, REGION),
            format!("read -v {} 16", CHUNK),
        ],
    );
    let o = qemu_io_ok(&uri, &[format!("read -v {} 64", CHUNK - 32)]);
    let got = parse_qemu_io_dump(&o.stdout_str(), CHUNK - 32, 64);
    assert_same_bytes(
        &got,
        img.slice(CHUNK - 32, 64),
        "second connection after another's write",
    );

    // Two connections open at once: one writes, the other (qemu-io) reads the original.
    let mut a = Conn::go_ok(&agent.sock, EXPORT);
    let off = 20 * REGION + 4000; // region 20, a pattern region of chunk 2
    let Region::Pattern(p20) = BlockImage::region(20) else {
        panic!("region 20 is a pattern")
    };
    assert_eq!(a.write(off, &[0x77; 5000]).unwrap(), 0, "WRITE");
    assert_eq!(
        a.read_ok(off, 5000),
        vec![0x77; 5000],
        "own write read back"
    );
    qemu_io_ok(
        &uri,
        &[
            format!("read -P {} {} 5000", hx(p20), off),
            format!("read -P {} {} {}", hx(p20), 20 * REGION, REGION),
        ],
    );
    let mut expect = img.slice(20 * REGION, REGION).to_vec();
    expect[4000..9000].fill(0x77);
    assert_same_bytes(
        &a.read_ok(20 * REGION, REGION as u32),
        &expect,
        "writer's view after the other connection read",
    );
    a.disconnect();
    let mut b = Conn::go_ok(&agent.sock, EXPORT);
    assert_same_bytes(
        &b.read_ok(20 * REGION, REGION as u32),
        img.slice(20 * REGION, REGION),
        "after the writer left",
    );
    b.disconnect();
    agent.assert_no_connection_overlays();
    eprintln!(
        "writes_are_private_to_their_connection: {:.1} s",
        t.elapsed().as_secs_f64()
    );
}

/// Test 2c of the brief: A named overlay (`T/NAME@OVERLAY`) keeps its writes for the next
/// connection to the same name; the plain export and other names never see
/// them.
#[test]
fn named_overlays_persist_across_connections() {
    let (env, _img) = setup();
    let agent = env.agent("a", &[]);
    let Region::Pattern(p) = BlockImage::region(2) else {
        panic!("region 2 is a pattern")
    };
    let off = 2 * REGION + 123;
    qemu_io_ok(
        &agent.uri("acme/blk@vm1"),
        &[format!("write -P 0x42 {off} 5000"), "flush".into()],
    );
    qemu_io_ok(
        &agent.uri("acme/blk@vm1"),
        &[
            format!("read -P 0x42 {off} 5000"),
            format!("read -P {} {} 123", hx(p), 2 * REGION),
        ],
    );
    qemu_io_ok(
        &agent.uri(EXPORT),
        &[format!("read -P {} {off} 5000", hx(p))],
    );
    qemu_io_ok(
        &agent.uri("acme/blk@vm2"),
        &[format!("read -P {} {off} 5000", hx(p))],
    );
}

/// Test 3 of the brief: `nbdinfo --list` shows every pushed image with its size; an unknown
/// export is refused.
#[test]
fn nbdinfo_lists_exports_and_refuses_unknown_ones() {
    require_tool("nbdinfo", "libnbd-bin");
    let env = Env::new();
    let img = BlockImage::create(&env.path("src.raw"), SIZE);
    env.push(&img.path, TENANT, NAME);
    let small = BlockImage::create(&env.path("small.raw"), MIB + 512);
    env.push(&small.path, TENANT, "small");
    env.push(&small.path, "globex", "tiny");
    let agent = env.agent("a", &[]);

    let mut c = std::process::Command::new("nbdinfo");
    c.args([
        "--json",
        "--list",
        &format!("nbd+unix:///?socket={}", agent.sock.display()),
    ]);
    let o = run_timeout(&mut c, std::time::Duration::from_secs(30)).ok();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("nbdinfo --json: {e}: {}", o.stdout_str()));
    let mut got: Vec<(String, u64)> = v["exports"]
        .as_array()
        .unwrap_or_else(|| panic!("no exports array in {v}"))
        .iter()
        .map(|e| {
            (
                e["export-name"].as_str().unwrap().to_string(),
                e["export-size"].as_u64().unwrap(),
            )
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            ("acme/blk".to_string(), SIZE),
            ("acme/small".to_string(), MIB + 512),
            ("globex/tiny".to_string(), MIB + 512)
        ],
        "nbdinfo --list"
    );

    let mut c = std::process::Command::new("nbdinfo");
    c.args(["--size", &agent.uri(EXPORT)]);
    let o = run_timeout(&mut c, std::time::Duration::from_secs(30)).ok();
    assert_eq!(o.stdout_str().trim(), SIZE.to_string());

    for bad in [
        "acme/nope",
        "nobody/blk",
        "acme",
        "acme/blk/x",
        "../etc/passwd",
    ] {
        let mut c = std::process::Command::new("nbdinfo");
        c.arg(agent.uri(bad));
        let o = run_timeout(&mut c, std::time::Duration::from_secs(30));
        assert!(
            !o.status.success(),
            "nbdinfo on unknown export {bad:?} succeeded:\n{}",
            o.stdout_str()
        );
    }
    // The server is still fine.
    let mut c = std::process::Command::new("nbdinfo");
    c.args(["--size", &agent.uri("acme/small")]);
    run_timeout(&mut c, std::time::Duration::from_secs(30)).ok();
}

/// Re-pushing a name while the agent runs: new connections get the new
/// image, a connection opened before keeps reading the old one.
#[test]
fn repushed_image_is_served_to_new_connections() {
    let (env, img) = setup();
    let agent = env.agent("a", &[]);
    let mut old = Conn::go_ok(&agent.sock, EXPORT);
    assert_same_bytes(
        &old.read_ok(0, CHUNK as u32),
        img.slice(0, CHUNK),
        "before the re-push",
    );
    let mut v2 = img.data.clone();
    v2.truncate((8 * MIB) as usize);
    for (i, b) in v2.iter_mut().enumerate() {
        *b = b.wrapping_add(1 + (i % 7) as u8);
    }
    let p2 = env.path("v2.raw");
    std::fs::write(&p2, &v2).unwrap();
    env.push(&p2, TENANT, NAME);
    let mut new = Conn::go_ok(&agent.sock, EXPORT);
    assert_eq!(new.size, 8 * MIB, "size of the re-pushed image");
    assert_same_bytes(
        &new.read_ok(0, (8 * MIB) as u32),
        &v2,
        "new connection after the re-push",
    );
    assert_eq!(old.size, SIZE);
    assert_same_bytes(
        &old.read_ok(20 * MIB, CHUNK as u32),
        img.slice(20 * MIB, CHUNK),
        "old connection after the re-push",
    );
    let out = env.path("out.raw");
    qemu_img_convert(&agent.uri(EXPORT), &out).ok();
    assert_file_is(&out, &v2, "qemu-img convert after the re-push");
}

/// A named overlay belongs to its export: `acme/blk@vm1` and
/// `globex/blk@vm1` (another tenant, same overlay name) must neither share
/// pages nor lock each other out.
///
/// Ignored until fixed: the agent keys named overlays (their file and their
/// in-use claim) by the overlay name alone, so another tenant's connection to
/// `OTHER/IMAGE@vm1` reads the pages written through `acme/blk@vm1`.
#[test]

fn named_overlays_are_per_export() {
    let (env, img) = setup();
    env.push(&img.path, "globex", NAME);
    let agent = env.agent("a", &[]);
    let Region::Pattern(p) = BlockImage::region(0) else {
        panic!("region 0 is a pattern")
    };
    qemu_io_ok(
        &agent.uri("acme/blk@vm1"),
        &["write -P 0xaa 0 4096".into(), "flush".into()],
    );
    let o = qemu_io(
        &agent.uri("globex/blk@vm1"),
        &[format!("read -P {} 0 4096", hx(p))],
    );
    assert!(
        !qemu_io_failed(&o),
        "globex/blk@vm1 does not read its own image (acme's overlay leaked?): {o:?}"
    );
    // While acme holds its overlay, globex's same-named overlay is not refused.
    let _held = Conn::go_ok(&agent.sock, "acme/blk@vm1");
    match Conn::go(&agent.sock, "globex/blk@vm1") {
        Ok(c) => c.disconnect(),
        Err(e) => panic!("globex/blk@vm1 refused while acme/blk@vm1 is connected: {e:?}"),
    }
}

/// Extents of `nbdinfo --map` (base:allocation) as (offset, length, type).
fn nbd_map(uri: &str) -> Vec<(u64, u64, u64)> {
    let mut c = std::process::Command::new("nbdinfo");
    c.args(["--map", "--json", uri]);
    let o = run_timeout(&mut c, std::time::Duration::from_secs(30)).ok();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("nbdinfo --map --json: {e}: {}", o.stdout_str()));
    v.as_array()
        .unwrap_or_else(|| panic!("no extent array in {v}"))
        .iter()
        .map(|e| {
            (
                e["offset"].as_u64().unwrap(),
                e["length"].as_u64().unwrap(),
                e["type"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Expected `base:allocation` map: all-zero chunks not in `written` are
/// holes (type 3), the rest data (type 0), runs merged.
fn expected_map(data: &[u8], written: &[u64]) -> Vec<(u64, u64, u64)> {
    let mut out: Vec<(u64, u64, u64)> = Vec::new();
    for (i, c) in data.chunks(CHUNK as usize).enumerate() {
        let hole = c.iter().all(|&b| b == 0) && !written.contains(&(i as u64));
        let t = if hole { 3 } else { 0 };
        match out.last_mut() {
            Some((_, len, ty)) if *ty == t => *len += c.len() as u64,
            _ => out.push((i as u64 * CHUNK, c.len() as u64, t)),
        }
    }
    out
}

/// Structured replies: `BLOCK_STATUS` reports exactly the image's hole chunks
/// (what `qemu-img map`/`nbdcopy` use to skip them), a write into a hole turns
/// that chunk into data for its own overlay only, and reads that mix
/// overlay pages with a hole (sent as `OFFSET_HOLE`) return the right bytes.
#[test]
fn block_status_reports_holes_and_overlay_writes() {
    require_tool("nbdinfo", "libnbd-bin");
    let (env, img) = setup();
    let agent = env.agent("a", &[]);
    let fetched_before = agent.metric(STORE_HITS);
    assert_eq!(
        nbd_map(&agent.uri(EXPORT)),
        expected_map(&img.data, &[]),
        "base:allocation map of the export"
    );
    assert_eq!(
        agent.metric(STORE_HITS),
        fetched_before,
        "BLOCK_STATUS fetched chunks"
    );
    // Chunk 3 is a hole; write 4 KiB into it through a named overlay.
    assert!(img.slice(3 * CHUNK, CHUNK).iter().all(|&b| b == 0));
    let off = 3 * CHUNK + 8192;
    qemu_io_ok(
        &agent.uri("acme/blk@bs"),
        &[format!("write -P 0x42 {off} 4096"), "flush".into()],
    );
    assert_eq!(
        nbd_map(&agent.uri("acme/blk@bs")),
        expected_map(&img.data, &[3]),
        "map after a write into hole chunk 3"
    );
    assert_eq!(
        nbd_map(&agent.uri(EXPORT)),
        expected_map(&img.data, &[]),
        "another connection's map after the write"
    );
    qemu_io_ok(
        &agent.uri("acme/blk@bs"),
        &[
            format!("read -P 0 {} 8192", 3 * CHUNK),
            format!("read -P 0x42 {off} 4096"),
            format!("read -P 0 {} {}", off + 4096, CHUNK - 8192 - 4096),
        ],
    );
    // One request spanning data chunk 2, written hole chunk 3 and data chunk 4.
    let (s, l) = (3 * CHUNK - 16, CHUNK + 32);
    let span = qemu_io_ok(&agent.uri("acme/blk@bs"), &[format!("read -v {s} {l}")]);
    let mut want = img.slice(3 * CHUNK - 16, CHUNK + 32).to_vec();
    want[16 + 8192..16 + 8192 + 4096].fill(0x42);
    assert_same_bytes(
        &common_agent::parse_qemu_io_dump(&span.stdout_str(), s, l),
        &want,
        "read across data, written hole and data",
    );
}
