//! `docker://` sources against a real registry (Debian's `docker-registry`
//! on loopback, TLS from a test CA, htpasswd basic auth), filled with real
//! `skopeo copy`: the registry flatten is byte-identical to the `oci:` one,
//! push then pull equals it, an index is resolved by `--platform`, and every
//! failure (wrong credentials, missing tag, unknown platform, untrusted
//! certificate, registry killed or silent mid-download) is one clear line
//! with nothing stored. A cut download resumes with `Range`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common_agent;
mod common_registry;
#[path = "store_support/store_util.rs"]
mod util;

use common_registry::{
    Answer, Fault, FaultProxy, HostileRegistry, Registry, TokenServer, PASSWORD, REFRESH_TOKEN,
    USER,
};
use lode_testkit::fixtures::{rich_stack, RichOptions};
use lode_testkit::image::sha256_digest;
use lode_testkit::{Compression, Content, Entry, LayerSpec};
use std::path::Path;
use std::time::Duration;
use util::*;

const CREDS: &str = "alice:correct horse";

/// The rich three-layer image (gzip, zstd, plain) as an OCI layout.
fn rich_layout(dir: &Path) {
    let layers = rich_stack(RichOptions {
        big_dir_entries: 3000,
        huge_file: false,
    });
    lode_testkit::write_oci_layout(
        dir,
        &layers,
        &[Compression::Gzip, Compression::Zstd, Compression::None],
        Some("latest"),
    )
    .unwrap();
}

/// A registry (bearer-token auth from `token`, else basic) holding
/// `team/rich:v1` ([`rich_layout`]), with what `lode flatten` makes of the
/// same image from the local layout.
fn rich_in_registry(w: &World, token: Option<&TokenServer>) -> (Registry, std::path::PathBuf) {
    let work = w.work();
    let reg = Registry::start_with(&work.join("registry"), token);
    let layout = work.join("rich");
    rich_layout(&layout);
    reg.put(
        &format!("oci:{}:latest", layout.display()),
        "team/rich:v1",
        false,
    );
    let want = work.join("want.ext4");
    flatten(w, &format!("oci:{}:latest", layout.display()), &want, &[]).ok();
    (reg, want)
}

/// A world and a registry holding `big:1` ([`big_layout`]), with what
/// `lode flatten` makes of the same image from the local layout.
fn big_in_registry() -> (World, Registry, std::path::PathBuf) {
    let w = World::local();
    let work = w.work();
    let reg = Registry::start(&work.join("registry"));
    let layout = work.join("big");
    big_layout(&layout);
    reg.put(&format!("oci:{}:latest", layout.display()), "big:1", false);
    let want = work.join("want.ext4");
    flatten(&w, &format!("oci:{}:latest", layout.display()), &want, &[]).ok();
    (w, reg, want)
}

/// One layer with a 48 MiB incompressible file (for faults mid-download).
fn big_layout(dir: &Path) {
    let mut l = LayerSpec::new();
    l.add(Entry::dir("data"));
    l.add(Entry::file(
        "data/noise.bin",
        Content::Pattern {
            size: 48 << 20,
            seed: 7,
        },
    ));
    l.add(Entry::file("data/tail.txt", "after the noise\n"));
    lode_testkit::write_oci_layout(dir, &[l], &[Compression::None], Some("latest")).unwrap();
}

/// `lode flatten SOURCE -o OUT ARGS...` in `w`.
fn flatten(w: &World, source: &str, out: &Path, args: &[&str]) -> Run {
    let mut a = vec!["flatten", source, "-o", out.to_str().unwrap()];
    a.extend_from_slice(args);
    w.run_limit(&a, false, Duration::from_secs(300))
}

/// `lode flatten` of `team/rich:v1` in `reg`, trusting its CA and logging
/// in as `authfile` says, with `extra` arguments.
fn flatten_authfile(w: &World, reg: &Registry, out: &Path, authfile: &Path, extra: &[&str]) -> Run {
    let cd = reg.cert_dir.display().to_string();
    let af = authfile.display().to_string();
    let mut a = vec!["--cert-dir", &cd, "--authfile", &af];
    a.extend_from_slice(extra);
    flatten(w, &reg.source("team/rich:v1"), out, &a)
}

