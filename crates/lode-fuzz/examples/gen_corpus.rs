//! Writes the seed corpora `fuzz/corpus/<target>/seed-*` from lode's real
//! encoders: `cargo run -p lode-fuzz --example gen_corpus [TARGET...]` (only
//! the named targets' seeds when any are named).
//!
//! Seeds are valid (or nearly valid) inputs so fuzzing starts deep in each
//! parser. Some seeds embed random nonces, so re-running changes their bytes.

use lode_chunk::{ChunkKey, ChunkName, ChunkSecret, Codec, Manifest};
use lode_fuzz::agent::NBD_IMAGE_SIZE;
use lode_fuzz::oci::{layout_docs, LAYOUT_SLOTS};
use lode_fuzz::support::{FixedKeys, DIGEST, KEK};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

type Seeds = BTreeMap<&'static str, Vec<Vec<u8>>>;

fn main() -> anyhow_free::Result {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus");
    let mut seeds: Seeds = BTreeMap::new();
    chunk_seeds(&mut seeds);
    agent_seeds(&mut seeds);
    agent_host_seeds(&mut seeds);
    fleet_seeds(&mut seeds);
    oci_seeds(&mut seeds);
    store_seeds(&mut seeds);
    flatten_seeds(&mut seeds);
    ext4_seeds(&mut seeds);
    worker_seeds(&mut seeds);
    let only: Vec<String> = std::env::args().skip(1).collect();
    if only.is_empty() {
        for (name, _) in lode_fuzz::TARGETS {
            assert!(seeds.contains_key(name), "no seeds for {name}");
        }
    }
    for (target, list) in &seeds {
        if !only.is_empty() && !only.iter().any(|t| t == target) {
            continue;
        }
        let dir: PathBuf = root.join(target);
        std::fs::create_dir_all(&dir)?;
        for e in std::fs::read_dir(&dir)? {
            let p = e?.path();
            if p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("seed-"))
            {
                std::fs::remove_file(p)?;
            }
        }
        for (i, s) in list.iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i:02}")), s)?;
        }
        println!("{target}: {} seeds", list.len());
    }
    Ok(())
}

mod anyhow_free {
    pub type Result = std::result::Result<(), Box<dyn std::error::Error>>;
}

fn sealed_manifest(names: Vec<Option<ChunkName>>, size: u64, chunk_size: u32) -> Vec<u8> {
    let secrets: Vec<Option<ChunkSecret>> = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let plain_len = lode_chunk::manifest::plain_len(size, chunk_size, i);
            n.map(|n| ChunkSecret {
                key: ChunkKey(n.0),
                plain_sha: [7; 32],
                codec: if i == 0 { Codec::Zstd } else { Codec::Raw },
                stored_len: if i == 0 { plain_len / 3 } else { plain_len },
                plain_len,
            })
        })
        .collect();
    let binding = lode_chunk::ImageBinding {
        name: "x".into(),
        version: 1,
    };
    let spec = lode_chunk::SealSpec {
        format: lode_chunk::manifest::VERSION,
        tenant: "t",
        binding: Some(&binding),
        image_size: size,
        chunk_size,
        root: "r",
    };
    Manifest::seal(&spec, names, &secrets, &FixedKeys)
        .expect("seal")
        .encode()
}

