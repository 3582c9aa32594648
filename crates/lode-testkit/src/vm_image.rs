//! The small images the micro-VM tests boot: the host's static busybox as
//! `/bin/busybox` with a few applets linked, plus files of the test's own,
//! written as a one-layer OCI layout with a given image config.

use sha2::{Digest, Sha256};
use std::path::Path;

/// What goes into a [`write_busybox_image`] image besides busybox.
#[derive(Debug, Clone)]
pub struct BusyboxImage<'a> {
    /// Applets linked as `/bin/NAME` → `busybox`.
    pub applets: &'a [&'a str],
    /// Extra directories (parents first).
    pub dirs: &'a [&'a str],
    /// Extra files: path (relative), mode, contents.
    pub files: &'a [(&'a str, u32, &'a [u8])],
    /// The image config's `config` object (`Entrypoint`, `Cmd`, `Env`, `WorkingDir`).
    pub config: serde_json::Value,
}

fn sha(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(1_700_000_000);
    h.set_uid(0);
    h.set_gid(0);
    h
}

/// Writes the OCI layout of `image` to `dir` (tag `latest`). Panics when
/// `/bin/busybox` (Debian's busybox-static) is missing: the tests need it.
pub fn write_busybox_image(dir: &Path, image: &BusyboxImage<'_>) {
    let busybox = std::fs::read("/bin/busybox")
        .expect("/bin/busybox (busybox-static) is installed by scripts/test.sh");
    let mut b = tar::Builder::new(Vec::new());
    let base = ["bin", "etc", "proc", "sys", "dev", "tmp", "root"];
    for d in base.iter().chain(image.dirs) {
        let mut h = header(tar::EntryType::Directory, 0o755, 0);
        b.append_data(&mut h, d, &[][..]).expect("tar");
    }
    let mut h = header(tar::EntryType::Regular, 0o755, busybox.len() as u64);
    b.append_data(&mut h, "bin/busybox", &busybox[..])
        .expect("tar");
    for tool in image.applets {
        let mut h = header(tar::EntryType::Symlink, 0o777, 0);
        b.append_link(&mut h, format!("bin/{tool}"), "busybox")
            .expect("tar");
    }
    for (path, mode, bytes) in image.files {
        let mut h = header(tar::EntryType::Regular, *mode, bytes.len() as u64);
        b.append_data(&mut h, path, *bytes).expect("tar");
    }
    let layer = b.into_inner().expect("tar");
    write_layout(dir, &layer, image.config.clone());
}

/// Writes an OCI layout to `dir` (tag `latest`) of one uncompressed
/// `layer` and the image config's `config` object.
pub fn write_layout(dir: &Path, layer: &[u8], config: serde_json::Value) {
    std::fs::create_dir_all(dir.join("blobs/sha256")).expect("blob dir");
    let put = |bytes: &[u8]| {
        let d = sha(bytes);
        std::fs::write(dir.join("blobs/sha256").join(&d[7..]), bytes).expect("blob");
        d
    };
    let ld = put(layer);
    let config = serde_json::json!({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [ld]}, "config": config});
    let config = serde_json::to_vec(&config).expect("json");
    let cd = put(&config);
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": ld, "size": layer.len()}]
    });
    let manifest = serde_json::to_vec(&manifest).expect("json");
    let md = put(&manifest);
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": manifest.len(),
        "annotations": {"org.opencontainers.image.ref.name": "latest"}}]});
    std::fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&index).expect("json"),
    )
    .expect("index");
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).expect("layout");
}
