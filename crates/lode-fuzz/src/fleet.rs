//! lode-fleet: stripes and replies from cache nodes (untrusted for
//! integrity), requests to a cache node from the network, memcached replies.

use crate::support::{reset_dir, runtime, scratch, Input};
use bytes::Bytes;
use futures::future::BoxFuture;
use lode_chunk::ChunkName;
use lode_fleet::backend::{read_get_reply, read_set_reply};
use lode_fleet::node::{serve_connection, valid_key, NodeStore};
use lode_fleet::stripe::{self, decode, encode, header, DATA, TOTAL};
use lode_fleet::BackendError;
use lode_fleet::{placement, FleetTier, StripeBackend};
use lode_tier::{ChunkId, ChunkTier};
use std::collections::HashMap;
use std::path::{Component, Path};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The stripe code: the input as a chunk survives encode and the loss of
/// any one stripe; the input cut into up to 6 stripes decodes to `None` or
/// to a chunk of the length every stripe header states.
pub fn stripe(data: &[u8]) {
    let s = encode(data);
    assert_eq!(s.len(), TOTAL);
    for (i, st) in s.iter().enumerate() {
        assert_eq!(header(st), Some((i, data.len())));
    }
    for lost in 0..TOTAL {
        let four: Vec<&[u8]> = s
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != lost)
            .map(|(_, v)| v.as_slice())
            .collect();
        assert_eq!(decode(&four).as_deref(), Some(data), "lost stripe {lost}");
    }
    let mut u = Input::new(data);
    let k = u.u8() % 7;
    let parts: Vec<&[u8]> = (0..k)
        .map(|_| {
            let l = usize::from(u.u16()) % 1024;
            u.take(l)
        })
        .collect();
    if let Some(out) = decode(&parts) {
        let heads: Vec<(usize, usize)> = parts
            .iter()
            .map(|p| header(p).expect("decode accepted a malformed stripe"))
            .collect();
        let len = heads[0].1;
        assert!(heads.iter().all(|h| h.1 == len));
        let mut idx: Vec<usize> = heads.iter().map(|h| h.0).collect();
        idx.sort_unstable();
        idx.dedup();
        assert!(
            idx.len() >= DATA,
            "decoded from fewer than 4 distinct stripes"
        );
        assert_eq!(out.len(), len);
    }
}

/// What a fake node does with one stripe request.
#[derive(Debug, Clone)]
enum Answer {
    Value(Bytes),
    Missing,
    Error,
}

#[derive(Debug)]
struct FakeNodes {
    nodes: Vec<String>,
    answers: HashMap<(usize, String), (Answer, u8)>,
}

impl StripeBackend for FakeNodes {
    fn nodes(&self) -> &[String] {
        &self.nodes
    }
    fn get<'a>(
        &'a self,
        node: usize,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<Bytes>, BackendError>> {
        Box::pin(async move {
            let (a, delay) = self
                .answers
                .get(&(node, key.to_string()))
                .cloned()
                .unwrap_or((Answer::Missing, 0));
            for _ in 0..delay {
                tokio::task::yield_now().await;
            }
            match a {
                Answer::Value(b) => Ok(Some(b)),
                Answer::Missing => Ok(None),
                Answer::Error => Err(BackendError::Io {
                    node: self.nodes[node].clone(),
                    what: "stripe get",
                    source: std::io::Error::other("injected node error"),
                }),
            }
        })
    }
    fn put<'a>(
        &'a self,
        _node: usize,
        _key: &'a str,
        _value: Bytes,
    ) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(async { Ok(()) })
    }
}

fn client_rt() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(runtime)
}

/// The fleet client's 4-of-5 read against 5 nodes whose answers the input
/// chooses (intact, missing, error, bit flip, truncated, another stripe,
/// in any order): a chunk is returned only if it is the right one, and it
/// is returned whenever at least 4 stripes are intact.
pub fn client_read(data: &[u8]) {
    let mut u = Input::new(data);
    let ops: Vec<u8> = (0..TOTAL).map(|_| u.u8()).collect();
    let delays: Vec<u8> = (0..TOTAL).map(|_| u.u8() % 4).collect();
    let chunk = u.rest().to_vec();
    let name = ChunkName::of(&chunk);
    let stripes = encode(&chunk);
    let nodes: Vec<String> = (0..TOTAL).map(|i| format!("node{i}:7000")).collect();
    let place = placement(&nodes, &name);
    let mut answers = HashMap::new();
    let mut intact = 0;
    for j in 0..TOTAL {
        let op = ops[j];
        let mut s = stripes[j].clone();
        let answer = match op % 8 {
            0..=2 => {
                intact += 1;
                Answer::Value(Bytes::from(s))
            }
            3 => Answer::Missing,
            4 => Answer::Error,
            5 => {
                let p = usize::from(op >> 3) % s.len();
                s[p] ^= 1 << (op % 3);
                Answer::Value(Bytes::from(s))
            }
            6 => {
                s.truncate(usize::from(op >> 3) % s.len());
                Answer::Value(Bytes::from(s))
            }
            _ => Answer::Value(Bytes::from(stripes[(j + 1) % TOTAL].clone())),
        };
        answers.insert(
            (place[j], format!("{}.{j}", name.to_hex())),
            (answer, delays[j]),
        );
    }
    let tier = FleetTier::new(
        Arc::new(FakeNodes { nodes, answers }),
        Duration::from_secs(30),
        "fleet",
    );
    let id = ChunkId {
        root: Arc::from("r"),
        name,
    };
    match client_rt().block_on(tier.fetch(&id)) {
        Ok(b) => assert_eq!(
            b.as_ref(),
            chunk.as_slice(),
            "the fleet returned a wrong chunk"
        ),
        Err(e) => assert!(
            intact < DATA,
            "{intact} intact stripes but the read failed: {e}"
        ),
    }
    let _ = stripe::HEADER;
}

