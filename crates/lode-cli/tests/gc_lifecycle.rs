//! The image life cycle with real processes on a local store:
//!
//! * `lode gc` in a loop with short grace times while three pushers push and
//!   remove images and an agent serves reads of a live image: no read
//!   error, every live image pulls byte-exact, removed ones fail naming the
//!   image, and the store shrinks to exactly the live set;
//! * `lode gc` SIGKILLed at random points, then rerun: the same end state as
//!   a store collected without kills.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common_agent;
mod common_gc;

use common_agent::nbd_client::Conn;
use common_agent::{Env, Rng};
use common_gc::{converge, gc, lode, pooled_image, Census};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn push(env: &Env, bytes: &[u8], tenant: &str, name: &str) {
    let f = env.path(&format!("img-{tenant}-{name}-{}", bytes.len()));
    std::fs::write(&f, bytes).unwrap();
    env.push(&f, tenant, name);
    let _ = std::fs::remove_file(&f);
}

fn pull_bytes(env: &Env, tenant: &str, name: &str) -> Result<Vec<u8>, String> {
    let out = env.path(&format!("pulled-{tenant}-{name}"));
    let o = lode(
        &env.home,
        &[
            "pull",
            name,
            "--tenant",
            tenant,
            "--store",
            env.store.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ],
    );
    if !o.status.success() {
        return Err(String::from_utf8_lossy(&o.stderr).into_owned());
    }
    let b = std::fs::read(&out).unwrap();
    std::fs::remove_file(&out).unwrap();
    Ok(b)
}

#[test]
fn gc_beside_pushers_and_an_agent() {
    let env = Env::new();
    let live = pooled_image(1, 8, 12);
    push(&env, &live, "acme", "live");
    let mut agent = env.agent("gc", &[]);
    let sock = agent.sock.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let store = env.store.clone();
    let home = env.home.clone();

    // The collector: a pass every 200 ms, rotating every 2 s.
    let gc_thread = {
        let (stop, store, home) = (stop.clone(), store.clone(), home.clone());
        std::thread::spawn(move || {
            let (mut passes, mut errors) = (0, Vec::new());
            while !stop.load(Ordering::SeqCst) {
                match gc(
                    &home,
                    &store,
                    &[
                        "--rotate-after",
                        "2s",
                        "--retire-after",
                        "3s",
                        "--expire-after",
                        "1s",
                        "--lease",
                        "10s",
                    ],
                ) {
                    Ok(_) => passes += 1,
                    Err(e) => errors.push(e),
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            (passes, errors)
        })
    };
    // The agent's client: short connections reading random ranges of the live image.
    let reads = Arc::new(AtomicU64::new(0));
    let reader = {
        let (stop, reads, live) = (stop.clone(), reads.clone(), live.clone());
        std::thread::spawn(move || {
            let mut rng = Rng::new(7);
            let mut errors = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let mut c = match Conn::go(&sock, "acme/live") {
                    Ok(c) => c,
                    Err(e) => {
                        errors.push(format!("open: {e:?}"));
                        continue;
                    }
                };
                for _ in 0..8 {
                    let len = 64 * 1024;
                    let off = rng.below(live.len() as u64 - len) & !4095;
                    match c.read(off, len as u32) {
                        Ok(Ok(b)) if b == live[off as usize..off as usize + len as usize] => {
                            reads.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(Ok(_)) => errors.push(format!("wrong bytes at {off}")),
                        Ok(Err(errno)) => errors.push(format!("errno {errno} at {off}")),
                        Err(e) => errors.push(format!("io {e} at {off}")),
                    }
                }
                drop(c);
                std::thread::sleep(Duration::from_millis(30));
            }
            errors
        })
    };
    // Three pushers, each with its own images: push, re-push, remove.
    let model: Arc<Mutex<BTreeMap<String, Option<Vec<u8>>>>> = Arc::default();
    let pushers: Vec<_> = (0..3u64)
        .map(|p| {
            let (model, store, home) = (model.clone(), store.clone(), home.clone());
            std::thread::spawn(move || {
                let mut rng = Rng::new(100 + p);
                for k in 0..7u64 {
                    let name = format!("p{p}-{}", rng.below(3));
                    if k > 1 && rng.below(3) == 0 {
                        let o = lode(
                            &home,
                            &[
                                "rm",
                                &name,
                                "--tenant",
                                "acme",
                                "--store",
                                store.to_str().unwrap(),
                            ],
                        );
                        if o.status.success() {
                            model.lock().unwrap().insert(name, None);
                        }
                        continue;
                    }
                    let bytes = pooled_image(p * 1000 + k, 3 + rng.below(5), 12);
                    let f = store.parent().unwrap().join(format!("push-{p}-{k}"));
                    std::fs::write(&f, &bytes).unwrap();
                    let src = format!("ext4:{}", f.display());
                    let o = lode(
                        &home,
                        &[
                            "push",
                            &src,
                            "--tenant",
                            "acme",
                            "--name",
                            &name,
                            "--store",
                            store.to_str().unwrap(),
                        ],
                    );
                    assert!(
                        o.status.success(),
                        "push: {}",
                        String::from_utf8_lossy(&o.stderr)
                    );
                    model.lock().unwrap().insert(name, Some(bytes));
                    std::fs::remove_file(&f).unwrap();
                }
            })
        })
        .collect();
    for p in pushers {
        p.join().unwrap();
    }
    let peak = Census::of(&store).bytes;
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::SeqCst);
    let (passes, gc_errors) = gc_thread.join().unwrap();
    let read_errors = reader.join().unwrap();
    assert!(read_errors.is_empty(), "agent read errors: {read_errors:?}");
    assert!(reads.load(Ordering::Relaxed) > 50, "too few reads checked");
    assert!(passes > 5, "gc passes: {passes}, errors {gc_errors:?}");
    for e in &gc_errors {
        assert!(e.contains("lease is held"), "gc failed: {e}");
    }
    assert_eq!(
        agent.metric("lode_unreadable_root_reads_total"),
        0.0,
        "no read came from an expired root"
    );
    agent.kill();

    // Quiet: GC reaches exactly the live set.
    converge(&home, &store, "0s", "10s");
    let census = Census::of(&store);
    assert!(census.is_live_set(), "{}", census.diff());
    assert!(
        census.bytes < peak,
        "the store shrank: {} -> {}",
        peak,
        census.bytes
    );
    let model = model.lock().unwrap().clone();
    assert_eq!(
        census
            .live
            .keys()
            .map(|(_, n)| n.clone())
            .collect::<Vec<_>>(),
        std::iter::once("live".to_string())
            .chain(
                model
                    .iter()
                    .filter(|(_, v)| v.is_some())
                    .map(|(k, _)| k.clone())
            )
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect::<Vec<_>>()
    );
    assert!(pull_bytes(&env, "acme", "live").unwrap() == live);
    for (name, want) in &model {
        match want {
            Some(b) => assert!(pull_bytes(&env, "acme", name).unwrap() == *b, "{name}"),
            None => {
                let e = pull_bytes(&env, "acme", name).unwrap_err();
                assert!(
                    e.contains(&format!("image 'acme/{name}' was removed")),
                    "{e}"
                );
            }
        }
    }
}

/// Copies a local store directory.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let t = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &t);
        } else {
            std::fs::copy(e.path(), &t).unwrap();
        }
    }
}

