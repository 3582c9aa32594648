//! The Lambda API of `lode frontend` driven by real AWS clients (boto3 and
//! the AWS CLI) against real `lode manager` and `lode frontend` processes:
//! create, get, list (with paging), update code and configuration, delete,
//! dry-run invocations; the errors Lambda answers with (conflicts, bad
//! parameters, a 7 MB payload, malformed JSON, a wrong or missing
//! signature); tenant isolation; and a function pinned to the image digest
//! it was created with while the image name moves on.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common_agent;
mod common_lambda;

use common_agent::Env;
use common_lambda::{aws_lambda, python, run_ok, start_frontend, Service};
use lode_testkit::{write_oci_layout, Compression, Entry, LayerSpec};
use std::process::Command;
use std::time::Duration;

fn push_oci(env: &Env, tag: &str, tenant: &str, name: &str, text: &str) -> String {
    let dir = env.path(&format!("oci-{tag}"));
    let layer = LayerSpec::with(vec![
        Entry::dir("app"),
        Entry::file("app/handler.sh", format!("echo {text}\n").into_bytes()).mode(0o755),
    ]);
    write_oci_layout(&dir, &[layer], &[Compression::Gzip], None).unwrap();
    env.lode_ok(&[
        "push",
        &format!("oci:{}", dir.display()),
        "--tenant",
        tenant,
        "--name",
        name,
        "--store",
        env.store.to_str().unwrap(),
    ]);
    let v = env.inspect(tenant, name);
    let d = v["manifest"]
        .as_str()
        .or(v["digest"].as_str())
        .expect("inspect names the manifest digest");
    d.trim_start_matches("sha256:").to_string()
}

/// A plain HTTP/1.0 GET on loopback; the body.
fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or(out)
}

fn credentials(env: &Env, tenant: &str) -> String {
    let out = env.lode_ok(&[
        "credentials",
        "add",
        "--tenant",
        tenant,
        "--store",
        env.store.to_str().unwrap(),
    ]);
    let s = out.stdout_str();
    let v: serde_json::Value = serde_json::from_str(s.trim()).unwrap();
    assert_eq!(v["AccessKeyId"].as_str().unwrap().len(), 20, "{s}");
    assert_eq!(v["SecretAccessKey"].as_str().unwrap().len(), 40, "{s}");
    s.trim().to_string()
}

fn boto(phase: &str, frontend: &Service, creds: &str, other: &str, digest: &str) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/lambda/api.py");
    let out = run_ok(
        Command::new(python()).args([script, phase, &frontend.url(), creds, other, digest]),
        Duration::from_secs(300),
    );
    assert!(out.contains(&format!("{phase} phase ok")), "{out}");
}

