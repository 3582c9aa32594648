//! lode-store: documents read back from the (untrusted) store: image
//! pointers, root documents, the genesis claim, and manifests reached
//! through a pointer.

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
/// `3` a manifest that `t/x` points at (root `r` active). Reading never panics; a pointer
/// read yields a well-formed digest; a root read round-trips.
pub fn documents(data: &[u8]) {
    let Some((&sel, doc)) = data.split_first() else {
        return;
    };
    let store = Store::open("memory://").expect("memory store");
    let doc = Bytes::copy_from_slice(doc);
    rt().block_on(async {
        match sel % 4 {
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
