//! lode-agent: export names and the NBD protocol (handshake options and
//! transmission requests) as sent by a guest's NBD client.

use crate::support::{reset_dir, runtime, scratch, FixedKeys};
use lode_agent::nbd::{parse_info, parse_meta_context};
use lode_agent::{Catalog, ChunkReader, ExportName, Exports, NbdService};
use lode_store::{push_file, PushOptions, Store};
use lode_tier::ChunkTier;
use std::path::{Component, Path};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};

/// `TENANT/NAME[@OVERLAY]`: a parsed name prints back to the input, its
/// parts pass the tenant and name checks, and a kept overlay's file stays
/// inside the overlay directory.
pub fn export_name(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let Some(e) = ExportName::parse(s) else {
        return;
    };
    let back = match &e.overlay {
        Some(o) => format!("{}@{o}", e.image()),
        None => e.image(),
    };
    assert_eq!(back, s);
    assert!(lode_chunk::keys::check_tenant(&e.tenant).is_ok());
    assert!(lode_store::check_name(&e.name).is_ok());
    if let Some(o) = &e.overlay {
        assert!(lode_store::check_name(o).is_ok());
        let file = format!("{}@{o}.overlay", e.image());
        for c in Path::new(&file).components() {
            assert!(
                matches!(c, Component::Normal(_)),
                "overlay path {file:?} has component {c:?}"
            );
        }
    }
}

/// The u32-length-prefixed string at the start of `buf`, which parsed as
/// `parsed` (equal to it when the bytes are UTF-8); returns its encoded size.
fn string_field(buf: &[u8], parsed: &str) -> usize {
    let n = u32::from_be_bytes(buf[..4].try_into().expect("4")) as usize;
    if let Ok(s) = std::str::from_utf8(&buf[4..4 + n]) {
        assert_eq!(parsed, s);
    }
    4 + n
}

/// NBD `INFO`/`GO` option data: what parses re-encodes to the input.
pub fn nbd_info(data: &[u8]) {
    let Some((name, requests)) = parse_info(data) else {
        return;
    };
    let n = string_field(data, &name);
    let mut enc = data[..n].to_vec();
    enc.extend_from_slice(&(requests.len() as u16).to_be_bytes());
    for r in &requests {
        enc.extend_from_slice(&r.to_be_bytes());
    }
    assert_eq!(enc, data);
}

/// NBD `LIST_META_CONTEXT`/`SET_META_CONTEXT` option data: what parses
/// re-encodes to the input.
pub fn nbd_meta_context(data: &[u8]) {
    let Some((name, queries)) = parse_meta_context(data) else {
        return;
    };
    let n = string_field(data, &name);
    let mut enc = data[..n].to_vec();
    enc.extend_from_slice(&(queries.len() as u32).to_be_bytes());
    let mut rest = &data[n + 4..];
    for q in &queries {
        let used = string_field(rest, q);
        enc.extend_from_slice(&rest[..used]);
        rest = &rest[used..];
    }
    assert_eq!(enc, data);
}

/// Size of the image the NBD target serves: chunk 0 data, chunk 1 a hole,
/// chunk 2 a short tail.
pub const NBD_IMAGE_SIZE: u64 = 2 * 512 * 1024 + 5000;

struct NbdEnv {
    store: Store,
}

fn nbd_env() -> &'static NbdEnv {
    static ENV: OnceLock<NbdEnv> = OnceLock::new();
    ENV.get_or_init(|| {
        let store = Store::open("memory://").expect("memory store");
        let dir = scratch("nbd-image");
        let path = dir.join("image.ext4");
        let mut img = vec![0u8; NBD_IMAGE_SIZE as usize];
        for (i, b) in img.iter_mut().enumerate() {
            let chunk = i / (512 * 1024);
            if chunk != 1 {
                *b = (i % 251) as u8 ^ 0x5a;
            }
        }
        std::fs::write(&path, &img).expect("write image");
        runtime().block_on(async {
            push_file(
                &store,
                Arc::new(FixedKeys),
                &path,
                "t",
                "img",
                &PushOptions::default(),
            )
            .await
            .expect("push the NBD test image");
        });
        let _ = std::fs::remove_file(&path);
        NbdEnv { store }
    })
}

/// A whole NBD client session: the input is everything the client sends
/// (handshake, options, requests), played against a real [`Server`] over an
/// in-memory stream, with the image `t/img` in an in-memory store. The
/// server must neither panic nor hang once the client hangs up.
pub fn nbd_session(data: &[u8]) {
    nbd_exchange(data);
}

/// What the server of [`nbd_session`] sends back to the client.
pub fn nbd_exchange(data: &[u8]) -> Vec<u8> {
    let env = nbd_env();
    let overlay_dir = scratch("nbd-overlays");
    reset_dir(&overlay_dir);
    let rt = runtime();
    let out = rt.block_on(async {
        let tiers: Vec<Arc<dyn ChunkTier>> = vec![Arc::new(env.store.clone())];
        let reader = Arc::new(ChunkReader::new(8 << 20, None, tiers));
        let exports = Arc::new(
            Exports::new(env.store.clone(), Arc::new(FixedKeys), reader)
                .with_overlay_dir(overlay_dir.clone()),
        );
        let server = Arc::new(NbdService {
            catalog: Catalog::Open(exports),
            tls: None,
        });
        let (client, srv) = tokio::io::duplex(64 << 10);
        let (_stop, rx) = tokio::sync::watch::channel(false);
        let serve = tokio::spawn(server.serve(srv, rx));
        let (cr, mut cw) = tokio::io::split(client);
        let drain = tokio::spawn(async move {
            let mut out = Vec::new();
            let _ = BufReader::new(cr).read_to_end(&mut out).await;
            out
        });
        let _ = cw.write_all(data).await;
        let _ = cw.shutdown().await;
        tokio::time::timeout(Duration::from_secs(60), serve)
            .await
            .expect("the NBD server hung after the client hung up")
            .expect("the NBD server panicked");
        tokio::time::timeout(Duration::from_secs(60), drain)
            .await
            .expect("the NBD server kept the connection open")
            .expect("reading the replies panicked")
    });
    drop(rt);
    reset_dir(&overlay_dir);
    out
}