#[test]
fn boto3_and_the_aws_cli_drive_the_lambda_api() {
    let env = Env::new();
    let d1 = push_oci(&env, "v1", "acme", "fn-img", "one");
    push_oci(&env, "other", "other", "fn-img", "theirs");
    let creds = credentials(&env, "acme");
    let other = credentials(&env, "other");
    let store = env.store.to_str().unwrap().to_string();
    let manager = Service::start(&env, "manager", &["manager", "--listen", "127.0.0.1:0"]);
    let frontend = start_frontend(
        &env,
        "frontend",
        &[&manager.url()],
        &store,
        &["--metrics", "127.0.0.1:0"],
    );
    boto("create", &frontend, &creds, &other, &d1);
    // Its metrics count what boto3 did.
    let log = frontend.log_text();
    let maddr = log
        .lines()
        .find_map(|l| l.strip_prefix("lode frontend metrics on "))
        .unwrap()
        .trim()
        .to_string();
    let metrics = http_get(&maddr, "/metrics");
    for want in [
        "lode_frontend_requests_total{operation=\"CreateFunction\",outcome=\"ok\"} 2",
        "lode_frontend_requests_total{operation=\"CreateFunction\",outcome=\"user_error\"} 6",
        "lode_frontend_requests_total{operation=\"Invoke\",outcome=\"ok\"} 1",
        "lode_frontend_request_seconds_count{operation=\"GetFunction\"}",
    ] {
        assert!(metrics.contains(want), "no {want} in:\n{metrics}");
    }

    // The function keeps the image's run settings read at create time.
    let keys = lode_chunk::Keyring::new(env.home.join("keys"));
    let s = lode_store::Store::open(&store).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (rec, _) = rt
        .block_on(lode_frontend::functions::get(&s, &keys, "acme", "hello"))
        .unwrap()
        .expect("the function is stored");
    assert_eq!(
        rec.spec.image_config.cmd.as_deref(),
        Some(&["/bin/sh".to_string()][..])
    );
    assert_eq!(
        rec.spec.launch().argv,
        ["app.handler"],
        "ImageConfig.Command replaces the image's Cmd"
    );
    // Stored sealed: the environment is not in the clear.
    let raw = std::fs::read(env.store.join("tenants/acme/functions/hello")).unwrap();
    assert!(!String::from_utf8_lossy(&raw).contains("GREETING"));

    // A new push of the same name: the function stays on its digest.
    let d2 = push_oci(&env, "v2", "acme", "fn-img", "two");
    assert_ne!(d1, d2);
    boto("pinned", &frontend, &creds, &other, &d2);

    // The AWS CLI, unmodified, for one function.
    let c: serde_json::Value = serde_json::from_str(&creds).unwrap();
    let cli = |args: &[&str]| {
        run_ok(
            aws_lambda(&frontend.url(), &c).args(args),
            Duration::from_secs(120),
        )
    };
    let made: serde_json::Value = serde_json::from_str(&cli(&[
        "create-function",
        "--function-name",
        "cli-fn",
        "--package-type",
        "Image",
        "--code",
        "ImageUri=acme/fn-img",
        "--role",
        "arn:aws:iam::123456789012:role/x",
    ]))
    .unwrap();
    assert_eq!(made["CodeSha256"].as_str(), Some(d2.as_str()));
    let listed: serde_json::Value = serde_json::from_str(&cli(&["list-functions"])).unwrap();
    let names: Vec<&str> = listed["Functions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["FunctionName"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["cli-fn", "second"]);
    let got: serde_json::Value =
        serde_json::from_str(&cli(&["get-function", "--function-name", "cli-fn"])).unwrap();
    assert_eq!(got["Configuration"]["PackageType"], "Image");
    cli(&["delete-function", "--function-name", "cli-fn"]);
    let gone = aws_lambda(&frontend.url(), &c)
        .args(["get-function", "--function-name", "cli-fn"])
        .output()
        .unwrap();
    assert!(!gone.status.success());
    assert!(
        String::from_utf8_lossy(&gone.stderr).contains("ResourceNotFoundException"),
        "{}",
        String::from_utf8_lossy(&gone.stderr)
    );

    // Each function pins the version it runs, and only those: GC that
    // rotates and collects at once keeps every pinned version readable.
    let remaining = rt
        .block_on(lode_frontend::functions::list(&s, &keys, "acme"))
        .unwrap();
    let pins = rt.block_on(s.list_pins("acme")).unwrap();
    assert_eq!(pins.len(), remaining.len(), "{pins:?}");
    for _ in 0..3 {
        env.lode_ok(&[
            "gc",
            "--store",
            &store,
            "--rotate-after",
            "0s",
            "--retire-after",
            "0s",
            "--expire-after",
            "0s",
        ]);
    }
    for f in &remaining {
        let pin = f.store_pin().expect("a new function holds a pin");
        assert!(pins.contains(&pin), "{pin:?} in {pins:?}");
        let img = rt
            .block_on(lode_store::open_image_at(
                &s,
                &keys,
                "acme",
                &f.spec.image.name,
                &pin.digest,
            ))
            .unwrap_or_else(|e| panic!("{}: pinned version gone after GC: {e}", f.spec.name));
        for n in img.manifest.names.iter().flatten() {
            assert!(
                rt.block_on(s.has_chunk(&img.manifest.root, n)).unwrap(),
                "{}: a chunk of the pinned version is gone",
                f.spec.name
            );
        }
    }

    // A revoked key stops working (frontends cache a lookup for 30 s: a new
    // frontend sees the revocation at once).
    env.lode_ok(&[
        "credentials",
        "rm",
        c["AccessKeyId"].as_str().unwrap(),
        "--tenant",
        "acme",
        "--store",
        &store,
    ]);
    let fresh = start_frontend(&env, "frontend2", &[&manager.url()], &store, &[]);
    let revoked = aws_lambda(&fresh.url(), &c)
        .arg("list-functions")
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&revoked.stderr).contains("UnrecognizedClientException"),
        "{}",
        String::from_utf8_lossy(&revoked.stderr)
    );
}