/// A cache node's request handling: the input is everything a client sends
/// on one connection (HTTP/1.1 or HTTP/2), served by the real connection
/// handler over an in-memory stream, with a tiny memory tier that spills to
/// a disk tier. Nothing panics, the connection ends when the client hangs
/// up, and every file the disk tier wrote is a valid key directly in its
/// directory. Also: every valid key is one plain path component.
pub fn node_request(data: &[u8]) {
    // The write MAC header a node parses: never accepted without the key's MAC.
    let key = lode_fleet::auth::WriteKey::from_bytes(&[7u8; 32]).expect("key");
    let header = String::from_utf8_lossy(data);
    assert!(key.verify(Some(&header), "PUT", "/s/k.0", data).is_err());
    node_exchange(data);
}

/// What the cache node of [`node_request`] sends back to the client.
pub fn node_exchange(data: &[u8]) -> Vec<u8> {
    if let Ok(s) = std::str::from_utf8(data) {
        for k in std::iter::once(s).chain(s.split(['/', ' ', '\n'])) {
            if valid_key(k) {
                let c: Vec<Component> = Path::new(k).components().collect();
                assert!(
                    matches!(c.as_slice(), [Component::Normal(n)] if *n == k),
                    "valid key {k:?} is not one file name: {c:?}"
                );
            }
        }
    }
    let dir = scratch("node-disk");
    reset_dir(&dir);
    let store = Arc::new(NodeStore::new(64, Some((dir.clone(), 4096))).expect("node store"));
    let rt = runtime();
    let out = rt.block_on(async {
        let (client, srv) = tokio::io::duplex(64 << 10);
        let serve = tokio::spawn(serve_connection(srv, store.clone()));
        let (cr, mut cw) = tokio::io::split(client);
        let drain = tokio::spawn(async move {
            let mut out = Vec::new();
            let _ = tokio::io::BufReader::new(cr).read_to_end(&mut out).await;
            out
        });
        let _ = cw.write_all(data).await;
        // hyper drops pipelined requests once it sees the client's end of
        // stream: let it answer everything first.
        for _ in 0..256 {
            tokio::task::yield_now().await;
        }
        let _ = cw.shutdown().await;
        tokio::time::timeout(Duration::from_secs(60), serve)
            .await
            .expect("the cache node hung after the client hung up")
            .expect("the cache node panicked");
        tokio::time::timeout(Duration::from_secs(60), drain)
            .await
            .expect("the cache node kept the connection open")
            .expect("reading the replies panicked")
    });
    drop(rt);
    for e in std::fs::read_dir(&dir).expect("read disk tier") {
        let e = e.expect("entry");
        let name = e.file_name().to_string_lossy().into_owned();
        assert!(
            e.file_type().expect("type").is_file(),
            "disk tier holds a non-file {name:?}"
        );
        assert!(
            valid_key(&name) || name.starts_with(".tmp-") || name == lode_fleet::node::MARKER,
            "disk tier wrote {name:?}"
        );
    }
    reset_dir(&dir);
    out
}

/// memcached meta-protocol replies: a value is returned only from a
/// `VA <len>` line followed by exactly `len` bytes and `\r\n`, so the
/// connection stays in step for its next request.
pub fn memcached_reply(data: &[u8]) {
    let rt = client_rt();
    let mut r: &[u8] = data;
    let got = rt.block_on(read_get_reply(&mut r));
    let consumed = data.len() - r.len();
    match got {
        Ok(Some(v)) => {
            assert!(v.len() <= lode_fleet::node::MAX_STRIPE);
            let line_end = data
                .iter()
                .position(|&b| b == b'\n')
                .map(|p| p + 1)
                .expect("a value without a complete VA line");
            assert!(data.starts_with(b"VA "));
            assert_eq!(&data[line_end..line_end + v.len()], v.as_ref());
            assert_eq!(consumed, line_end + v.len() + 2);
            assert_eq!(
                &data[line_end + v.len()..consumed],
                b"\r\n",
                "value not terminated by \\r\\n: the connection is out of step"
            );
        }
        Ok(None) => assert!(data.starts_with(b"EN") && data.contains(&b'\n')),
        Err(_) => {}
    }
    let mut r: &[u8] = data;
    if rt.block_on(read_set_reply(&mut r)).is_ok() {
        assert!(data.starts_with(b"HD") && data.contains(&b'\n'));
    }
    // A fill-lease reply (`mg KEY N<ttl> c`): won only with `HD`, a `W` flag
    // and a CAS token.
    let line = String::from_utf8_lossy(data);
    if let Ok(lode_fleet::Lease::Won(_)) = lode_fleet::backend::parse_lease_reply(&line) {
        let words: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(words.first(), Some(&"HD"));
        assert!(words.contains(&"W") && words.iter().any(|w| w.starts_with('c')));
    }
}
