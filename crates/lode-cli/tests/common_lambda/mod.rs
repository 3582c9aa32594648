//! The function stack's services as real processes (`lode manager`,
//! `lode frontend`, `lode worker`), and the real AWS clients that drive
//! them (boto3, the AWS CLI) as installed by scripts/test.sh.
#![allow(dead_code)]

use crate::common_agent::Env;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where scripts/test.sh installs moto, boto3 and the AWS CLI.
pub const VENV: &str = "/opt/lode-test-venv";

/// A Python that imports boto3: the test venv's, else the one on PATH.
pub fn python() -> String {
    let venv = format!("{VENV}/bin/python3");
    for p in [venv.as_str(), "python3"] {
        let ok = Command::new(p)
            .args(["-c", "import boto3"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return p.to_string();
        }
    }
    panic!("no python3 with boto3: run scripts/test.sh, which installs it into {VENV}");
}

/// The AWS CLI: the test venv's, else the one on PATH.
pub fn aws() -> String {
    let venv = format!("{VENV}/bin/aws");
    if Path::new(&venv).is_file() {
        return venv;
    }
    let ok = Command::new("aws")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "no AWS CLI: run scripts/test.sh, which installs it into {VENV}"
    );
    "aws".to_string()
}

/// A lode service process with its log; killed when dropped (its log
/// printed if the test failed).
pub struct Service {
    pub child: Child,
    pub addr: String,
    pub log: PathBuf,
    pub what: String,
}

impl Service {
    /// Starts `lode ARGS` (which must print `listening on ADDR` on stderr)
    /// and waits up to 60 s for its address.
    pub fn start(env: &Env, what: &str, args: &[&str]) -> Service {
        let log = env.path(&format!("{what}.log"));
        let f = std::fs::File::create(&log).unwrap();
        let child = env
            .lode()
            .args(args)
            .env("LODE_LOG", "info")
            .stdout(Stdio::null())
            .stderr(f)
            .spawn()
            .unwrap();
        let mut s = Service {
            child,
            addr: String::new(),
            log,
            what: what.to_string(),
        };
        let start = Instant::now();
        loop {
            let text = std::fs::read_to_string(&s.log).unwrap_or_default();
            if let Some(l) = text.lines().find(|l| l.contains(" listening on ")) {
                s.addr = l.rsplit(' ').next().unwrap().trim().to_string();
                return s;
            }
            if let Ok(Some(st)) = s.child.try_wait() {
                panic!("{what} exited ({st}) before listening:\n{text}");
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "{what} not listening after 60 s:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILLs it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("---- {} log ----\n{}", self.what, self.log_text());
        }
    }
}

/// Runs `cmd`, requiring success within `limit`; returns stdout.
pub fn run_ok(cmd: &mut Command, limit: Duration) -> String {
    let o = crate::common_agent::run_timeout(cmd, limit).ok();
    o.stdout_str()
}

/// `aws lambda --endpoint-url ENDPOINT --region us-east-1 --output json`
/// with only `creds` (`{"AccessKeyId","SecretAccessKey"}` as `lode
/// credentials add` prints them): no config files, one attempt. Append the
/// operation's arguments.
pub fn aws_lambda(endpoint: &str, creds: &serde_json::Value) -> Command {
    let mut cmd = Command::new(aws());
    cmd.args([
        "lambda",
        "--endpoint-url",
        endpoint,
        "--region",
        "us-east-1",
        "--output",
        "json",
    ])
    .env("AWS_ACCESS_KEY_ID", creds["AccessKeyId"].as_str().unwrap())
    .env(
        "AWS_SECRET_ACCESS_KEY",
        creds["SecretAccessKey"].as_str().unwrap(),
    )
    .env("AWS_CONFIG_FILE", "/dev/null")
    .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
    .env("AWS_MAX_ATTEMPTS", "1");
    cmd
}

/// Starts `lode frontend` on a free loopback port over `managers` and
/// `store`, with its own cache directory (`<what>-cache`) and `extra`
/// arguments.
pub fn start_frontend(
    env: &Env,
    what: &str,
    managers: &[&str],
    store: &str,
    extra: &[&str],
) -> Service {
    let cache = env.path(&format!("{what}-cache"));
    let mut args = vec!["frontend", "--listen", "127.0.0.1:0"];
    for m in managers {
        args.extend(["--manager", m]);
    }
    args.extend(["--store", store, "--cache-dir", cache.to_str().unwrap()]);
    args.extend(extra);
    Service::start(env, what, &args)
}
