//! Filesystem images served by the agent: the kernel mounts one through
//! nbdfuse + a loop device, and `lode cat` reads single files on demand.
#![allow(clippy::unwrap_used, missing_docs)]

mod common_agent;

use common_agent::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TENANT: &str = "acme";
const NAME: &str = "app";

/// Unmounts and stops what the kernel test set up, even when it fails.
struct Mounts {
    loop_mnt: Option<PathBuf>,
    fuse_mnt: PathBuf,
    nbdfuse: Option<Child>,
}

impl Mounts {
    fn umount_loop(&mut self) -> Result<(), String> {
        if let Some(m) = self.loop_mnt.take() {
            let o = run_timeout(Command::new("umount").arg(&m), Duration::from_secs(30));
            if !o.status.success() {
                let _ = Command::new("umount").arg("-l").arg(&m).status();
                return Err(format!("umount {}: {}", m.display(), o.stderr));
            }
        }
        Ok(())
    }

    fn stop_fuse(&mut self) -> Result<(), String> {
        let Some(mut child) = self.nbdfuse.take() else {
            return Ok(());
        };
        let o = run_timeout(
            Command::new("fusermount3").arg("-u").arg(&self.fuse_mnt),
            Duration::from_secs(30),
        );
        let mut res = if o.status.success() {
            Ok(())
        } else {
            Err(format!("fusermount3 -u: {}", o.stderr))
        };
        // nbdfuse exits once unmounted.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                let _ = Command::new("umount")
                    .arg("-l")
                    .arg(&self.fuse_mnt)
                    .status();
                res = res.and(Err("nbdfuse did not exit after unmount".to_string()));
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        res
    }
}

impl Drop for Mounts {
    fn drop(&mut self) {
        let _ = self.umount_loop();
        let _ = self.stop_fuse();
    }
}

fn read_tree(root: &Path, dir: &Path, out: &mut Vec<String>) {
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let p = e.path();
        let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
        if rel == "lost+found" {
            continue;
        }
        if e.file_type().unwrap().is_dir() {
            read_tree(root, &p, out);
        } else {
            out.push(rel);
        }
    }
}

