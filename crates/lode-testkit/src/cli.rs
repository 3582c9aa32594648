//! Helpers to drive the `lode` binary and check its results.

use crate::compare::assert_trees_match;
use crate::compare::show;
use crate::model::Tree;
use crate::read_ext4::read_ext4_view_lenient;
use crate::read_mount::{can_loop_mount, read_via_mount};
use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// `oci:DIR[:REF]`.
pub fn oci_source(dir: &Path, reference: Option<&str>) -> String {
    match reference {
        Some(r) => format!("oci:{}:{r}", dir.display()),
        None => format!("oci:{}", dir.display()),
    }
}

/// `docker-archive:FILE[:REF]`.
pub fn docker_source(file: &Path, reference: Option<&str>) -> String {
    match reference {
        Some(r) => format!("docker-archive:{}:{r}", file.display()),
        None => format!("docker-archive:{}", file.display()),
    }
}

/// A `lode flatten` invocation.
#[derive(Clone, Debug)]
pub struct Flatten {
    bin: PathBuf,
    source: String,
    out: PathBuf,
    env: Vec<(String, String)>,
    env_remove: Vec<String>,
    umask: Option<u32>,
    cwd: Option<PathBuf>,
}

impl Flatten {
    /// `BIN flatten SOURCE -o OUT`.
    pub fn new(bin: impl AsRef<Path>, source: impl Into<String>, out: impl AsRef<Path>) -> Self {
        Flatten {
            bin: bin.as_ref().to_path_buf(),
            source: source.into(),
            out: out.as_ref().to_path_buf(),
            env: Vec::new(),
            env_remove: Vec::new(),
            umask: None,
            cwd: None,
        }
    }
    /// Set an environment variable for the child.
    #[must_use]
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }
    /// Remove an environment variable for the child.
    #[must_use]
    pub fn env_remove(mut self, k: &str) -> Self {
        self.env_remove.push(k.into());
        self
    }
    /// Run under this umask (via `sh -c 'umask N; exec ...'`).
    #[must_use]
    pub fn umask(mut self, m: u32) -> Self {
        self.umask = Some(m);
        self
    }
    /// Working directory of the child.
    #[must_use]
    pub fn cwd(mut self, d: impl AsRef<Path>) -> Self {
        self.cwd = Some(d.as_ref().to_path_buf());
        self
    }
    /// Human-readable command line.
    pub fn describe(&self) -> String {
        format!(
            "{} flatten {} -o {}",
            self.bin.display(),
            self.source,
            self.out.display()
        )
    }
    /// Run and return the raw output.
    pub fn output(&self) -> Output {
        let mut cmd = match self.umask {
            Some(m) => {
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(format!("umask {m:03o}; exec \"$0\" \"$@\""))
                    .arg(&self.bin)
                    .args([
                        OsStr::new("flatten"),
                        OsStr::new(&self.source),
                        OsStr::new("-o"),
                        self.out.as_os_str(),
                    ]);
                c
            }
            None => {
                let mut c = Command::new(&self.bin);
                c.args([
                    OsStr::new("flatten"),
                    OsStr::new(&self.source),
                    OsStr::new("-o"),
                    self.out.as_os_str(),
                ]);
                c
            }
        };
        for k in &self.env_remove {
            cmd.env_remove(k);
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        if let Some(d) = &self.cwd {
            cmd.current_dir(d);
        }
        cmd.output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.bin.display()))
    }
    /// Run, panicking with stderr unless it succeeds and OUT exists.
    pub fn run_ok(&self) {
        let o = self.output();
        if !o.status.success() {
            panic!(
                "`{}` failed ({}):\nstdout:\n{}\nstderr:\n{}",
                self.describe(),
                o.status,
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
        }
        assert!(
            self.out.is_file(),
            "`{}` succeeded but {} is not a file",
            self.describe(),
            self.out.display()
        );
    }
}