/// Live images at their versions, their bytes, and the numbers of chunk,
/// manifest and root objects.
type EndState = (Vec<(String, u64)>, Vec<Vec<u8>>, usize, usize, usize);

/// The end state that must not depend on kills: which images are live, at
/// which versions, with which bytes, and how many objects of each kind.
fn end_state(env: &Env, store: &Path) -> EndState {
    let c = Census::of(store);
    assert!(c.is_live_set(), "{}", c.diff());
    let mut bytes = Vec::new();
    for (t, n) in c.live.keys() {
        let out = env.path("end-pull");
        let o = lode(
            &env.home,
            &[
                "pull",
                n,
                "--tenant",
                t,
                "--store",
                store.to_str().unwrap(),
                "-o",
                out.to_str().unwrap(),
            ],
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        bytes.push(std::fs::read(&out).unwrap());
    }
    let live = c
        .live
        .iter()
        .map(|((_, n), (v, _))| (n.clone(), *v))
        .collect();
    (
        live,
        bytes,
        c.chunks.len(),
        c.manifests.len(),
        c.roots.len(),
    )
}

#[test]
fn gc_killed_at_random_points_then_rerun() {
    let env = Env::new();
    // Garbage in two roots: images pushed, re-pushed, removed, a rotation between.
    for (i, name) in ["a", "b", "c", "d"].iter().enumerate() {
        push(&env, &pooled_image(i as u64, 6, 10), "acme", name);
    }
    push(&env, &pooled_image(9, 5, 10), "zeta", "z");
    let s = env.store.to_str().unwrap().to_string();
    assert!(
        lode(&env.home, &["rm", "b", "--tenant", "acme", "--store", &s])
            .status
            .success()
    );
    assert!(lode(&env.home, &["root", "rotate", "--store", &s])
        .status
        .success());
    push(&env, &pooled_image(20, 7, 10), "acme", "c");
    assert!(
        lode(&env.home, &["rm", "d", "--tenant", "acme", "--store", &s])
            .status
            .success()
    );
    let killed = env.path("killed-store");
    copy_dir(&env.store, &killed);

    // Reference: collected without kills.
    converge(&env.home, &env.store, "0s", "1s");
    let reference = end_state(&env, &env.store);

    // The copy: passes killed at random points, then rerun.
    let mut rng = Rng::new(42);
    let mut kills = 0;
    let lease = killed.join("gc/lease.json");
    // Passes get quicker as the store converges (a quiet pass is a few
    // milliseconds of work): keep going until 7 passes were killed mid-way,
    // whatever the machine's speed.
    let mut passes = 0;
    while kills < 7 && passes < 80 {
        passes += 1;
        // A killed pass holds the lease until it expires: wait for that, so
        // the next pass runs instead of finding it held.
        while let Ok(b) = std::fs::read(&lease) {
            let doc: serde_json::Value = serde_json::from_slice(&b).unwrap();
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as u64;
            if doc["expires_ms"].as_u64().unwrap() < now {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_lode"))
            .env("LODE_HOME", &env.home)
            .args([
                "gc",
                "--store",
                killed.to_str().unwrap(),
                "--rotate-after",
                "0s",
                "--retire-after",
                "0s",
                "--expire-after",
                "0s",
                "--lease",
                "1s",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let at = Instant::now() + Duration::from_millis(2 + rng.below(100));
        while Instant::now() < at {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        if child.try_wait().unwrap().is_none() {
            kills += 1;
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    assert!(
        kills >= 7,
        "only {kills} of {passes} passes were killed mid-way"
    );
    converge(&env.home, &killed, "0s", "1s");
    assert_eq!(end_state(&env, &killed), reference);
}

/// An agent still serving an image's old manifest after GC moved the image
/// and expired its old root: its reads return the right bytes, record an
/// alarm in the store and count in its metrics; GC then deletes nothing
/// until the alarm is acknowledged.
#[test]
fn agent_read_from_an_expired_root_alarms_and_halts_deletion() {
    let env = Env::new();
    let img = pooled_image(5, 8, 100);
    push(&env, &img, "acme", "app");
    let old_root = Census::of(&env.store).roots.keys().next().unwrap().clone();
    let mut agent = env.agent("alarm", &[]);
    let mut conn = Conn::go_ok(&agent.sock, "acme/app");
    assert!(conn.read(0, 4096).unwrap().unwrap() == img[..4096]);

    // GC moves the image to a new root and expires the old one (no grace).
    let r = gc(
        &env.home,
        &env.store,
        &[
            "--rotate-after",
            "0s",
            "--retire-after",
            "0s",
            "--expire-after",
            "1h",
        ],
    )
    .unwrap();
    assert_eq!(r["migration"]["images"], 1, "{r}");
    assert_eq!(
        r["expired_roots"][0].as_str(),
        Some(old_root.as_str()),
        "{r}"
    );

    // The open connection still reads the old manifest's chunks: the data
    // comes back, and the agent raises the alarm (once its cached view of
    // the root, at most 5 s old, has expired).
    std::thread::sleep(Duration::from_millis(5200));
    let off = 5 * common_agent::CHUNK;
    let got = conn.read(off, 65536).unwrap().unwrap();
    assert!(got == img[off as usize..off as usize + 65536]);
    drop(conn);
    let alarms = env.store.join(format!("alarms/{old_root}"));
    let files: Vec<_> = std::fs::read_dir(&alarms).unwrap().collect();
    assert_eq!(files.len(), 1, "one alarm per root per window");
    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(files[0].as_ref().unwrap().path()).unwrap()).unwrap();
    assert_eq!(
        (doc["reader"].as_str(), doc["state"].as_str()),
        (Some("agent"), Some("expired"))
    );
    assert!(agent.metric("lode_unreadable_root_reads_total") >= 1.0);
    assert_eq!(agent.metric("lode_root_alarms_recorded_total"), 1.0);

    // Deletion halts while the alarm is open, even past the grace time.
    let args = ["--retire-after", "0s", "--expire-after", "0s"];
    let r = gc(&env.home, &env.store, &args).unwrap();
    assert_eq!(r["deletion_halted"], true, "{r}");
    assert!(r["deleted_roots"].as_array().unwrap().is_empty());
    assert!(env
        .store
        .join(format!("roots/{old_root}/root.json"))
        .exists());
    let text = lode(
        &env.home,
        &["gc", "--store", env.store.to_str().unwrap(), "--dry-run"],
    );
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    assert!(
        text.contains(&format!(
            "ALARM: 1 unacknowledged read(s) from root {old_root}"
        )),
        "{text}"
    );

    // Acknowledged: the old root goes.
    let mut acked = args.to_vec();
    acked.extend(["--ack-alarm", &old_root]);
    let r = gc(&env.home, &env.store, &acked).unwrap();
    assert_eq!(r["acknowledged_alarms"], 1, "{r}");
    assert_eq!(
        r["deleted_roots"][0]["root"].as_str(),
        Some(old_root.as_str()),
        "{r}"
    );
    agent.kill();
    let c = Census::of(&env.store);
    assert!(c.is_live_set(), "{}", c.diff());
    assert!(pull_bytes(&env, "acme", "app").unwrap() == img);
}
