//! Image identity and freshness, and clear errors, on a local store and on
//! S3 (a private moto server):
//!
//! * a pointer swapped for another image's is refused: its seal does not
//!   verify under the other name; a legacy (unsealed) pointer to another
//!   image's manifest is refused by the manifest's binding;
//! * a rolled-back pointer (an older, genuine one put back) is refused by a
//!   host that has seen a newer version;
//! * a removed image's pull fails naming the image; an unknown tenant, a
//!   missing store, too.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[path = "../../lode-store/tests/store_support/store_s3.rs"]
mod store_s3;
#[path = "store_support/store_util.rs"]
mod util;

use store_s3::MotoServer;
use util::*;

/// Raw access to the store's objects, past lode: what an attacker with
/// write access to the bucket or directory can do.
trait Raw {
    fn get(&self, key: &str) -> Vec<u8>;
    fn put(&self, key: &str, bytes: &[u8]);
}

struct LocalRaw(std::path::PathBuf);

impl Raw for LocalRaw {
    fn get(&self, key: &str) -> Vec<u8> {
        std::fs::read(self.0.join(key)).unwrap()
    }
    fn put(&self, key: &str, bytes: &[u8]) {
        std::fs::write(self.0.join(key), bytes).unwrap()
    }
}

struct S3Raw<'a>(&'a MotoServer, &'static str, &'static str);

impl Raw for S3Raw<'_> {
    fn get(&self, key: &str) -> Vec<u8> {
        self.0.get_object(self.1, &format!("{}/{key}", self.2))
    }
    fn put(&self, key: &str, bytes: &[u8]) {
        self.0
            .put_object(self.1, &format!("{}/{key}", self.2), bytes)
    }
}

fn copy_keys(from: &World, to: &World) {
    let src = from.home.join("keys");
    let dst = to.home.join("keys");
    for e in walk(&src) {
        let t = dst.join(e.strip_prefix(&src).unwrap());
        std::fs::create_dir_all(t.parent().unwrap()).unwrap();
        std::fs::copy(&e, &t).unwrap();
    }
}