fn chunk_seeds(s: &mut Seeds) {
    let m3 = sealed_manifest(
        vec![Some(ChunkName([1; 32])), None, Some(ChunkName([2; 32]))],
        3 * 4096 - 100,
        4096,
    );
    s.insert(
        "chunk_manifest_decode",
        vec![
            sealed_manifest(vec![], 0, 4096),
            m3.clone(),
            sealed_manifest(vec![Some(ChunkName([3; 32]))], 512 * 1024, 512 * 1024),
        ],
    );
    // Whole manifests, a header alone, and a header claiming 2^25 chunks.
    let header_len = lode_chunk::ManifestHeader::parse(&m3).expect("header").len;
    let mut huge = m3[..header_len].to_vec();
    huge[12..20].copy_from_slice(&(lode_chunk::manifest::MAX_CHUNKS * 4096).to_le_bytes());
    huge[24..28].copy_from_slice(&(lode_chunk::manifest::MAX_CHUNKS as u32).to_le_bytes());
    s.insert(
        "chunk_manifest_header",
        vec![m3.clone(), m3[..header_len].to_vec(), huge],
    );
    s.insert("store_documents", vec![[&[3u8][..], &m3].concat()]);
    // format << 4 | n, tail (u16), holes, names (31 bytes each, non-holes),
    // len_delta, flip (u16), table (v1/v2: 64-byte entries).
    let mut body = vec![0x13u8, 100, 0, 0b010];
    body.extend_from_slice(&[0xaa; 31]);
    body.extend_from_slice(&[0xbb; 31]);
    body.extend_from_slice(&[0, 0, 0]);
    body.extend_from_slice(&[0x11; 64]);
    body.extend_from_slice(&[0; 64]);
    body.extend_from_slice(&[0x22; 64]);
    let mut disagree = body.clone();
    disagree[4 + 62 + 3 + 64] = 1;
    // Version 3 (69-byte entries): a zstd chunk of 1000 bytes, a hole, a
    // raw last chunk of 3996 bytes.
    let mut v3 = vec![0x23u8, 100, 0, 0b010];
    v3.extend_from_slice(&[0xaa; 31]);
    v3.extend_from_slice(&[0xbb; 31]);
    v3.extend_from_slice(&[0, 0, 0]);
    v3.extend_from_slice(&[0x11; 64]);
    v3.push(1);
    v3.extend_from_slice(&1000u32.to_le_bytes());
    v3.extend_from_slice(&[0; 69]);
    v3.extend_from_slice(&[0x22; 64]);
    v3.push(0);
    v3.extend_from_slice(&3996u32.to_le_bytes());
    let mut bad_codec = v3.clone();
    bad_codec[4 + 62 + 3 + 64] = 2;
    s.insert(
        "chunk_manifest_body",
        vec![body, disagree, v3, bad_codec, vec![0], vec![1, 0, 0, 0]],
    );
    // plaintext length (u16), codec byte, stored bytes.
    let text = b"#!/bin/sh\nexec python3 -m app\n".repeat(200);
    let frame = lode_chunk::codec::compress(&text).expect("text compresses");
    let mut open_seeds = Vec::new();
    for (len, codec, stored) in [
        (text.len(), 1u8, frame.as_slice()),
        (text.len() + 1, 1, &frame),
        (64, 0, &text[..64]),
        (4096, 1, &frame[..frame.len() / 2]),
    ] {
        let mut seed = (len as u16).to_le_bytes().to_vec();
        seed.push(codec);
        seed.extend_from_slice(stored);
        open_seeds.push(seed);
    }
    s.insert("chunk_open", open_seeds);
    let ws = lode_chunk::workingset::seal("t", DIGEST, &[0, 5, 2], &FixedKeys).expect("seal");
    s.insert("chunk_workingset_open", vec![ws]);
    let mut order = 3u32.to_le_bytes().to_vec();
    for i in [4u32, 0, 9] {
        order.extend_from_slice(&i.to_le_bytes());
    }
    s.insert("chunk_workingset_body", vec![order, vec![0; 4], vec![]]);
    let wrapped =
        lode_chunk::keys::wrap_with(&KEK, "t", &lode_chunk::DataKey([9; 32])).expect("wrap");
    s.insert("chunk_keyring", vec![KEK.to_vec(), vec![1; 31], wrapped]);
}

const IHAVEOPT: u64 = 0x4948_4156_454F_5054;

fn opt(code: u32, data: &[u8]) -> Vec<u8> {
    let mut v = IHAVEOPT.to_be_bytes().to_vec();
    v.extend_from_slice(&code.to_be_bytes());
    v.extend_from_slice(&(data.len() as u32).to_be_bytes());
    v.extend_from_slice(data);
    v
}