/// The names in `dir`, sorted (none if it does not exist).
fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn tls_args(reg: &Registry) -> Vec<String> {
    vec![
        "--cert-dir".into(),
        reg.cert_dir.display().to_string(),
        "--creds".into(),
        CREDS.into(),
    ]
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn registry_flatten_push_pull_and_failures() {
    let w = World::local();
    let work = w.work();
    let (reg, want) = rich_in_registry(&w, None);
    let args = tls_args(&reg);
    let args = strs(&args);

    // The registry flatten is byte-identical to the oci: flatten.
    let got = work.join("got.ext4");
    let run = flatten(&w, &reg.source("team/rich:v1"), &got, &args).ok();
    assert!(
        same_file(&want, &got),
        "docker:// flatten differs from oci:"
    );
    assert!(!run.stderr.contains("download"), "{}", run.stderr);

    // On a terminal (script(1) gives it one) a download bar shows the layer
    // blobs' bytes; without one (every other run here) stderr has no bar.
    common_agent::require_tool("script", "util-linux");
    let on_tty = work.join("tty.ext4");
    let cmdline = [lode_bin(), "flatten", &reg.source("team/rich:v1"), "-o"]
        .iter()
        .map(|a| a.to_string())
        .chain([on_tty.display().to_string()])
        .chain(args.iter().map(|a| format!("'{a}'")))
        .collect::<Vec<_>>()
        .join(" ");
    let o = std::process::Command::new("script")
        .args(["-qec", &cmdline, "/dev/null"])
        .env("LODE_HOME", &w.home)
        .env("COLUMNS", "120")
        // A terminal type: CI runs without one, and a terminal without a
        // TERM is taken for a dumb one (no bars).
        .env("TERM", "xterm")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{shown}");
    assert!(shown.contains("download"), "no download bar: {shown}");
    assert!(same_file(&want, &on_tty));

    // Credentials from an auth file (containers-auth.json) instead of --creds.
    let authfile = work.join("auth.json");
    let b64 = base64_encode(format!("{USER}:{PASSWORD}").as_bytes());
    std::fs::write(
        &authfile,
        format!(r#"{{"auths":{{"{}":{{"auth":"{b64}"}}}}}}"#, reg.addr),
    )
    .unwrap();
    let by_file = work.join("byfile.ext4");
    let cd = reg.cert_dir.display().to_string();
    flatten_authfile(&w, &reg, &by_file, &authfile, &[]).ok();
    assert!(same_file(&want, &by_file));

    // `--creds -` reads them from stdin (not on the command line).
    let by_stdin = work.join("bystdin.ext4");
    let mut c = w.command(&[
        "flatten",
        &reg.source("team/rich:v1"),
        "-o",
        by_stdin.to_str().unwrap(),
        "--cert-dir",
        &cd,
        "--creds",
        "-",
    ]);
    c.stdin(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().unwrap();
        writeln!(stdin, "{USER}:{PASSWORD}").unwrap();
    }
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(same_file(&want, &by_stdin));

    // By digest, as skopeo reports it.
    let digest = skopeo_digest(&reg, "team/rich:v1");
    let by_digest = work.join("bydigest.ext4");
    flatten(
        &w,
        &reg.source(&format!("team/rich@{digest}")),
        &by_digest,
        &args,
    )
    .ok();
    assert!(same_file(&want, &by_digest));

    // push docker:// then pull equals the flatten.
    let mut push = vec![
        "push",
        &*reg.source("team/rich:v1").leak(),
        "--tenant",
        "t",
        "--name",
        "rich",
    ];
    push.extend_from_slice(&args);
    w.run(&push).ok();
    let pulled = work.join("pulled.ext4");
    w.pull("t", "rich", &pulled);
    assert_same(&want, &pulled);
    let stored_before = w.store_files();

    // Failures: one line naming the URL and status; nothing written.
    let out_dir = work.join("out");
    std::fs::create_dir_all(&out_dir).unwrap();
    let out = out_dir.join("x.ext4");
    let cases: Vec<(&str, String, Vec<String>, Vec<&str>)> = vec![
        (
            "wrong password",
            reg.source("team/rich:v1"),
            vec![
                "--cert-dir".into(),
                cd.clone(),
                "--creds".into(),
                "alice:wrong".into(),
            ],
            vec!["401", "/v2/team/rich/manifests/v1"],
        ),
        (
            "missing tag",
            reg.source("team/rich:nope"),
            args.iter().map(|s| s.to_string()).collect(),
            vec!["404", "/v2/team/rich/manifests/nope", "MANIFEST_UNKNOWN"],
        ),
        (
            "missing repository",
            reg.source("team/none:v1"),
            args.iter().map(|s| s.to_string()).collect(),
            vec!["404", "/v2/team/none/manifests/v1"],
        ),
        (
            "untrusted certificate (system roots only)",
            reg.source("team/rich:v1"),
            vec!["--creds".into(), CREDS.into()],
            vec!["https://", "/v2/", "certificate"],
        ),
        (
            "certificate of another CA",
            reg.source("team/rich:v1"),
            vec![
                "--cert-dir".into(),
                other_ca_dir(&reg),
                "--creds".into(),
                CREDS.into(),
            ],
            vec!["https://", "/v2/", "certificate"],
        ),
    ];
    for (what, source, extra, mention) in cases {
        let line = flatten(&w, &source, &out, &strs(&extra)).err();
        eprintln!("{what}: {line}");
        for m in mention {
            assert!(line.contains(m), "{what}: {m:?} not in {line}");
        }
        assert!(
            !line.contains("correct horse") && !line.contains("wrong"),
            "{what}: secret in {line}"
        );
        assert_eq!(
            names_in(&out_dir),
            Vec::<String>::new(),
            "{what}: left behind"
        );
        let mut p = vec![
            "push".to_owned(),
            source.clone(),
            "--tenant".into(),
            "t".into(),
            "--name".into(),
            "bad".into(),
        ];
        p.extend(extra);
        w.run(&strs(&p)).err();
        assert_eq!(
            w.store_files(),
            stored_before,
            "{what}: push stored something"
        );
    }
    // The password never reaches the logs either.
    let mut noisy = w.command(&[
        "flatten",
        &reg.source("team/rich:v1"),
        "-o",
        out.to_str().unwrap(),
    ]);
    noisy
        .args(&args)
        .env("LODE_LOG", "trace")
        .env("RUST_LOG", "trace");
    let o = noisy.output().unwrap();
    assert!(o.status.success());
    let all = [o.stdout, o.stderr].concat();
    assert!(
        Windows::new(PASSWORD.as_bytes()).find_in(&all).is_none(),
        "password in the logs"
    );
    let b64 = base64_encode(format!("{USER}:{PASSWORD}").as_bytes());
    assert!(
        Windows::new(b64.as_bytes()).find_in(&all).is_none(),
        "basic auth header in the logs"
    );
}

/// A multi-platform index (amd64 + arm64/v8) pushed with `skopeo copy --all`:
/// `--platform` picks the entry, the default is the host's, an unknown
/// platform lists the ones there are.
#[test]
fn registry_index_by_platform() {
    let w = World::local();
    let work = w.work();
    let reg = Registry::start(&work.join("registry"));
    let amd = work.join("amd");
    let arm = work.join("arm");
    rich_layout(&amd);
    let mut l = LayerSpec::new();
    l.add(Entry::dir("arm"));
    l.add(Entry::file("arm/hello", "arm64 image\n"));
    lode_testkit::write_oci_layout(&arm, &[l], &[Compression::Gzip], Some("latest")).unwrap();
    let multi = work.join("multi");
    index_layout(
        &multi,
        &[(&amd, "amd64", None), (&arm, "arm64", Some("v8"))],
    );
    reg.put(&format!("oci:{}:latest", multi.display()), "multi:1", true);
    let args = tls_args(&reg);
    let args = strs(&args);

    for (platform, layout) in [
        ("linux/amd64", &amd),
        ("linux/arm64", &arm),
        ("linux/arm64/v8", &arm),
    ] {
        let want = work.join("want.ext4");
        flatten(&w, &format!("oci:{}:latest", layout.display()), &want, &[]).ok();
        let got = work.join("got.ext4");
        let mut a = args.clone();
        a.extend(["--platform", platform]);
        flatten(&w, &reg.source("multi:1"), &got, &a).ok();
        assert!(same_file(&want, &got), "{platform}");
        // oci: of the index itself picks the same.
        let local = work.join("local.ext4");
        flatten(
            &w,
            &format!("oci:{}:latest", multi.display()),
            &local,
            &["--platform", platform],
        )
        .ok();
        assert!(same_file(&want, &local), "oci: index {platform}");
    }
    #[cfg(target_arch = "x86_64")]
    {
        let want = work.join("want.ext4");
        flatten(&w, &format!("oci:{}:latest", amd.display()), &want, &[]).ok();
        let got = work.join("default.ext4");
        flatten(&w, &reg.source("multi:1"), &got, &args).ok();
        assert!(same_file(&want, &got), "the default platform is the host's");
    }
    let out_dir = work.join("out");
    std::fs::create_dir_all(&out_dir).unwrap();
    let mut a = args.clone();
    a.extend(["--platform", "linux/s390x"]);
    let line = flatten(&w, &reg.source("multi:1"), &out_dir.join("x.ext4"), &a).err();
    for m in ["linux/s390x", "linux/amd64", "linux/arm64/v8"] {
        assert!(line.contains(m), "{m:?} not in {line}");
    }
    assert_eq!(names_in(&out_dir), Vec::<String>::new());
}

/// Faults mid-download through a TCP proxy: a cut connection resumes with
/// `Range` (the result is identical); a registry killed mid-download and a
/// registry that stops answering each give one line and store nothing.
#[test]
fn registry_faults_mid_download() {
    let (w, reg, want) = big_in_registry();
    let work = w.work();
    let args = tls_args(&reg);
    let args = strs(&args);

    // Cut once after 8 MiB: resumed, identical.
    let proxy = FaultProxy::start(&reg.addr, 8 << 20, Fault::CutOnce, || {});
    let got = work.join("resumed.ext4");
    flatten(&w, &proxy.source("big:1"), &got, &args).ok();
    assert!(
        proxy.fired.load(std::sync::atomic::Ordering::Relaxed),
        "the cut happened"
    );
    assert!(same_file(&want, &got), "resumed download differs");
    drop(proxy);

    let out_dir = work.join("out");
    std::fs::create_dir_all(&out_dir).unwrap();
    let out = out_dir.join("x.ext4");

    // Stops answering after 8 MiB: bounded by --registry-timeout.
    let proxy = FaultProxy::start(&reg.addr, 8 << 20, Fault::Stall, || {});
    let mut a = args.clone();
    a.extend(["--registry-timeout", "1"]);
    let start = std::time::Instant::now();
    let line = flatten(&w, &proxy.source("big:1"), &out, &a).err();
    eprintln!("stall: {line} after {:?}", start.elapsed());
    assert!(line.contains("/v2/big/blobs/sha256:"), "{line}");
    assert!(line.contains("stopped answering"), "{line}");
    // The timeout bounds the whole silence, not each of the retries and
    // resumptions (which would take 5 × 5 attempts of 1 s and backoffs).
    assert!(
        start.elapsed() < Duration::from_secs(15),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(names_in(&out_dir), Vec::<String>::new());
    drop(proxy);

    // Killed after 8 MiB: retried, then one line; push stores nothing.
    let proxy = FaultProxy::start(&reg.addr, 8 << 20, Fault::KillRegistry, reg.killer());
    let mut p = vec![
        "push",
        &*proxy.source("big:1").leak(),
        "--tenant",
        "t",
        "--name",
        "big",
    ];
    p.extend_from_slice(&args);
    let line = w.run(&p).err();
    eprintln!("killed: {line}");
    assert!(line.contains("/v2/big/blobs/sha256:"), "{line}");
    assert!(proxy.fired.load(std::sync::atomic::Ordering::Relaxed));
    assert!(
        w.store_dir.as_ref().is_none_or(|d| !d.exists()
            || files_under(d)
                .iter()
                .all(|f| !f.to_string_lossy().contains("big"))),
        "a pointer was written"
    );
    assert_eq!(
        names_in(&w.home.join("tmp"))
            .iter()
            .filter(|n| !n.ends_with(".lock"))
            .count(),
        0
    );
}

/// Bearer tokens (the Docker token flow): the registry runs `auth: token`
/// with a realm served by a token endpoint in the test (RS256 JWTs signed by
/// a key the registry trusts). Tokens live 3 s, less than the client's 5 s
/// refresh margin, so every request after the first fetches a fresh one.
#[test]
fn registry_bearer_token() {
    let w = World::local();
    let work = w.work();
    let token = TokenServer::start(&work.join("token"), 3);
    let (reg, want) = rich_in_registry(&w, Some(&token));
    let args = tls_args(&reg);
    let args = strs(&args);
    let before = token.issued.load(std::sync::atomic::Ordering::Relaxed);
    let got = work.join("got.ext4");
    flatten(&w, &reg.source("team/rich:v1"), &got, &args).ok();
    assert!(same_file(&want, &got), "bearer flatten differs");
    let issued = token.issued.load(std::sync::atomic::Ordering::Relaxed) - before;
    // manifest, config, three layers: each request found its token expired.
    assert!(issued >= 5, "tokens issued: {issued}");

    let out_dir = work.join("out");
    std::fs::create_dir_all(&out_dir).unwrap();
    let cd = reg.cert_dir.display().to_string();
    let line = flatten(
        &w,
        &reg.source("team/rich:v1"),
        &out_dir.join("x.ext4"),
        &["--cert-dir", &cd, "--creds", "alice:wrong"],
    )
    .err();
    assert!(
        line.contains(&token.realm) && line.contains("401"),
        "{line}"
    );
    assert!(
        line.contains("scope=repository%3Ateam%2Frich%3Apull"),
        "{line}"
    );
    assert!(!line.contains("wrong"), "{line}");
    assert!(token.refused.load(std::sync::atomic::Ordering::Relaxed) >= 1);
    // Anonymous: the endpoint refuses without credentials too.
    let line = flatten(
        &w,
        &reg.source("team/rich:v1"),
        &out_dir.join("x.ext4"),
        &["--cert-dir", &cd],
    )
    .err();
    assert!(line.contains("401"), "{line}");
    assert_eq!(names_in(&out_dir), Vec::<String>::new());

    // An auth file's identitytoken is an OAuth2 refresh token: POST to the
    // realm with grant_type=refresh_token (no password involved).
    let authfile = work.join("identity.json");
    let write_identity = |t: &str| {
        std::fs::write(
            &authfile,
            format!(
                r#"{{"auths":{{"{}":{{"auth":"{}","identitytoken":"{t}"}}}}}}"#,
                reg.addr,
                base64_encode(b"<token>:")
            ),
        )
        .unwrap()
    };
    write_identity(REFRESH_TOKEN);
    let by_token = work.join("bytoken.ext4");
    flatten_authfile(&w, &reg, &by_token, &authfile, &[]).ok();
    assert!(
        same_file(&want, &by_token),
        "identity-token flatten differs"
    );
    assert!(token.refreshed.load(std::sync::atomic::Ordering::Relaxed) >= 1);
    write_identity("revoked-refresh-token");
    let line = flatten_authfile(&w, &reg, &out_dir.join("x.ext4"), &authfile, &[]).err();
    assert!(
        line.contains("POST") && line.contains(&token.realm) && line.contains("401"),
        "{line}"
    );
    assert!(!line.contains("revoked"), "{line}");
    assert_eq!(names_in(&out_dir), Vec::<String>::new());
}

/// A pull outliving its token: tokens live 8 s (the client reuses one for
/// 3 s, refreshing 5 s before expiry), and a proxy slows the transfer to a
/// drip for 8 s, longer than `--registry-timeout 3` too. The drip is
/// progress, not a stall, and the requests after it (one layer at a time)
/// need a fresh token: the pull succeeds, identical, and the realm was asked
/// again.
#[test]
fn registry_token_refresh_mid_pull() {
    let w = World::local();
    let work = w.work();
    let token = TokenServer::start(&work.join("token"), 8);
    let (reg, want) = rich_in_registry(&w, Some(&token));
    let proxy = FaultProxy::start(&reg.addr, 32 << 10, Fault::Slow(8), || {});
    let before = token.issued.load(std::sync::atomic::Ordering::Relaxed);
    let start = std::time::Instant::now();
    let mut args = tls_args(&reg);
    args.extend(
        ["--registry-timeout", "3", "--parallel-downloads", "1"]
            .iter()
            .map(|s| s.to_string()),
    );
    let got = work.join("got.ext4");
    flatten(&w, &proxy.source("team/rich:v1"), &got, &strs(&args)).ok();
    let took = start.elapsed();
    assert!(
        proxy.fired.load(std::sync::atomic::Ordering::Relaxed),
        "no drip"
    );
    assert!(
        took >= Duration::from_secs(8),
        "the drip did not slow the pull: {took:?}"
    );
    assert!(same_file(&want, &got), "slowed bearer flatten differs");
    let issued = token.issued.load(std::sync::atomic::Ordering::Relaxed) - before;
    assert!(issued >= 2, "tokens issued: {issued}");
}

/// The docker-credential-helpers protocol: an auth file's `credHelpers`
/// (per registry) or `credsStore` names `docker-credential-NAME`, run with
/// the server on stdin. A real helper script on the PATH of the spawned
/// lode answers from the mode the test writes: credentials (the flatten is
/// identical), "not found" (anonymous: 401), a failure, junk, too much
/// output, or a hang (killed after --registry-timeout, with what it
/// started): one line naming the helper and the registry, never the secret.
#[test]
fn registry_credential_helpers() {
    let mut w = World::local();
    let work = w.work();
    let (reg, want) = rich_in_registry(&w, None);

    let bin = work.join("helper-bin");
    std::fs::create_dir_all(&bin).unwrap();
    let script = bin.join("docker-credential-test");
    std::fs::write(
        &script,
        format!(
            r#"#!/bin/sh
dir=$(dirname "$0")
[ "$1" = get ] || exit 9
server=$(cat)
printf '%s' "$server" > "$dir/asked"
case $(cat "$dir/mode") in
good) printf '{{"ServerURL":"%s","Username":"{USER}","Secret":"{PASSWORD}"}}
' "$server" ;;
notfound) echo "credentials not found in native keychain"; exit 1 ;;
fail) echo "helper exploded: keyring locked" >&2; exit 3 ;;
junk) echo 'Username={USER} Secret={PASSWORD}' ;;
big) yes '{PASSWORD}' | head -c 200000 ;;
hang) sleep 300 & echo $! > "$dir/sleeper"; wait ;;
esac
"#
        ),
    )
    .unwrap();
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let path = std::env::var("PATH").unwrap_or_default();
    w.env
        .push(("PATH".into(), format!("{}:{path}", bin.display())));
    let mode = |m: &str| std::fs::write(bin.join("mode"), m).unwrap();
    let by_helpers = work.join("helpers.json");
    std::fs::write(
        &by_helpers,
        format!(
            r#"{{"auths":{{}},"credHelpers":{{"{}":"test"}}}}"#,
            reg.addr
        ),
    )
    .unwrap();
    let by_store = work.join("store.json");
    std::fs::write(
        &by_store,
        format!(r#"{{"auths":{{"{}":{{}}}},"credsStore":"test"}}"#, reg.addr),
    )
    .unwrap();

    mode("good");
    for (what, file) in [("credHelpers", &by_helpers), ("credsStore", &by_store)] {
        let _ = std::fs::remove_file(bin.join("asked"));
        let got = work.join(format!("{what}.ext4"));
        flatten_authfile(&w, &reg, &got, file, &[]).ok();
        assert!(same_file(&want, &got), "{what}: flatten differs");
        assert_eq!(
            std::fs::read_to_string(bin.join("asked")).unwrap(),
            reg.addr,
            "{what}: the helper was asked about another server"
        );
    }

    let out_dir = work.join("out");
    std::fs::create_dir_all(&out_dir).unwrap();
    let cases = [
        ("notfound", vec!["401", "/v2/team/rich/manifests/v1"]),
        (
            "fail",
            vec!["docker-credential-test", &reg.addr, "keyring locked"],
        ),
        ("junk", vec!["docker-credential-test", &reg.addr, "JSON"]),
        (
            "big",
            vec!["docker-credential-test", &reg.addr, "more than"],
        ),
        (
            "hang",
            vec!["docker-credential-test", &reg.addr, "no answer within 2 s"],
        ),
    ];
    for (m, mention) in cases {
        mode(m);
        let start = std::time::Instant::now();
        let out = out_dir.join("x.ext4");
        let line =
            flatten_authfile(&w, &reg, &out, &by_helpers, &["--registry-timeout", "2"]).err();
        eprintln!("{m}: {line} after {:?}", start.elapsed());
        for want in mention {
            assert!(line.contains(want), "{m}: {want:?} not in {line}");
        }
        assert!(!line.contains(PASSWORD), "{m}: secret in {line}");
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{m}: not bounded"
        );
        assert_eq!(names_in(&out_dir), Vec::<String>::new(), "{m}: left behind");
    }
    // The hung helper's own child was killed with it.
    let sleeper: i32 = std::fs::read_to_string(bin.join("sleeper"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while Path::new(&format!("/proc/{sleeper}")).exists()
        && !std::fs::read_to_string(format!("/proc/{sleeper}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the helper's child {sleeper} outlived it"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `lode push docker://` SIGKILLed once chunks are being uploaded, then run
/// again: the rerun completes, finds what the first run stored and uploads
/// only the rest; the pulled image equals the flatten.
#[test]
fn registry_push_killed_and_rerun() {
    let (w, reg, want) = big_in_registry();
    let work = w.work();
    let args = tls_args(&reg);
    let source = reg.source("big:1");
    let mut push: Vec<&str> = vec![
        "push",
        &source,
        "--tenant",
        "t",
        "--name",
        "big",
        "--concurrency",
        "1",
    ];
    push.extend(strs(&args));
    push.extend(["--store", &w.store]);
    let mut child = w.command(&push).spawn().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let killed_with = loop {
        let n = if w.store_dir().exists() {
            w.chunk_files().len()
        } else {
            0
        };
        if n >= 4 {
            child.kill().unwrap();
            child.wait().unwrap();
            break n;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("push finished ({status}) before it could be killed mid-upload");
        }
        assert!(
            std::time::Instant::now() < deadline,
            "push uploaded nothing"
        );
        std::thread::sleep(Duration::from_millis(2));
    };
    let stored = w.chunk_files().len();
    assert!(stored >= killed_with);
    let listed = w.run(&["images", "--tenant", "t"]);
    assert!(
        !listed.stdout.contains("big"),
        "a pointer was written by the killed push: {}",
        listed.stdout
    );
    let mut again: Vec<&str> = vec!["push", &source, "--tenant", "t", "--name", "big"];
    again.extend(strs(&args));
    let s = w.run(&again).ok().summary();
    assert!(
        s.already >= stored as u64,
        "rerun found only {} of {stored} chunks: {s:?}",
        s.already
    );
    assert!(s.uploaded > 0, "{s:?}");
    let pulled = work.join("pulled.ext4");
    w.pull("t", "big", &pulled);
    assert_same(&want, &pulled);
}

/// A registry that misbehaves (failure injection over plain HTTP on
/// loopback): each answer gives one line naming the URL and what is wrong,
/// and nothing is written.
#[test]
fn registry_hostile_answers() {
    let w = World::local();
    let work = w.work();
    let layout = work.join("one");
    let mut l = LayerSpec::new();
    l.add(Entry::dir("etc"));
    l.add(Entry::file(
        "etc/data",
        Content::Pattern {
            size: 256 << 10,
            seed: 3,
        },
    ));
    lode_testkit::write_oci_layout(&layout, &[l], &[Compression::None], Some("latest")).unwrap();
    let idx: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let blob =
        |d: &str| std::fs::read(layout.join("blobs/sha256").join(&d["sha256:".len()..])).unwrap();
    let mdigest = idx["manifests"][0]["digest"].as_str().unwrap().to_owned();
    let manifest = blob(&mdigest);
    let m: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    let cdigest = m["config"]["digest"].as_str().unwrap().to_owned();
    let ldigest = m["layers"][0]["digest"].as_str().unwrap().to_owned();
    let layer = blob(&ldigest);
    let mt = [("Content-Type", "application/vnd.oci.image.manifest.v1+json")];
    let mut bad_layer = layer.clone();
    let mid = bad_layer.len() / 2;
    bad_layer[mid] ^= 1;
    let answers = vec![
        (
            "/v2/ok/manifests/1".to_owned(),
            Answer::new(200, &mt, manifest.clone()),
        ),
        (
            format!("/v2/ok/blobs/{cdigest}"),
            Answer::new(200, &[], blob(&cdigest)),
        ),
        (
            format!("/v2/ok/blobs/{ldigest}"),
            Answer::new(200, &[], layer.clone()),
        ),
        (
            "/v2/baddigest/manifests/1".to_owned(),
            Answer::new(200, &mt, manifest.clone()),
        ),
        (
            format!("/v2/baddigest/blobs/{cdigest}"),
            Answer::new(200, &[], blob(&cdigest)),
        ),
        (
            format!("/v2/baddigest/blobs/{ldigest}"),
            Answer::new(200, &[], bad_layer),
        ),
        (
            "/v2/short/manifests/1".to_owned(),
            Answer::new(200, &mt, manifest.clone()),
        ),
        (
            format!("/v2/short/blobs/{cdigest}"),
            Answer::new(200, &[], blob(&cdigest)),
        ),
        (
            format!("/v2/short/blobs/{ldigest}"),
            Answer::new(200, &[], layer[..mid].to_vec()),
        ),
        (
            "/v2/denied/manifests/1".to_owned(),
            Answer::new(
                403,
                &[],
                r#"{"errors":[{"code":"DENIED","message":"requested access to the resource is denied"}]}"#,
            ),
        ),
        (
            "/v2/busy/manifests/1".to_owned(),
            Answer::new(429, &[("Retry-After", "1")], "{}"),
        ),
        (
            "/v2/broken/manifests/1".to_owned(),
            Answer::new(503, &[], "{}"),
        ),
        (
            "/v2/huge/manifests/1".to_owned(),
            Answer::new(200, &mt, vec![b' '; 5 << 20]),
        ),
        (
            "/v2/weird/manifests/1".to_owned(),
            Answer::new(
                200,
                &[("Content-Type", "application/x-weird")],
                r#"{"schemaVersion":2}"#,
            ),
        ),
        (
            "/v2/loop/manifests/1".to_owned(),
            Answer::new(302, &[("Location", "/v2/loop/manifests/1")], ""),
        ),
        (
            "/v2/tagged/manifests/1".to_owned(),
            Answer::new(
                200,
                &[
                    mt[0],
                    (
                        "Docker-Content-Digest",
                        &format!("sha256:{}", "0".repeat(64)),
                    ),
                ],
                manifest.clone(),
            ),
        ),
    ];
    let reg = HostileRegistry::start(answers);

    // The well-behaved path works over plain HTTP on loopback and matches oci:.
    let want = work.join("want.ext4");
    flatten(&w, &format!("oci:{}:latest", layout.display()), &want, &[]).ok();
    let got = work.join("got.ext4");
    flatten(&w, &reg.source("ok:1"), &got, &[]).ok();
    assert!(same_file(&want, &got));

    let out_dir = work.join("out");
    std::fs::create_dir_all(&out_dir).unwrap();
    let out = out_dir.join("x.ext4");
    let cases: &[(&str, &[&str])] = &[
        (
            "baddigest:1",
            &[
                "digest mismatch",
                "layer 0 blob at http://",
                "/v2/baddigest/blobs/",
            ],
        ),
        ("short:1", &["truncated", "/v2/short/blobs/", "5 attempts"]),
        ("denied:1", &["403", "/v2/denied/manifests/1", "DENIED"]),
        ("busy:1", &["429", "/v2/busy/manifests/1"]),
        ("broken:1", &["503", "/v2/broken/manifests/1"]),
        ("huge:1", &["/v2/huge/manifests/1", "larger than 4194304"]),
        ("weird:1", &["application/x-weird", "/v2/weird/manifests/1"]),
        ("loop:1", &["redirect", "/v2/loop/manifests/1"]),
        ("tagged:1", &["digest mismatch", "/v2/tagged/manifests/1"]),
    ];
    for (repo_tag, mention) in cases {
        let line = flatten(&w, &reg.source(repo_tag), &out, &[]).err();
        eprintln!("{repo_tag}: {line}");
        for m in *mention {
            assert!(line.contains(m), "{repo_tag}: {m:?} not in {line}");
        }
        assert_eq!(
            names_in(&out_dir),
            Vec::<String>::new(),
            "{repo_tag}: left behind"
        );
    }
    // Retry-After was honoured: five requests for the busy manifest.
    let seen = reg.seen.lock().unwrap();
    let busy = seen
        .iter()
        .filter(|r| r.ends_with("/v2/busy/manifests/1"))
        .count();
    assert_eq!(busy, 5, "{seen:?}");
}

/// An OCI layout whose `index.json` names (ref `latest`) an image index of
/// the given single-image layouts, one per platform; blobs copied over.
fn index_layout(dir: &Path, images: &[(&Path, &str, Option<&str>)]) {
    std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let mut entries = Vec::new();
    for (src, arch, variant) in images {
        for e in std::fs::read_dir(src.join("blobs/sha256")).unwrap() {
            let e = e.unwrap();
            let to = dir.join("blobs/sha256").join(e.file_name());
            if !to.exists() {
                std::fs::copy(e.path(), to).unwrap();
            }
        }
        let idx: serde_json::Value =
            serde_json::from_slice(&std::fs::read(src.join("index.json")).unwrap()).unwrap();
        let m = &idx["manifests"][0];
        let mut platform = serde_json::json!({"os": "linux", "architecture": arch});
        if let Some(v) = variant {
            platform["variant"] = serde_json::json!(v);
        }
        entries.push(serde_json::json!({
            "mediaType": m["mediaType"], "digest": m["digest"], "size": m["size"], "platform": platform,
        }));
    }
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": entries,
    }))
    .unwrap();
    let digest = sha256_digest(&index);
    std::fs::write(
        dir.join("blobs/sha256").join(&digest["sha256:".len()..]),
        &index,
    )
    .unwrap();
    let top = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.index.v1+json", "digest": digest, "size": index.len(),
            "annotations": {"org.opencontainers.image.ref.name": "latest"},
        }],
    });
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&top).unwrap()).unwrap();
}

/// The manifest digest skopeo sees for `repo:tag`.
fn skopeo_digest(reg: &Registry, repo_tag: &str) -> String {
    let o = std::process::Command::new("skopeo")
        .args(["inspect", "--cert-dir"])
        .arg(&reg.cert_dir)
        .args(["--creds", CREDS, "--format", "{{.Digest}}"])
        .arg(reg.source(repo_tag))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap().trim().to_owned()
}

/// A cert dir trusting only a CA that did not sign the registry's certificate.
fn other_ca_dir(reg: &Registry) -> String {
    let d = reg.dir.join("other-certs.d");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::copy(reg.dir.join("tls/other-ca-cert.pem"), d.join("ca.crt")).unwrap();
    d.display().to_string()
}

/// Standard base64 with padding (what auth files hold).
fn base64_encode(b: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in b.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
