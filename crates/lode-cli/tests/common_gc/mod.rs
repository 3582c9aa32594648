//! Helpers of the GC integration tests (and the GC benchmark): images built
//! from a shared pool of chunks, `lode gc` runs, and a census of a local
//! store that says whether it holds exactly the live set.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use lode_chunk::Manifest;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

/// lode's chunk size.
pub const CS: usize = 512 * 1024;

/// Block `k` of the shared pool: 512 KiB of deterministic bytes.
pub fn pool_block(k: u64) -> Vec<u8> {
    let mut x = (k + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(CS);
    while out.len() < CS {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out
}

/// Image `seed`: `chunks` chunks, most from a pool of `pool` blocks shared
/// by all images, one in four unique to the image, and a partial tail.
pub fn pooled_image(seed: u64, chunks: u64, pool: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut out = Vec::new();
    for i in 0..chunks {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let k = if (x >> 33).is_multiple_of(4) {
            1_000_000 + seed * 100 + i
        } else {
            (x >> 40) % pool
        };
        out.extend(pool_block(k));
    }
    out.extend(&pool_block(2_000_000 + seed)[..1234]);
    out
}

/// Runs `lode ARGS` with `LODE_HOME=home`, with a deadline.
pub fn lode(home: &Path, args: &[&str]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_lode"));
    c.env("LODE_HOME", home).env_remove("LODE_LOG").args(args);
    c.output().expect("run lode")
}

/// `lode gc --store STORE --json ARGS`: the report, or the error text.
pub fn gc(home: &Path, store: &Path, args: &[&str]) -> Result<serde_json::Value, String> {
    let mut a = vec!["gc", "--store", store.to_str().unwrap(), "--json"];
    a.extend_from_slice(args);
    let o = lode(home, &a);
    if o.status.success() {
        Ok(serde_json::from_slice(&o.stdout).expect("gc --json prints JSON"))
    } else {
        Err(String::from_utf8_lossy(&o.stderr).into_owned())
    }
}

/// What a local store holds.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Census {
    /// Live images: (tenant, name) → (image version, manifest digest).
    pub live: BTreeMap<(String, String), (u64, String)>,
    /// Chunk objects stored.
    pub chunks: BTreeSet<String>,
    /// Chunk objects the live manifests name.
    pub needed: BTreeSet<String>,
    /// Manifest objects stored.
    pub manifests: BTreeSet<String>,
    /// Manifests of live images.
    pub live_manifests: BTreeSet<String>,
    /// Roots with a document, and their states.
    pub roots: BTreeMap<String, String>,
    /// Intents, open alarms.
    pub intents: usize,
    /// Open alarms.
    pub alarms: usize,
    /// Bytes of every object.
    pub bytes: u64,
    /// Bytes of chunk objects.
    pub chunk_bytes: u64,
    /// Staging files of writes that were killed (`NAME#N`: not objects).
    pub staging: usize,
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, out);
        } else {
            out.push(p);
        }
    }
}

impl Census {
    /// Takes the census of the store in `dir`.
    pub fn of(dir: &Path) -> Census {
        let mut files = Vec::new();
        walk(dir, &mut files);
        let mut c = Census::default();
        for f in &files {
            let rel = f.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
            if rel
                .rsplit_once('#')
                .is_some_and(|(_, n)| n.bytes().all(|b| b.is_ascii_digit()))
            {
                c.staging += 1;
                continue;
            }
            if rel.starts_with('.') {
                continue;
            }
            let size = std::fs::metadata(f).map(|m| m.len()).unwrap_or(0);
            c.bytes += size;
            let parts: Vec<&str> = rel.split('/').collect();
            match parts.as_slice() {
                ["roots", r, "root.json"] => {
                    let v: serde_json::Value =
                        serde_json::from_slice(&std::fs::read(f).unwrap()).unwrap();
                    c.roots
                        .insert(r.to_string(), v["state"].as_str().unwrap().to_string());
                }
                ["roots", _, "chunks", ..] => {
                    c.chunks.insert(rel.clone());
                    c.chunk_bytes += size;
                }
                ["roots", _, "intents", ..] => c.intents += 1,
                ["alarms", ..] => c.alarms += 1,
                ["tenants", _, "manifests", _] => {
                    c.manifests.insert(rel.clone());
                }
                ["tenants", t, "images", n] => {
                    let v: serde_json::Value =
                        serde_json::from_slice(&std::fs::read(f).unwrap()).unwrap();
                    let live = v["state"].as_str().unwrap_or("live") == "live";
                    if let (true, Some(d)) = (live, v["manifest"].as_str()) {
                        let version = v["image_version"].as_u64().unwrap_or(0);
                        c.live
                            .insert((t.to_string(), n.to_string()), (version, d.to_string()));
                    }
                }
                _ => {}
            }
        }
        for ((t, _), (_, d)) in &c.live {
            let rel = format!("tenants/{t}/manifests/{}", &d[7..]);
            if let Ok(b) = std::fs::read(dir.join(&rel)) {
                let m = Manifest::decode(&b).unwrap();
                for n in m.names.iter().flatten() {
                    let h = n.to_hex();
                    c.needed
                        .insert(format!("roots/{}/chunks/{}/{h}", m.root, &h[..2]));
                }
            }
            c.live_manifests.insert(rel);
        }
        c
    }

    /// True if the store holds exactly the live set: the chunks and
    /// manifests of live images, one root, no intent, no open alarm.
    pub fn is_live_set(&self) -> bool {
        self.chunks == self.needed
            && self.manifests == self.live_manifests
            && self.roots.len() == 1
            && self.intents == 0
            && self.alarms == 0
    }

    /// What differs from the live set, for failure messages.
    pub fn diff(&self) -> String {
        format!(
            "{} chunks stored / {} needed ({} extra, {} missing), {} manifests / {} live, roots {:?}, {} intents, {} alarms",
            self.chunks.len(),
            self.needed.len(),
            self.chunks.difference(&self.needed).count(),
            self.needed.difference(&self.chunks).count(),
            self.manifests.len(),
            self.live_manifests.len(),
            self.roots,
            self.intents,
            self.alarms
        )
    }
}

/// Runs GC passes (the first rotating) until the store holds the live set;
/// a pass that finds the lease held (a killed collector's) waits for it.
/// Returns the passes run.
pub fn converge(home: &Path, store: &Path, grace: &str, lease: &str) -> usize {
    let mut passes = 0;
    let mut rotated = false;
    for _ in 0..40 {
        let mut args = vec![
            "--retire-after",
            grace,
            "--expire-after",
            grace,
            "--lease",
            lease,
        ];
        if !rotated {
            args.extend(["--rotate-after", "0s"]);
        }
        match gc(home, store, &args) {
            Ok(_) => {
                passes += 1;
                rotated = true;
                if Census::of(store).is_live_set() {
                    return passes;
                }
            }
            Err(e) if e.contains("lease is held") => {}
            Err(e) => panic!("lode gc failed: {e}"),
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    panic!("the store did not converge: {}", Census::of(store).diff());
}