fn info(name: &str, reqs: &[u16]) -> Vec<u8> {
    let mut v = (name.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(name.as_bytes());
    v.extend_from_slice(&(reqs.len() as u16).to_be_bytes());
    for r in reqs {
        v.extend_from_slice(&r.to_be_bytes());
    }
    v
}

fn meta(name: &str, queries: &[&str]) -> Vec<u8> {
    let mut v = (name.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(name.as_bytes());
    v.extend_from_slice(&(queries.len() as u32).to_be_bytes());
    for q in queries {
        v.extend_from_slice(&(q.len() as u32).to_be_bytes());
        v.extend_from_slice(q.as_bytes());
    }
    v
}

fn req(cmd: u16, handle: u64, offset: u64, len: u32) -> Vec<u8> {
    req_flags(0, cmd, handle, offset, len)
}

fn req_flags(flags: u16, cmd: u16, handle: u64, offset: u64, len: u32) -> Vec<u8> {
    let mut v = 0x2560_9513u32.to_be_bytes().to_vec();
    v.extend_from_slice(&flags.to_be_bytes());
    v.extend_from_slice(&cmd.to_be_bytes());
    v.extend_from_slice(&handle.to_be_bytes());
    v.extend_from_slice(&offset.to_be_bytes());
    v.extend_from_slice(&len.to_be_bytes());
    v
}

fn agent_seeds(s: &mut Seeds) {
    s.insert(
        "agent_export_name",
        [
            "acme/app",
            "acme/app@vm1",
            "t/img",
            "a/b/c",
            "../x/y",
            "t/img@a.b",
        ]
        .iter()
        .map(|x| x.as_bytes().to_vec())
        .collect(),
    );
    s.insert(
        "agent_nbd_info",
        vec![
            info("t/img", &[3]),
            info("t/img@ov", &[]),
            info("", &[0, 3]),
        ],
    );
    let (read, write, disc, flush, trim) = (0u16, 1u16, 2u16, 3u16, 4u16);
    let cflags = 3u32.to_be_bytes().to_vec();
    let chunk = 512 * 1024u64;
    let one = [
        cflags.clone(),
        opt(7, &info("t/img", &[3])),
        req(read, 1, 0, 4096),
        req(read, 2, chunk - 100, 200),
        req(write, 3, 100, 50),
        vec![0xee; 50],
        req(read, 4, 0, 4096),
        req(flush, 5, 0, 0),
        req(trim, 6, 0, 4096),
        req(read, 7, NBD_IMAGE_SIZE - 10, 20),
        req(9, 8, 0, 0),
        req(disc, 9, 0, 0),
    ]
    .concat();
    let two = [
        cflags.clone(),
        opt(3, b""),
        opt(6, &info("t/img", &[])),
        opt(6, &info("t/nope", &[])),
        opt(99, b"x"),
        opt(1, b"t/img"),
        req(read, 1, NBD_IMAGE_SIZE - 10, 10),
        req(disc, 2, 0, 0),
    ]
    .concat();
    let three = [
        1u32.to_be_bytes().to_vec(),
        opt(7, &info("t/img@ov", &[])),
        req(write, 1, 4096 * 3 + 7, 8192),
        vec![0x42; 8192],
        req(read, 2, 4096 * 3, 3 * 4096),
        req(flush, 3, 0, 0),
        req(disc, 4, 0, 0),
    ]
    .concat();
    let four = [cflags.clone(), opt(2, b"")].concat();
    let five = [
        cflags,
        opt(7, &info("t/img", &[])),
        req(read, 1, 0, (2 * chunk + 100) as u32),
        req(disc, 2, 0, 0),
    ]
    .concat();
    // Structured replies and base:allocation (BLOCK_STATUS, READ with holes).
    let six = [
        3u32.to_be_bytes().to_vec(),
        opt(8, b""),
        opt(9, &meta("t/img", &[])),
        opt(10, &meta("t/img", &["base:allocation"])),
        opt(7, &info("t/img", &[3])),
        req(7, 1, 0, NBD_IMAGE_SIZE as u32),
        req_flags(1 << 3, 7, 2, chunk, 4096),
        req(read, 3, chunk - 4096, 3 * 4096),
        req(read, 4, 0, (2 * chunk + 100) as u32),
        req(write, 5, chunk + 10, 20),
        vec![0x33; 20],
        req(7, 6, 0, NBD_IMAGE_SIZE as u32),
        req(read, 7, chunk, 4096),
        req(disc, 8, 0, 0),
    ]
    .concat();
    let seven = [
        3u32.to_be_bytes().to_vec(),
        opt(10, &meta("t/img", &["base:allocation"])),
        opt(8, b"x"),
        opt(8, b""),
        opt(9, &meta("t/img", &["base:"])),
        opt(1, b"t/img@o2"),
        req(7, 1, 0, 4096),
        req(read, 2, 0, 8192),
        req(disc, 3, 0, 0),
    ]
    .concat();
    s.insert(
        "agent_nbd_session",
        vec![one, two, three, four, five, six, seven],
    );
    s.insert(
        "agent_nbd_meta_context",
        vec![
            meta("t/img", &["base:allocation"]),
            meta("", &[]),
            meta("t/img", &["base:", "qemu:dirty-bitmap:x"]),
        ],
    );
}

/// A descriptor: address, length, flags, next.
fn desc(addr: u64, len: u32, flags: u16, next: u16) -> Vec<u8> {
    [
        addr.to_le_bytes().to_vec(),
        len.to_le_bytes().to_vec(),
        flags.to_le_bytes().to_vec(),
        next.to_le_bytes().to_vec(),
    ]
    .concat()
}

/// Guest memory with `descs` at table entries 0.. and `extra` at `at`.
fn guest(descs: &[Vec<u8>], at: usize, extra: &[u8]) -> Vec<u8> {
    let mut m = vec![0u8; at + extra.len()];
    for (i, d) in descs.iter().enumerate() {
        m[16 * i..16 * i + 16].copy_from_slice(d);
    }
    m[at..].copy_from_slice(extra);
    m
}

fn agent_host_seeds(s: &mut Seeds) {
    // A read: header, 512 bytes in, status; an indirect one; a loop.
    let header = [
        2u32.to_le_bytes().to_vec(),
        vec![0; 4],
        7u64.to_le_bytes().to_vec(),
    ]
    .concat();
    let read = guest(
        &[
            desc(0x1000, 16, 1, 1),
            desc(0x2000, 512, 3, 2),
            desc(0x3000, 1, 2, 0),
        ],
        0x1000,
        &header,
    );
    let mut indirect = guest(&[desc(0x800, 48, 4, 0)], 0x1000, &header);
    for (i, d) in [
        desc(0x1000, 16, 1, 1),
        desc(0x2000, 4096, 3, 2),
        desc(0x3000, 1, 2, 0),
    ]
    .iter()
    .enumerate()
    {
        indirect[0x800 + 16 * i..0x800 + 16 * i + 16].copy_from_slice(d);
    }
    let looped = guest(
        &[desc(0x1000, 16, 1, 1), desc(0x2000, 512, 1, 0)],
        0x1000,
        &header,
    );
    s.insert("agent_vhost_chain", vec![read, indirect, looped]);
    // A region of 8 entries: version 1, heads 2 and 5 in flight.
    let mut region = vec![3u8, 4, 0];
    let mut q = [0u8; 16 + 16 * 8];
    q[8..10].copy_from_slice(&1u16.to_le_bytes());
    q[10..12].copy_from_slice(&8u16.to_le_bytes());
    q[14..16].copy_from_slice(&4u16.to_le_bytes());
    for (h, c) in [(2usize, 7u64), (5, 3)] {
        q[16 + 16 * h] = 1;
        q[16 + 16 * h + 8..16 + 16 * h + 16].copy_from_slice(&c.to_le_bytes());
    }
    region.extend_from_slice(&q[1..]);
    s.insert("agent_vhost_inflight", vec![region, vec![0u8; 40]]);
    let mut journal = vec![3u8];
    journal.extend_from_slice(b"LODEOVJ1");
    journal.extend_from_slice(&[9u8; 16]);
    for (i, w) in [(0u64, 1u64), (u64::MAX, 1), (2, 0xff), (1, 3)] {
        journal.extend_from_slice(&i.to_le_bytes());
        journal.extend_from_slice(&w.to_le_bytes());
    }
    s.insert("agent_overlay_journal", vec![journal]);
    s.insert(
        "agent_control_request",
        [
            r#"{"tenant":"acme","image":"app"}"#,
            r#"{"tenant":"acme","image":"app","overlay":"vm1","rw":true,"via":"vhost-user","owner":"1000:1000"}"#,
            r#"{"tenant":"acme","image":"app","overlay":"../../etc","rw":true}"#,
            r#"{"tenant":"acme","image":"app","via":"nbd","owner":"107"}"#,
        ]
        .iter()
        .map(|x| x.as_bytes().to_vec())
        .collect(),
    );
}

/// Records what a client writes.
struct Tee<S> {
    inner: S,
    log: Arc<Mutex<Vec<u8>>>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Tee<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tee<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            self.log.lock().expect("log").extend_from_slice(&buf[..*n]);
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The bytes a real HTTP/2 client sends for a PUT, GET, HEAD and bad key.
fn h2_session() -> Vec<u8> {
    use http_body_util::Full;
    let rt = lode_fuzz::support::runtime();
    rt.block_on(async {
        let (c, srv) = tokio::io::duplex(1 << 20);
        let store = Arc::new(lode_fleet::NodeStore::new(1 << 20, None).expect("store"));
        tokio::spawn(lode_fleet::node::serve_connection(srv, store));
        let log = Arc::new(Mutex::new(Vec::new()));
        let io = hyper_util::rt::TokioIo::new(Tee {
            inner: c,
            log: log.clone(),
        });
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                .await
                .expect("h2 handshake");
        tokio::spawn(conn);
        let reqs = [
            ("PUT", "/s/ab12.0", &b"LS\x00\x01\x05\x00\x00\x00hi"[..]),
            ("GET", "/s/ab12.0", b""),
            ("HEAD", "/s/ab12.0", b""),
            ("GET", "/health", b""),
            ("GET", "/s/BAD", b""),
        ];
        for (m, path, body) in reqs {
            let r = hyper::Request::builder()
                .method(m)
                .uri(format!("http://node{path}"))
                .body(Full::new(bytes::Bytes::copy_from_slice(body)))
                .expect("request");
            let _ = send.send_request(r).await;
        }
        drop(send);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let out = log.lock().expect("log").clone();
        out
    })
}

fn fleet_seeds(s: &mut Seeds) {
    s.insert(
        "fleet_stripe",
        vec![
            b"hello, stripes".to_vec(),
            (0..=255u8).collect(),
            vec![
                2, 16, 0, 16, 0, 0x53, 0x4c, 0, 1, 5, 0, 0, 0, 1, 2, 0x53, 0x4c,
            ],
        ],
    );
    let mut intact = vec![0u8; 10];
    intact.extend_from_slice(b"a chunk of ciphertext, any bytes");
    let mut mixed = vec![5 | (8 * 3), 3, 0, 6 | (8 * 2), 7, 1, 0, 3, 2, 1];
    mixed.extend_from_slice(&[0x99; 300]);
    let mut one_bad = vec![0, 0, 5 | (8 * 9), 0, 0, 3, 2, 1, 0, 0];
    one_bad.extend_from_slice(&[0x17; 64]);
    s.insert("fleet_client_read", vec![intact, mixed, one_bad]);
    let http1 = [
        &b"PUT /s/ab12.0 HTTP/1.1\r\nHost: n\r\nContent-Length: 10\r\n\r\nLS\x00\x01\x05\x00\x00\x00hi"[..],
        b"GET /s/ab12.0 HTTP/1.1\r\nHost: n\r\n\r\n",
        b"HEAD /s/ab12.0 HTTP/1.1\r\nHost: n\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHost: n\r\n\r\n",
        b"GET /metrics HTTP/1.1\r\nHost: n\r\n\r\n",
        b"DELETE /s/x HTTP/1.1\r\nHost: n\r\n\r\n",
        b"GET /s/../x HTTP/1.1\r\nHost: n\r\n\r\n",
    ]
    .concat();
    let chunked = b"PUT /s/k.1 HTTP/1.1\r\nHost: n\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nGET /s/k.1 HTTP/1.1\r\nHost: n\r\nConnection: close\r\n\r\n".to_vec();
    s.insert("fleet_node_request", vec![http1, chunked, h2_session()]);
    s.insert(
        "fleet_memcached_reply",
        vec![
            b"EN\r\n".to_vec(),
            b"VA 5 \r\nhello\r\n".to_vec(),
            b"VA 3\r\nabc\r\n".to_vec(),
            b"HD\r\n".to_vec(),
            b"SERVER_ERROR out of memory\r\n".to_vec(),
        ],
    );
}

fn oci_seeds(s: &mut Seeds) {
    s.insert(
        "oci_source",
        [
            "oci:/tmp/img",
            "oci:dir:name:tag",
            "docker-archive:x.tar:@2",
            "docker-archive:a.tar:registry.example/x/y:1.2",
            "oci:d:",
            "docker://127.0.0.1:5000/team/app:v1",
            "docker://busybox",
            "docker://ghcr.io/org/img@sha256:0000000000000000000000000000000000000000000000000000000000000000",
        ]
        .iter()
        .map(|x| x.as_bytes().to_vec())
        .collect(),
    );
    s.insert(
        "oci_registry_auth",
        [
            "Bearer realm=\"https://auth.example/token\",service=\"reg.io\",scope=\"repository:team/app:pull\"\n{\"auths\":{\"reg.io\":{\"auth\":\"dXNlcjpwYXNz\"}}}",
            "Basic realm=\"x\"\n{\"auths\":{\"https://index.docker.io/v1/\":{\"auth\":\"aHViOnB3\"},\"reg.io/team\":{\"auth\":\"bm9jb2xvbg==\"}}}",
            "Negotiate\n{\"auths\":{}}",
        ]
        .iter()
        .map(|x| x.as_bytes().to_vec())
        .collect(),
    );
    s.insert(
        "oci_registry_answers",
        [
            "30\n{\"token\":\"eyJhbGciOiJSUzI1NiJ9.e30.c2ln\",\"expires_in\":300}",
            "Wed, 21 Oct 2015 07:28:00 GMT\n{\"access_token\":\"a\",\"refresh_token\":\"r\",\"expires_in\":60}",
            "Wednesday, 21-Oct-15 07:28:00 GMT\n{\"ServerURL\":\"reg.io\",\"Username\":\"user\",\"Secret\":\"pass\"}",
            "Wed Oct 21 07:28:00 2015\n{\"Username\":\"<token>\",\"Secret\":\"refresh\"}",
        ]
        .iter()
        .map(|x| x.as_bytes().to_vec())
        .collect(),
    );
    let d = layout_docs();
    let docs = [
        &d.oci_layout,
        &d.index,
        &d.manifest,
        &d.config,
        &d.nested_index,
    ];
    let mut layout = Vec::new();
    for (slot, doc) in docs.iter().enumerate() {
        assert!(slot < LAYOUT_SLOTS.len());
        for r in [0u8, 1, 2] {
            layout.push([&[slot as u8 + 5 * r][..], doc].concat());
        }
    }
    s.insert("oci_layout", layout);

    use lode_testkit::{write_docker_archive_with, Compression, DockerLayout, DockerOptions};
    use lode_testkit::{Entry, LayerSpec};
    let tmp = tempfile::tempdir().expect("tempdir");
    let layers = vec![
        LayerSpec::with(vec![Entry::dir("etc"), Entry::file("etc/hello", "hi\n")]),
        LayerSpec::with(vec![
            Entry::whiteout("etc/hello"),
            Entry::symlink("x", "etc"),
        ]),
    ];
    let mut archives = Vec::new();
    let mut manifests = Vec::new();
    for (i, (layout, comp)) in [
        (DockerLayout::Legacy, Compression::None),
        (DockerLayout::Blobs, Compression::Gzip),
        (DockerLayout::Blobs, Compression::Zstd),
    ]
    .into_iter()
    .enumerate()
    {
        let file = tmp.path().join(format!("a{i}.tar"));
        write_docker_archive_with(
            &file,
            &layers,
            &DockerOptions {
                repo_tags: vec!["img:latest".into()],
                compression: vec![comp],
                layout,
                ..DockerOptions::default()
            },
        )
        .expect("docker archive");
        let bytes = std::fs::read(&file).expect("read");
        archives.push([&[i as u8][..], &bytes].concat());
        manifests.push(member(&bytes, "manifest.json"));
    }
    s.insert("oci_docker_archive", archives);
    manifests.push(br#"[{"Config":"c.json","RepoTags":null,"Layers":["a/layer.tar"]}]"#.to_vec());
    s.insert("oci_docker_manifest", manifests);
}

/// One member of a tar archive.
fn member(tar: &[u8], name: &str) -> Vec<u8> {
    let mut pos = 0;
    while pos + 512 <= tar.len() {
        let h = &tar[pos..pos + 512];
        let n = String::from_utf8_lossy(&h[..100])
            .trim_end_matches('\0')
            .to_string();
        let size_field = String::from_utf8_lossy(&h[124..136])
            .trim_matches(|c: char| c == '\0' || c == ' ')
            .to_string();
        let size = usize::from_str_radix(&size_field, 8).unwrap_or(0);
        if n == name {
            return tar[pos + 512..pos + 512 + size].to_vec();
        }
        pos += 512 + size.div_ceil(512) * 512;
    }
    panic!("no {name} in archive");
}

fn store_seeds(s: &mut Seeds) {
    let pointer = br#"{"version":1,"manifest":"sha256:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"}"#;
    let root = br#"{"version":1,"id":"r1","state":"active","salt_id":"5a17","created":1700000000}"#;
    let list = s.entry("store_documents").or_default();
    list.push([&[0u8][..], pointer].concat());
    list.push([&[1u8][..], root].concat());
    list.push([&[2u8][..], root].concat());
    let v2 = br#"{"version":2,"state":"live","manifest":"sha256:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff","image_version":3,"fence":1,"seal":"00"}"#;
    list.push([&[4u8][..], v2].concat());
    let lease = br#"{"version":1,"holder":"h:1:ab","token":7,"expires_ms":1,"acquired_ms":0}"#;
    list.push([&[5u8][..], lease].concat());
    let intent = br#"{"version":1,"tenant":"t","name":"x","started_ms":1,"writer":"push"}"#;
    list.push([&[6u8][..], intent].concat());
}

/// Layer tars written by the test kit's writer (PAX xattrs with newlines,
/// long names, links, whiteouts).
/// Runtime API conversations: an event answered, an error in chunks, an
/// init error, strangers and wrong methods.
fn worker_seeds(s: &mut Seeds) {
    let id = lode_fuzz::worker::REQUEST_ID;
    let next = "GET /2018-06-01/runtime/invocation/next HTTP/1.1\r\nhost: 10.0.2.100:9001\r\n\r\n";
    s.insert(
        "worker_runtime_api",
        vec![
            format!("{next}POST /2018-06-01/runtime/invocation/{id}/response HTTP/1.1\r\nhost: 10.0.2.100:9001\r\ncontent-length: 11\r\n\r\n{{\"ok\":true}}"),
            format!("{next}POST /2018-06-01/runtime/invocation/{id}/error HTTP/1.1\r\nhost: x\r\nlambda-runtime-function-error-type: Unhandled\r\ntransfer-encoding: chunked\r\n\r\n2d\r\n{{\"errorMessage\":\"boom\",\"errorType\":\"ValueErr\r\n4\r\nor\"}}\r\n0\r\n\r\n"),
            format!("POST /2018-06-01/runtime/init/error HTTP/1.1\r\nhost: x\r\ncontent-length: 54\r\n\r\n{{\"errorMessage\":\"no module\",\"errorType\":\"Runtime.Init\"}}{next}"),
            "POST /2018-06-01/runtime/invocation/other/response HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{}DELETE /2018-06-01/runtime/invocation/next HTTP/1.1\r\nhost: x\r\n\r\nGET /nope HTTP/1.1\r\nhost: x\r\n\r\n".to_string(),
        ]
        .into_iter()
        .map(String::into_bytes)
        .collect(),
    );
}

fn flatten_seeds(s: &mut Seeds) {
    use lode_testkit::spec::{Entry, LayerSpec};
    use lode_testkit::tarw::layer_tar_bytes;
    let long = format!("dir/{}", "n".repeat(150));
    let layers = [
        LayerSpec::with(vec![
            Entry::dir("dir"),
            Entry::file("dir/a", "hello"),
            Entry::file("dir/cap", "x").xattr("security.capability", b"\x01\x00\x00\x02\x0a\n"),
            Entry::symlink("dir/l", "a"),
        ]),
        LayerSpec::with(vec![
            Entry::file(&long, "long name"),
            Entry::hardlink("dir/h", "dir/a"),
            Entry::file("dir/.wh.a", ""),
        ]),
    ];
    let list = s.entry("flatten_tar").or_default();
    for l in &layers {
        list.push(layer_tar_bytes(l));
    }
}

/// A small layout-4 image: inline files (1, 60, 61 and 128 bytes) and
/// directories (entries in `i_block` only, and spilling into `system.data`),
/// a file and a directory in blocks, short and long symlinks; then the same
/// image with the inline file's `system.data` value offset corrupted.
fn ext4_seeds(s: &mut Seeds) {
    use lode_ext4::{Builder, Meta, Options};
    let dir = tempfile::tempdir().expect("tempdir");
    let img = dir.path().join("img");
    let mut b = Builder::new(
        std::fs::File::create(&img).expect("image"),
        Options::default(),
    );
    let path = |p: &str| -> Vec<Vec<u8>> { p.split('/').map(|c| c.as_bytes().to_vec()).collect() };
    let meta = |perm| Meta {
        perm,
        ..Meta::default()
    };
    b.begin_layer().expect("layer");
    for (p, n) in [
        ("a", 1usize),
        ("b", 60),
        ("c", 61),
        ("d", 128),
        ("e", 129),
        ("f", 5000),
    ] {
        let data: Vec<u8> = (0..n).map(|i| i as u8).collect();
        b.add_file(&path(p), meta(0o644), n as u64, &mut &data[..])
            .expect("file");
    }
    for i in 0..3 {
        b.add_file(
            &path(&format!("small/f{i}")),
            meta(0o644),
            1,
            &mut &b"s"[..],
        )
        .expect("file");
    }
    for i in 0..5 {
        b.add_file(
            &path(&format!("spill/name{i}")),
            meta(0o644),
            2,
            &mut &b"sp"[..],
        )
        .expect("file");
    }
    for i in 0..40 {
        b.add_file(
            &path(&format!("big/entry-{i:02}")),
            meta(0o644),
            0,
            &mut &b""[..],
        )
        .expect("file");
    }
    b.add_symlink(&path("small/l"), b"../a", meta(0o777))
        .expect("symlink");
    b.add_symlink(&path("spill/long"), &[b'x'; 100], meta(0o777))
        .expect("symlink");
    b.end_layer().expect("end");
    b.finish().expect("finish");
    let image = std::fs::read(&img).expect("read image");
    let good = lode_fuzz::ext4::sparse_records(&image);
    // /a is the first file after the pooled directories: inode 1025, the
    // first of group 1, whose table the second descriptor names.
    let table = u32::from_le_bytes(image[4096 + 32 + 8..4096 + 32 + 12].try_into().expect("4"));
    let at = table as usize * 4096 + 160 + 4 + 2;
    let mut bad_image = image;
    bad_image[at..at + 2].copy_from_slice(&0xfff0u16.to_le_bytes());
    let bad = lode_fuzz::ext4::sparse_records(&bad_image);
    s.insert("ext4_view_image", vec![good, bad]);
}
