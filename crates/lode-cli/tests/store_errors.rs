//! Error cases of the store commands: every one fails with exit status 1 and
//! exactly one `lode: error: ...` line, in bounded time, leaving no output.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[path = "store_support/store_util.rs"]
mod util;

use std::net::TcpListener;
use std::time::Duration;
use util::*;

fn s3_world(port: u16) -> World {
    let env = vec![
        ("AWS_ACCESS_KEY_ID", "k".to_string()),
        ("AWS_SECRET_ACCESS_KEY", "s".to_string()),
        ("AWS_REGION", "us-east-1".to_string()),
        ("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}")),
    ];
    World::s3(env, "bucket", "prefix")
}

fn every_store_command(w: &World, limit: Duration) -> Vec<(String, Duration)> {
    let src = w.work().join("img");
    write(&src, &noise(1, 700_000));
    let out = w.work().join("out");
    let src_arg = format!("ext4:{}", src.display());
    let cmds: Vec<Vec<&str>> = vec![
        vec!["push", &src_arg, "--tenant", "t", "--name", "n"],
        vec!["pull", "n", "--tenant", "t", "-o", out.to_str().unwrap()],
        vec!["inspect", "n", "--tenant", "t"],
        vec!["root", "list"],
        vec!["root", "rotate"],
    ];
    let mut res = Vec::new();
    for c in cmds {
        let r = w.run_limit(&c, true, limit + Duration::from_secs(30));
        let took = r.elapsed;
        let e = r.err();
        assert!(
            took < limit,
            "lode {c:?} took {took:?} to fail (limit {limit:?}): {e}"
        );
        res.push((e, took));
    }
    assert!(!out.exists());
    res
}

/// S3 endpoint on a closed port: fails fast (connection refused, bounded retries).
#[test]
fn unreachable_s3_closed_port() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let w = s3_world(port);
    for (e, _) in every_store_command(&w, Duration::from_secs(30)) {
        assert!(
            e.contains("Connection refused") || e.contains("connect"),
            "{e}"
        );
    }
}

/// S3 endpoint that accepts connections and never answers: bounded by the
/// client's request timeout (30 s), not a hang. One command, to keep the test
/// short (each costs the full 30 s).
#[test]
fn unresponsive_s3_endpoint_times_out() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap(); // never accepts; the kernel completes handshakes
    let port = listener.local_addr().unwrap().port();
    let w = s3_world(port);
    let out = w.work().join("out");
    let c = ["pull", "n", "--tenant", "t", "-o", out.to_str().unwrap()];
    let r = w.run_limit(&c, true, Duration::from_secs(90));
    let took = r.elapsed;
    let e = r.err();
    assert!(
        took < Duration::from_secs(45),
        "lode {c:?} took {took:?} against an unresponsive store: {e}"
    );
    assert!(e.contains("timed out") || e.contains("timeout"), "{e}");
    assert!(!out.exists());
    drop(listener);
}

#[test]
fn unknown_image_and_tenant() {
    let w = World::local();
    let src = w.work().join("img");
    write(&src, &noise(1, 100_000));
    w.push(&src, "alice", "real");
    let out = w.work().join("out");
    for (tenant, name) in [("alice", "nope"), ("nobody", "real")] {
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
        assert!(
            e.contains(&format!("tenant '{tenant}' has no image '{name}'")),
            "{e}"
        );
        let e = w
            .run(&["inspect", name, "--tenant", tenant, "--json"])
            .err();
        assert!(e.contains(&format!("has no image '{name}'")), "{e}");
    }
    assert!(!out.exists());
    // Nothing was created in the store for the failed commands.
    assert!(!w.store_dir().join("tenants/nobody").exists());
}

#[test]
fn bad_tenant_and_image_names() {
    let w = World::local();
    let src = w.work().join("img");
    write(&src, &noise(1, 100_000));
    let src_arg = format!("ext4:{}", src.display());
    let out = w.work().join("out");
    let long = "t".repeat(65);
    for bad in [
        "../evil",
        ".hidden",
        "a/b",
        "",
        "sp ace",
        "t\u{e9}",
        long.as_str(),
    ] {
        let e = w
            .run(&["push", &src_arg, "--tenant", bad, "--name", "n"])
            .err();
        assert!(
            e.contains("invalid tenant name"),
            "push --tenant {bad:?}: {e}"
        );
        let e = w
            .run(&["pull", "n", "--tenant", bad, "-o", out.to_str().unwrap()])
            .err();
        assert!(
            e.contains("invalid tenant name"),
            "pull --tenant {bad:?}: {e}"
        );
        let e = w.run(&["inspect", "n", "--tenant", bad]).err();
        assert!(
            e.contains("invalid tenant name"),
            "inspect --tenant {bad:?}: {e}"
        );
    }
    for bad in ["../x", "a/b", ".x", ""] {
        let e = w
            .run(&["push", &src_arg, "--tenant", "t", "--name", bad])
            .err();
        assert!(e.contains("invalid image name"), "push --name {bad:?}: {e}");
        let e = w
            .run(&["pull", bad, "--tenant", "t", "-o", out.to_str().unwrap()])
            .err();
        assert!(e.contains("invalid image name"), "pull {bad:?}: {e}");
    }
    assert!(!out.exists());
    // Nothing escaped the store, no key was made for a refused tenant.
    assert!(!w.work().join("evil").exists() && !w.tmp_root().join("evil").exists());
    assert!(files_under(&w.home.join("keys"))
        .iter()
        .all(|p| !p.to_string_lossy().contains("evil")));
    assert!(
        !w.store_dir().join("tenants").exists(),
        "{:?}",
        w.store_files()
    );
}

#[test]
fn bad_urls_and_paths() {
    let w = World::local();
    let out = w.work().join("out");
    for (url, want) in [
        ("gopher://x", "invalid store URL"),
        ("file://relative/dir", "invalid store URL"),
        ("s3://", "invalid store URL"),
    ] {
        let e = w
            .run_limit(
                &["root", "list", "--store", url],
                false,
                Duration::from_secs(60),
            )
            .err();
        assert!(e.contains(want), "{url}: {e}");
        let e = w
            .run_limit(
                &[
                    "pull",
                    "x",
                    "--tenant",
                    "t",
                    "-o",
                    out.to_str().unwrap(),
                    "--store",
                    url,
                ],
                false,
                Duration::from_secs(60),
            )
            .err();
        assert!(e.contains(want), "{url}: {e}");
    }
    // A missing source file, a source of an unknown kind.
    let e = w
        .run(&[
            "push",
            "ext4:/nonexistent/image.ext4",
            "--tenant",
            "t",
            "--name",
            "n",
        ])
        .err();
    assert!(e.contains("/nonexistent/image.ext4"), "{e}");
    let e = w
        .run(&["push", "tarball:/x", "--tenant", "t", "--name", "n"])
        .err();
    assert!(!e.is_empty());
    // Output in a directory that does not exist.
    let src = w.work().join("img");
    write(&src, &noise(1, 100_000));
    w.push(&src, "t", "n");
    let e = w
        .run(&[
            "pull",
            "n",
            "--tenant",
            "t",
            "-o",
            "/nonexistent/dir/out.img",
        ])
        .err();
    assert!(e.contains("/nonexistent/dir"), "{e}");
    // A store path that is a file, not a directory.
    let f = w.work().join("a-file");
    write(&f, b"x");
    let e = w
        .run_limit(
            &["root", "list", "--store", f.to_str().unwrap()],
            false,
            Duration::from_secs(60),
        )
        .err();
    assert!(e.contains("a-file"), "{e}");
}
