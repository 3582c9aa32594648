//! lode-store: documents read back from the (untrusted) store: image
//! pointers (format 1 and sealed format 2), root documents, the genesis
//! claim, manifests reached through a pointer, the GC lease, alarms,
//! publish intents, and a whole GC pass over a store holding the document.

use crate::support::{runtime, FixedKeys};
use bytes::Bytes;
use lode_store::{open_image, RootInfo, Store};
use object_store::path::Path;
use std::sync::OnceLock;

fn rt() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(runtime)
}

/// The first byte chooses the document the rest becomes, in a fresh
/// in-memory store: `0` the pointer `tenants/t/images/x`, `1` the root
/// document `roots/r1/root.json`, `2` the genesis claim `roots/GENESIS`,
/// `3` a manifest that `t/x` points at (root `r` active), `4` the pointer,
/// resolved with keys (seal checked), `5` the GC lease, `6` an alarm and a
/// publish intent in an active root (which is then retired), `7` a manifest
/// named by a pointer, then a dry and a real GC pass. Reading never panics;
/// a pointer read yields a well-formed digest; a root read round-trips.
pub fn documents(data: &[u8]) {
    let Some((&sel, doc)) = data.split_first() else {
        return;
    };
    let store = Store::open("memory://").expect("memory store");
    let doc = Bytes::copy_from_slice(doc);
    rt().block_on(async {
        match sel % 8 {
            0 => {
                store
                    .put(&Path::from("tenants/t/images/x"), doc)
                    .await
                    .expect("put");
                if let Ok(d) = store.get_image("t", "x").await {
                    let hex = d.strip_prefix("sha256:").expect("sha256: prefix");
                    assert!(hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()));
                }
                let _ = store.list_images().await;
            }
            1 => {
                store
                    .put(&Path::from("roots/r1/root.json"), doc)
                    .await
                    .expect("put");
                if let Ok(r) = store.root("r1").await {
                    let again: RootInfo =
                        serde_json::from_slice(&serde_json::to_vec(&r).expect("json"))
                            .expect("a root document round-trips");
                    assert_eq!(again, r);
                }
                let _ = store.roots().await;
                let _ = store.active_root(&FixedKeys).await;
            }
            2 => {
                store
                    .put(&Path::from("roots/GENESIS"), doc)
                    .await
                    .expect("put");
                let _ = store.active_root(&FixedKeys).await;
            }
            4 => {
                store
                    .put(&Path::from("tenants/t/images/x"), doc)
                    .await
                    .expect("put");
                if let Ok(r) = store.resolve_image(&FixedKeys, "t", "x").await {
                    assert!(r.digest.starts_with("sha256:") && r.digest.len() == 71);
                }
                let _ = lode_store::remove_image(&store, &FixedKeys, "t", "x").await;
                let _ = store.fence_pointer("t", "x").await;
            }
            5 => {
                store
                    .put(&Path::from("gc/lease.json"), doc)
                    .await
                    .expect("put");
                if let Ok(Some(d)) = store.lease_doc().await {
                    let again: lode_store::lease::LeaseDoc =
                        serde_json::from_slice(&serde_json::to_vec(&d).expect("json"))
                            .expect("a lease round-trips");
                    assert_eq!(again, d);
                }
                if let Ok(l) = store.acquire_lease("fuzz", 1000).await {
                    assert!(l.token() >= 1);
                }
            }
            6 => {
                let root =
                    br#"{"version":2,"id":"r","state":"active","salt_id":"5a175a17","created":1}"#;
                store
                    .put(&Path::from("roots/r/root.json"), Bytes::from_static(root))
                    .await
                    .expect("put");
                for p in ["alarms/r/1.json", "roots/r/intents/1.json"] {
                    store.put(&Path::from(p), doc.clone()).await.expect("put");
                }
                let _ = store.alarms_of("r").await;
                let _ = store.open_alarms().await;
                let _ = store.retire_root("r", 0).await;
            }
            7 => {
                let root =
                    br#"{"version":2,"id":"r","state":"retired","salt_id":"5a175a17","created":1}"#;
                store
                    .put(&Path::from("roots/r/root.json"), Bytes::from_static(root))
                    .await
                    .expect("put");
                let digest = store.put_manifest("t", doc).await.expect("put manifest");
                store.set_image("t", "x", &digest).await.expect("set image");
                let keys: std::sync::Arc<dyn lode_chunk::KeyProvider> =
                    std::sync::Arc::new(FixedKeys);
                for dry_run in [true, false] {
                    let opts = lode_store::GcOptions {
                        dry_run,
                        retire_after: std::time::Duration::ZERO,
                        expire_after: std::time::Duration::ZERO,
                        ..Default::default()
                    };
                    let _ = lode_store::gc_pass(&store, keys.clone(), &opts).await;
                }
            }
            _ => {
                let root =
                    br#"{"version":1,"id":"r","state":"active","salt_id":"5a175a17","created":1}"#;
                store
                    .put(&Path::from("roots/r/root.json"), Bytes::from_static(root))
                    .await
                    .expect("put");
                let digest = store.put_manifest("t", doc).await.expect("put manifest");
                store.set_image("t", "x", &digest).await.expect("set image");
                if let Ok(img) = open_image(&store, &FixedKeys, "t", "x").await {
                    assert_eq!(img.manifest.tenant, "t");
                    assert_eq!(img.keys.0.len(), img.manifest.names.len());
                }
            }
        }
    });
}