/// Run `e2fsck -fn IMG`; Ok(output) if exit 0, Err(exit + output) otherwise.
pub fn e2fsck(img: &Path) -> Result<String, String> {
    let o = Command::new("e2fsck")
        .arg("-fn")
        .arg(img)
        .output()
        .map_err(|e| format!("cannot run e2fsck: {e}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    if o.status.success() {
        Ok(text)
    } else {
        Err(format!(
            "e2fsck -fn {} exited with {}:\n{text}",
            img.display(),
            o.status
        ))
    }
}

/// Panic (with e2fsck's output) unless `e2fsck -fn IMG` exits 0.
pub fn assert_e2fsck_clean(img: &Path) {
    if let Err(e) = e2fsck(img) {
        panic!("{e}");
    }
}

/// `sha256:<hex>` of a file.
pub fn file_digest(p: &Path) -> String {
    crate::image::sha256_file(p).unwrap_or_else(|e| panic!("hash {}: {e:#}", p.display()))
}

/// Data segments `(start, end)` of a file per `SEEK_DATA`/`SEEK_HOLE`
/// (None if the filesystem cannot tell).
fn data_segments(f: &fs::File) -> Option<Vec<(u64, u64)>> {
    use nix::unistd::{lseek, Whence};
    let len = f.metadata().ok()?.len() as i64;
    let mut segs = Vec::new();
    let mut pos = 0i64;
    while pos < len {
        let d = match lseek(f, pos, Whence::SeekData) {
            Ok(d) => d,
            Err(nix::errno::Errno::ENXIO) => break,
            Err(_) => return None,
        };
        let h = lseek(f, d, Whence::SeekHole).ok()?;
        segs.push((d as u64, h as u64));
        pos = h;
    }
    Some(segs)
}

/// True if two files have identical bytes. Sparse files with the same data
/// segments only have their data compared (fast for mostly-empty images).
pub fn files_identical(a: &Path, b: &Path) -> bool {
    use std::io::{Seek, SeekFrom};
    let (Ok(mut fa), Ok(mut fb)) = (fs::File::open(a), fs::File::open(b)) else {
        return false;
    };
    match (fa.metadata(), fb.metadata()) {
        (Ok(ma), Ok(mb)) if ma.len() == mb.len() => {}
        _ => return false,
    }
    let len = fa.metadata().map(|m| m.len()).unwrap_or(0);
    let ranges = match (data_segments(&fa), data_segments(&fb)) {
        (Some(x), Some(y)) if x == y => x,
        _ => vec![(0, len)],
    };
    let mut ba = vec![0u8; 1 << 20];
    let mut bb = vec![0u8; 1 << 20];
    for (start, end) in ranges {
        if fa.seek(SeekFrom::Start(start)).is_err() || fb.seek(SeekFrom::Start(start)).is_err() {
            return false;
        }
        let mut pos = start;
        while pos < end {
            let want = ((end - pos) as usize).min(ba.len());
            match (
                read_full(&mut fa, &mut ba[..want]),
                read_full(&mut fb, &mut bb[..want]),
            ) {
                (Ok(x), Ok(y)) if x == want && y == want && ba[..x] == bb[..y] => {
                    pos += want as u64
                }
                _ => return false,
            }
        }
    }
    true
}

fn read_full(f: &mut fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    use std::io::Read;
    let mut n = 0;
    while n < buf.len() {
        let r = f.read(&mut buf[n..])?;
        if r == 0 {
            break;
        }
        n += r;
    }
    Ok(n)
}

/// Panic unless all files are byte-identical to the first (labels name
/// them in the message).
pub fn assert_all_identical(files: &[(String, PathBuf)]) {
    let Some((l0, f0)) = files.first() else {
        return;
    };
    let differ: Vec<&String> = files[1..]
        .iter()
        .filter(|(_, f)| !files_identical(f0, f))
        .map(|(l, _)| l)
        .collect();
    if !differ.is_empty() {
        let digests: Vec<String> = files
            .iter()
            .map(|(l, f)| format!("{l}: {}", file_digest(f)))
            .collect();
        panic!(
            "not byte-identical to {l0}: {differ:?}
  {}",
            digests.join(
                "
  "
            )
        );
    }
}

/// Full verification of a flattened image against the model: e2fsck clean,
/// ext4-view read-back matches, loop-mount read-back matches (skipped with a
/// message when not root).
pub fn verify_image(img: &Path, expected: &Tree, what: &str) {
    assert_e2fsck_clean(img);
    let r = read_ext4_view_lenient(img)
        .unwrap_or_else(|e| panic!("{what}: ext4-view read of {} failed: {e:#}", img.display()));
    // Tolerate ext4-view 1.0's post-2038 timestamp bug, but only for paths
    // the model says have such an mtime (the loop mount still checks them).
    let mut exp = expected.clone();
    for (p, err) in &r.unreadable {
        match expected.get(p) {
            Some(n) if n.mtime >= 1 << 31 => {
                let mut prefix = p.clone();
                prefix.push(b'/');
                exp.retain(|k, _| k != p && !k.starts_with(&prefix));
            }
            _ => panic!("{what}: ext4-view cannot read {}: {err}", show(p)),
        }
    }
    assert_trees_match(&exp, &r.tree, &format!("{what} (ext4-view)"));
    if can_loop_mount() {
        let t = read_via_mount(img).unwrap_or_else(|e| {
            panic!("{what}: loop-mount read of {} failed: {e:#}", img.display())
        });
        assert_trees_match(expected, &t, &format!("{what} (loop mount)"));
    } else {
        eprintln!("SKIP {what}: loop-mount comparison needs root and /dev/loop-control");
    }
}

/// Checks the failure contract of `lode flatten` on a bad input and returns
/// the list of violations (empty = OK):
/// * non-zero exit, no panic text;
/// * stderr is exactly one non-empty line (a trailing newline is fine);
/// * it mentions the layer: one of `layer_ids` (digests — hex prefixes of at
///   least 12 chars are accepted —, docker-archive member paths) or `layer N` / `layer #N` / `layer[N]` with
///   N the 0- or 1-based index;
/// * it mentions every string of `must_mention` (e.g. the entry name);
/// * OUT does not exist and its directory holds no files at all.
pub fn bad_input_violations(
    o: &Output,
    out: &Path,
    layer_index: Option<usize>,
    layer_ids: &[&str],
    must_mention: &[&str],
) -> Vec<String> {
    let mut v = Vec::new();
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    if o.status.success() {
        v.push("exit status is 0".into());
    }
    if o.status.code().is_none() {
        v.push(format!("killed by a signal: {}", o.status));
    }
    if stderr.contains("panicked") || stderr.contains("RUST_BACKTRACE") {
        v.push("stderr contains panic text".into());
    }
    let trimmed = stderr.trim_end_matches('\n');
    if trimmed.is_empty() {
        v.push("stderr is empty".into());
    } else if trimmed.lines().count() != 1 {
        v.push(format!(
            "stderr has {} lines, expected 1",
            trimmed.lines().count()
        ));
    }
    if let Some(idx) = layer_index {
        if !mentions_layer(trimmed, idx, layer_ids) {
            v.push(format!(
                "stderr does not identify layer {idx} (index or digest {layer_ids:?})"
            ));
        }
    }
    for m in must_mention {
        if !trimmed.contains(m) {
            v.push(format!("stderr does not mention {m:?}"));
        }
    }
    if out.exists() || fs::symlink_metadata(out).is_ok() {
        v.push(format!("{} exists after failure", out.display()));
    }
    if let Some(dir) = out.parent() {
        match fs::read_dir(dir) {
            Ok(rd) => {
                let left: Vec<String> = rd
                    .filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect();
                if !left.is_empty() {
                    v.push(format!(
                        "output directory not empty after failure: {left:?}"
                    ));
                }
            }
            Err(e) => v.push(format!("cannot list {}: {e}", dir.display())),
        }
    }
    v
}

/// Does `msg` identify layer `idx` (0-based) by index (0- or 1-based, after
/// the word "layer") or by one of `ids` (digest, `sha256:` optional, prefix
/// of >= 12 hex chars accepted)?
pub fn mentions_layer(msg: &str, idx: usize, ids: &[&str]) -> bool {
    let lower = msg.to_ascii_lowercase();
    for id in ids {
        let hex = id
            .strip_prefix("sha256:")
            .unwrap_or(id)
            .to_ascii_lowercase();
        if hex.len() >= 12 && lower.contains(&hex[..12]) {
            return true;
        }
        // Full non-hex identifiers (e.g. a docker-archive member path).
        if !id.is_empty() && lower.contains(&id.to_ascii_lowercase()) {
            return true;
        }
    }
    let bytes = lower.as_bytes();
    let mut start = 0;
    while let Some(pos) = lower[start..].find("layer") {
        let mut i = start + pos + "layer".len();
        // skip "s", spaces, '#', '[', '(', ':', '='
        while i < bytes.len() && matches!(bytes[i], b's' | b' ' | b'#' | b'[' | b'(' | b':' | b'=')
        {
            i += 1;
        }
        let digits: String = lower[i..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        if let Ok(n) = digits.parse::<usize>() {
            if n == idx || n == idx + 1 {
                return true;
            }
        }
        start += pos + 1;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_files() {
        #![allow(clippy::unwrap_used)]
        use std::io::{Seek, SeekFrom, Write};
        let d = tempfile::tempdir().unwrap();
        let mk = |name: &str, explicit_zeros: bool, byte: u8| {
            let p = d.path().join(name);
            let mut f = fs::File::create(&p).unwrap();
            if explicit_zeros {
                f.write_all(&vec![0u8; 8 << 20]).unwrap();
            } else {
                f.set_len(8 << 20).unwrap();
            }
            f.seek(SeekFrom::Start(3 << 20)).unwrap();
            f.write_all(&[byte; 5000]).unwrap();
            p
        };
        let a = mk("a", false, 1);
        let b = mk("b", false, 1);
        let c = mk("c", true, 1); // same bytes, different holes
        let e = mk("e", false, 2);
        assert!(files_identical(&a, &b));
        assert!(files_identical(&a, &c));
        assert!(!files_identical(&a, &e));
        assert!(!files_identical(&a, &d.path().join("missing")));
    }

    #[test]
    fn layer_mentions() {
        assert!(mentions_layer("error: layer 1 (sha256:abc): bad", 1, &[]));
        assert!(mentions_layer("error: Layer #2: bad", 1, &[]));
        assert!(mentions_layer("error in layer[1] entry x", 1, &[]));
        assert!(!mentions_layer("error in layer 3 entry x", 1, &[]));
        assert!(mentions_layer(
            "blob sha256:0123456789abcdef0000 mismatch",
            0,
            &["sha256:0123456789abcdef0000ffff"]
        ));
        assert!(!mentions_layer(
            "something failed",
            0,
            &["sha256:0123456789abcdef"]
        ));
    }
}