/// Test 4 of the brief: The kernel reads the image: nbdfuse turns the export into a file, a
/// read-only loop mount of that file shows the image's files with the right
/// content.
#[test]
fn kernel_mounts_the_export_through_nbdfuse() {
    let t = Instant::now();
    require_tool("qemu-img", "qemu-utils");
    require_tool("nbdfuse", "libnbd-bin");
    require_tool("fusermount3", "fuse3");
    assert!(
        Path::new("/dev/fuse").exists(),
        "/dev/fuse is missing: FUSE is not available on this machine"
    );
    assert!(
        Path::new("/dev/loop-control").exists() || Path::new("/dev/loop0").exists(),
        "no loop devices on this machine (/dev/loop-control missing)"
    );
    let uid = run_timeout(Command::new("id").arg("-u"), Duration::from_secs(10)).ok();
    assert_eq!(
        uid.stdout_str().trim(),
        "0",
        "this test mounts filesystems and must run as root"
    );

    let env = Env::new();
    let img = FsImage::build(&env);
    env.push(&img.path, TENANT, NAME);
    let unique = env.inspect(TENANT, NAME)["unique_chunks"].as_u64().unwrap();
    let agent = env.agent("a", &[]);

    let fuse_mnt = env.path("fuse");
    let loop_mnt = env.path("mnt");
    fs::create_dir_all(&fuse_mnt).unwrap();
    fs::create_dir_all(&loop_mnt).unwrap();
    let fuse_log = env.path("nbdfuse.log");
    let child = Command::new("nbdfuse")
        .arg(&fuse_mnt)
        .arg(agent.uri(&format!("{TENANT}/{NAME}")))
        .stdin(Stdio::null())
        .stdout(fs::File::create(&fuse_log).unwrap())
        .stderr(fs::File::create(env.path("nbdfuse.err")).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start nbdfuse: {e}"));
    let mut mounts = Mounts {
        loop_mnt: None,
        fuse_mnt: fuse_mnt.clone(),
        nbdfuse: Some(child),
    };

    let dev = fuse_mnt.join("nbd");
    let deadline = Instant::now() + Duration::from_secs(20);
    let image_size = fs::metadata(&img.path).unwrap().len();
    while fs::metadata(&dev).map(|m| m.len()).unwrap_or(0) != image_size {
        if let Some(st) = mounts.nbdfuse.as_mut().unwrap().try_wait().unwrap() {
            panic!(
                "nbdfuse exited ({st}): {}",
                fs::read_to_string(env.path("nbdfuse.err")).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "nbdfuse did not expose {} with {image_size} bytes within 20 s: {}",
            dev.display(),
            fs::read_to_string(env.path("nbdfuse.err")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let o = run_timeout(
        Command::new("mount")
            .args(["-t", "ext4", "-o", "loop,ro"])
            .arg(&dev)
            .arg(&loop_mnt),
        Duration::from_secs(60),
    );
    assert!(
        o.status.success(),
        "mount -o loop,ro {} failed: {}",
        dev.display(),
        o.stderr
    );
    mounts.loop_mnt = Some(loop_mnt.clone());

    let mut listed = Vec::new();
    read_tree(&loop_mnt, &loop_mnt, &mut listed);
    listed.sort();
    let mut want: Vec<String> = img.files.iter().map(|(p, _)| p.clone()).collect();
    // The flatten adds the image's run settings (lode_flatten::runconfig).
    want.push(".lode/image.json".to_string());
    want.sort();
    assert_eq!(listed, want, "files in the mounted image");
    for (p, data) in &img.files {
        assert_file_is(
            &loop_mnt.join(p),
            data,
            &format!("/{p} read by the kernel through the agent"),
        );
    }
    mounts.umount_loop().unwrap();
    mounts.stop_fuse().unwrap();

    let m = agent.metrics();
    assert!(
        m[STORE_HITS] > 0.0 && m[STORE_HITS] <= unique as f64,
        "store fetches {} (unique chunks {unique})",
        m[STORE_HITS]
    );
    eprintln!(
        "kernel_mounts_the_export_through_nbdfuse: {:.1} s",
        t.elapsed().as_secs_f64()
    );
}

/// The number right after `key` in `line`, if any.
fn num_after(line: &str, key: &str) -> Option<u64> {
    let i = line.find(key)? + key.len();
    let digits: String = line[i..]
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// What `lode cat`'s stats line says: (chunks fetched from remote tiers,
/// chunks in the image, of those fetched from the store, disk cache hits).
/// Accepts `chunks fetched N / M total (K from local disk cache)` and
/// `chunks fetched N / M total (store S, local disk K)`.
fn cat_stats(stderr: &str) -> (u64, u64, u64, u64) {
    let line = stderr
        .lines()
        .find(|l| l.starts_with("lode cat:"))
        .unwrap_or_else(|| panic!("no stats line on stderr:\n{stderr}"));
    let bad = |what: &str| -> u64 { panic!("cannot find {what} in the stats line: {line}") };
    let fetched = num_after(line, "chunks fetched").unwrap_or_else(|| bad("chunks fetched"));
    let rest = &line[line.find("chunks fetched").unwrap()..];
    let total = num_after(rest, "/").unwrap_or_else(|| bad("total chunks"));
    let disk = num_after(line, "local disk")
        .or_else(|| {
            let i = line.find(" from local disk")?;
            line[..i]
                .rsplit(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| bad("disk cache hits"));
    let store = num_after(line, "(store")
        .or_else(|| num_after(line, " store"))
        .unwrap_or(fetched);
    (fetched, total, store, disk)
}

/// Test 9 of the brief: `lode cat` prints a file equal to the source with a stats line; it
/// fetches only part of the image; a second run over the same cache dir
/// fetches nothing from the store.
#[test]
fn lode_cat_reads_files_on_demand_and_reuses_the_cache() {
    let t = Instant::now();
    let env = Env::new();
    let img = FsImage::build(&env);
    env.push(&img.path, TENANT, NAME);
    let info = env.inspect(TENANT, NAME);
    let stored = info["stored_chunks"].as_u64().unwrap();
    let chunks = info["chunks"].as_u64().unwrap();
    let cache = env.path("cache");
    let store = env.store.to_str().unwrap().to_string();
    let cat = |path: &str, cache: &Path| {
        let mut c = env.lode();
        c.args([
            "cat",
            NAME,
            path,
            "--tenant",
            TENANT,
            "--store",
            &store,
            "--cache-dir",
        ])
        .arg(cache);
        run_timeout(&mut c, Duration::from_secs(60))
    };

    let o = cat("/data/big.bin", &cache).ok();
    assert_same_bytes(
        &o.stdout,
        img.file("data/big.bin"),
        "lode cat /data/big.bin",
    );
    assert!(
        o.stderr.contains(&format!("lode cat: {} bytes", 3 * MIB)),
        "stats line: {}",
        o.stderr
    );
    let (fetched, total, from_store, disk) = cat_stats(&o.stderr);
    assert_eq!(total, chunks, "total chunks in the stats line");
    assert_eq!(
        from_store, fetched,
        "first run: every fetched chunk came from the store (the only remote tier)"
    );
    assert_eq!(disk, 0, "first run: disk cache hits");
    assert!(
        fetched >= 6,
        "a 3 MiB file needs at least 6 chunks, fetched {fetched}"
    );
    assert!(
        fetched < stored,
        "lode cat of one file fetched {fetched} of {stored} stored chunks: not on demand"
    );

    let o = cat("/data/big.bin", &cache).ok();
    assert_same_bytes(
        &o.stdout,
        img.file("data/big.bin"),
        "lode cat /data/big.bin, second run",
    );
    let (fetched2, _, store2, disk2) = cat_stats(&o.stderr);
    assert_eq!(
        store2, 0,
        "second run over the same cache fetched {store2} chunks from the store: {}",
        o.stderr
    );
    assert_eq!(
        fetched2, 0,
        "second run over the same cache fetched {fetched2} chunks from the store: {}",
        o.stderr
    );
    assert!(disk2 > 0, "second run: no disk cache hits: {}", o.stderr);

    // Other files, through a fresh cache: the upper layer's view.
    let cache2 = env.path("cache2");
    for p in [
        "etc/motd",
        "opt/app/other.bin",
        "opt/app/config.json",
        "usr/share/doc/readme.txt",
    ] {
        let o = cat(&format!("/{p}"), &cache2).ok();
        assert_same_bytes(&o.stdout, img.file(p), &format!("lode cat /{p}"));
    }
    let o = cat("/etc/hostname", &env.path("cache3")).ok();
    assert_eq!(o.stdout, img.file("etc/hostname"));
    let (small, _, _, _) = cat_stats(&o.stderr);
    assert!(
        small < fetched,
        "a 10-byte file fetched {small} chunks, the 3 MiB one {fetched}"
    );

    let o = cat("/no/such/file", &cache2);
    assert!(!o.status.success(), "lode cat of a missing file succeeded");
    assert!(o.stdout.is_empty());
    eprintln!(
        "lode_cat_reads_files_on_demand_and_reuses_the_cache: {:.1} s",
        t.elapsed().as_secs_f64()
    );
}
