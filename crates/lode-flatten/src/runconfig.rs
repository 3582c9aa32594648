//! The image's run settings, kept inside the image: after its last layer,
//! the flatten writes the OCI config's `config` object (`Entrypoint`, `Cmd`,
//! `Env`, `WorkingDir`, `User`, ...) to [`PATH`], so that whoever runs the
//! image (a function's frontend, a worker) reads them from the image itself,
//! sealed and verified like every other byte of it. See docs/format.md.

use crate::FlattenError;
use lode_ext4::{Builder, Meta};

/// Where the run settings are, from the image's root.
pub const PATH: &str = "/.lode/image.json";

/// The run settings of an OCI image config: its `config` object re-written
/// as compact JSON with sorted keys (`{}` when the config has none).
pub fn run_settings(config_json: &[u8]) -> Result<Vec<u8>, FlattenError> {
    let doc: serde_json::Value =
        serde_json::from_slice(config_json).map_err(FlattenError::RunSettings)?;
    let settings = match doc.get("config") {
        Some(c @ serde_json::Value::Object(_)) => c.clone(),
        _ => serde_json::Value::Object(Default::default()),
    };
    let mut out = serde_json::to_vec(&sorted(settings)).map_err(FlattenError::RunSettings)?;
    out.push(b'\n');
    Ok(out)
}

/// `v` with every object's keys in byte order, whatever map serde_json uses.
fn sorted(v: serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::Object(m) => {
            let mut kv: Vec<_> = m.into_iter().collect();
            kv.sort_by(|a, b| a.0.cmp(&b.0));
            serde_json::Value::Object(kv.into_iter().map(|(k, v)| (k, sorted(v))).collect())
        }
        serde_json::Value::Array(a) => {
            serde_json::Value::Array(a.into_iter().map(sorted).collect())
        }
        other => other,
    }
}

/// Writes [`PATH`] as one more layer on top of the image's (it replaces a
/// file of that name that a layer may have brought), packed into the last
/// layer's section ([`Builder::begin_layer_packed`]): it costs no chunk or
/// inode group of its own. Root-owned, read-only, dated at the epoch: the
/// same config gives the same bytes.
pub(crate) fn write(b: &mut Builder, config_json: &[u8]) -> Result<(), FlattenError> {
    let bytes = run_settings(config_json)?;
    let dir = vec![b".lode".to_vec()];
    let file = vec![b".lode".to_vec(), b"image.json".to_vec()];
    let meta = |perm| Meta {
        perm,
        ..Meta::default()
    };
    let step = |r: lode_ext4::Result<()>| r.map_err(FlattenError::Finish);
    step(b.begin_layer_packed())?;
    step(b.add_dir(&dir, meta(0o755)))?;
    step(b.add_file(
        &file,
        meta(0o444),
        bytes.len() as u64,
        &mut bytes.as_slice(),
    ))?;
    step(b.end_layer())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_settings_are_the_config_object_sorted() {
        let c = br#"{"architecture":"amd64","config":{"Env":["PATH=/bin"],"Cmd":["app.handler"],"Entrypoint":["/e"]},"rootfs":{}}"#;
        assert_eq!(
            run_settings(c).unwrap(),
            b"{\"Cmd\":[\"app.handler\"],\"Entrypoint\":[\"/e\"],\"Env\":[\"PATH=/bin\"]}\n"
        );
        assert_eq!(run_settings(br#"{"rootfs":{}}"#).unwrap(), b"{}\n");
        assert_eq!(run_settings(br#"{"config":null}"#).unwrap(), b"{}\n");
        assert!(run_settings(b"{").is_err());
    }
}