fn walk(d: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(d).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn pull_err(w: &World, tenant: &str, name: &str) -> String {
    let out = w.work().join("refused.out");
    let e = w
        .run(&[
            "pull",
            name,
            "--tenant",
            tenant,
            "-o",
            out.to_str().unwrap(),
        ])
        .err();
    assert!(!out.exists(), "nothing written on refusal");
    e
}

fn identity(w: &World, raw: &dyn Raw) {
    let a1 = noise(1, 3 * CS + 10);
    let a2 = noise(2, 2 * CS);
    let b = noise(3, 2 * CS + 77);
    for (name, bytes) in [("a", &a1), ("b", &b)] {
        let f = w.work().join(name);
        write(&f, bytes);
        w.push(&f, "acme", name);
    }
    let p_a1 = raw.get("tenants/acme/images/a");
    let p_b = raw.get("tenants/acme/images/b");
    let f = w.work().join("a2");
    write(&f, &a2);
    let s = w.push(&f, "acme", "a");
    let p_a2 = raw.get("tenants/acme/images/a");
    assert!(String::from_utf8_lossy(&p_a2).contains("\"image_version\":2"));
    let out = w.work().join("a.out");
    w.pull("acme", "a", &out);
    assert!(std::fs::read(&out).unwrap() == a2);

    // Swapped: b's (sealed) pointer put in a's place.
    raw.put("tenants/acme/images/a", &p_b);
    let e = pull_err(w, "acme", "a");
    assert!(
        e.contains("pointer of image 'acme/a' does not authenticate"),
        "{e}"
    );
    let e = w.run(&["inspect", "a", "--tenant", "acme"]).err();
    assert!(e.contains("does not authenticate"), "{e}");

    // Swapped with a legacy pointer to b's manifest: a host that saw a's
    // version 2 refuses it as a rollback; a fresh host (same keys) refuses
    // the manifest, bound to b.
    let b_digest = String::from_utf8_lossy(&p_b)
        .split("\"manifest\":\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_string();
    raw.put(
        "tenants/acme/images/a",
        format!(r#"{{"version":1,"manifest":"{b_digest}"}}"#).as_bytes(),
    );
    let e = pull_err(w, "acme", "a");
    assert!(e.contains("rolled-back pointer"), "{e}");
    let fresh = w.other_home("fresh");
    copy_keys(w, &fresh);
    let e = pull_err(&fresh, "acme", "a");
    assert!(
        e.contains("image 'acme/a'") && e.contains("manifest of image 'acme/b'"),
        "{e}"
    );

    // Rolled back: a's genuine version-1 pointer put back.
    raw.put("tenants/acme/images/a", &p_a1);
    let e = pull_err(w, "acme", "a");
    assert!(
        e.contains("offers version 1 but this host has already seen version 2"),
        "{e}"
    );
    // (A host that never saw version 2 cannot tell: that is the limit of a
    // per-host record, and why agents keep theirs.)
    let other = w.other_home("other");
    copy_keys(w, &other);
    other.pull("acme", "a", &out);
    assert!(std::fs::read(&out).unwrap() == a1);

    // The current pointer back: both hosts read version 2.
    raw.put("tenants/acme/images/a", &p_a2);
    w.pull("acme", "a", &out);
    other.pull("acme", "a", &out);
    assert!(std::fs::read(&out).unwrap() == a2);
    assert_eq!(
        w.inspect("acme", "a")["manifest"].as_str(),
        Some(s.manifest.as_str())
    );

    // Removed: its pull names the image; listings leave it out.
    let r = w.run(&["rm", "b", "--tenant", "acme"]).ok();
    assert!(r.stdout.contains("removed acme/b"), "{}", r.stdout);
    let e = pull_err(w, "acme", "b");
    assert!(
        e.contains("image 'acme/b' was removed (at version 2)"),
        "{e}"
    );
    let e = w.run(&["rm", "b", "--tenant", "acme"]).err();
    assert!(e.contains("image 'acme/b' was removed"), "{e}");
    let list = w.run(&["images", "--tenant", "acme", "--json"]).ok();
    let v: serde_json::Value = serde_json::from_str(&list.stdout).unwrap();
    let names: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a"]);
    assert_eq!(v[0]["version"].as_u64(), Some(2));
    assert_eq!(v[0]["size"].as_u64(), Some(a2.len() as u64));
    assert_eq!(v[0]["stored_bytes"].as_u64(), Some(a2.len() as u64));
    // A swapped pointer shows as an error line in the listing, not a failure.
    raw.put("tenants/acme/images/a", &p_b);
    let list = w.run(&["images", "--tenant", "acme"]).ok();
    assert!(
        list.stdout.contains("does not authenticate"),
        "{}",
        list.stdout
    );
    raw.put("tenants/acme/images/a", &p_a2);

    // Unknown tenant and image.
    let e = pull_err(w, "nobody", "a");
    assert!(e.contains("tenant 'nobody' has no image 'a'"), "{e}");
    let e = w.run(&["rm", "zzz", "--tenant", "acme"]).err();
    assert!(e.contains("tenant 'acme' has no image 'zzz'"), "{e}");
    let none = w.run(&["images", "--tenant", "nobody"]).ok();
    assert!(
        none.stdout.contains("tenant 'nobody' has no images"),
        "{}",
        none.stdout
    );
}

#[test]
fn identity_and_freshness_local() {
    let w = World::local();
    let raw = LocalRaw(w.store_dir().to_path_buf());
    identity(&w, &raw);
    // A store that does not exist is reported, not created.
    let gone = w.work().join("no-such-store");
    for args in [
        vec!["pull", "a", "--tenant", "acme", "-o", "x"],
        vec!["images", "--tenant", "acme"],
        vec!["rm", "a", "--tenant", "acme"],
        vec!["gc"],
    ] {
        let mut a = args.clone();
        a.extend(["--store", gone.to_str().unwrap()]);
        let e = w
            .run_limit(&a, false, std::time::Duration::from_secs(60))
            .err();
        assert!(
            e.contains("no store at") && e.contains("no-such-store"),
            "{args:?}: {e}"
        );
        assert!(!gone.exists());
    }
}

#[test]
fn identity_and_freshness_s3() {
    let moto = MotoServer::start();
    moto.create_bucket("lode-id");
    let w = World::s3(moto.aws_env(), "lode-id", "ids");
    identity(&w, &S3Raw(&moto, "lode-id", "ids"));
    // A bucket that does not exist.
    let e = w
        .run_limit(
            &[
                "images",
                "--tenant",
                "acme",
                "--store",
                "s3://no-such-bucket/x",
            ],
            false,
            std::time::Duration::from_secs(120),
        )
        .err();
    assert!(
        e.contains("no-such-bucket") || e.contains("NoSuchBucket"),
        "{e}"
    );
}
