//! Docker credential helpers: `credHelpers` (per registry) and `credsStore`
//! (the default) in an auth file name a program `docker-credential-NAME`,
//! run as `docker-credential-NAME get` with the server URL on stdin; it
//! prints `{"ServerURL":..,"Username":..,"Secret":..}` (a `Username` of
//! `<token>` makes `Secret` an identity token), or fails with "credentials
//! not found in native keychain" when it has none. The docker-credential-helpers
//! protocol, as the docker CLI speaks it.
//!
//! The helper is bounded: at most [`MAX_OUTPUT`] bytes of output, and the
//! registry timeout in time (then its process group is killed). Its errors
//! name the helper and the registry, never what it printed on success.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::auth::{Credentials, IdentityToken, Login};
use super::RegistryError;

/// The most a helper may print (on stdout, and separately on stderr).
pub(crate) const MAX_OUTPUT: u64 = 64 << 10;
/// What helpers print when they hold nothing for the server (docker-credential-helpers'
/// `ErrCredentialsNotFound`).
const NOT_FOUND: &str = "credentials not found in native keychain";
/// The username by which a helper marks its secret as an identity token.
const TOKEN_USER: &str = "<token>";

/// Why a credential helper gave no credentials.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HelperFailure {
    /// The name cannot be a program name.
    #[error("invalid helper name (a name like \"pass\" or \"ecr-login\" is expected)")]
    BadName,
    /// It could not be started (not on `PATH`, not executable).
    #[error("cannot run it: {0}")]
    Spawn(#[source] std::io::Error),
    /// Talking to it failed.
    #[error("reading its output: {0}")]
    Io(#[source] std::io::Error),
    /// It exited with an error.
    #[error("it failed ({status}){}", message.as_ref().map(|m| format!(": {m}")).unwrap_or_default())]
    Exit {
        /// The exit status.
        status: std::process::ExitStatus,
        /// The first line it printed, shortened.
        message: Option<String>,
    },
    /// It did not finish in time.
    #[error("no answer within {secs} s (killed)")]
    TimedOut {
        /// The bound, in seconds.
        secs: u64,
    },
    /// It printed more than [`MAX_OUTPUT`] bytes.
    #[error("it printed more than {limit} bytes")]
    TooLarge {
        /// The bound.
        limit: u64,
    },
    /// What it printed is not the credentials JSON. Neither the output nor
    /// the parser's message is kept (that quotes strings of the output, which
    /// may be a secret): only where and what kind of error it was.
    #[error("its output is not {{\"Username\",\"Secret\"}} JSON ({kind} error at line {line}, column {column})")]
    Json {
        /// `syntax`, `data` (wrong shape) or `end of input`.
        kind: &'static str,
        /// The line of the error (1-based).
        line: usize,
        /// The column of the error (1-based).
        column: usize,
    },
    /// It answered with an empty username or secret.
    #[error("it printed an empty Username or Secret")]
    Empty,
}

/// The server URL a helper is asked about for `host` (`HOST[:PORT]`;
/// Docker Hub's is its legacy index URL, as the docker CLI stores it).
pub(crate) fn server_url(host: &str) -> String {
    if host == super::reference::DOCKER_HUB {
        "https://index.docker.io/v1/".to_owned()
    } else {
        host.to_owned()
    }
}

/// Runs `docker-credential-NAME get` for `server`; `None` when the helper
/// holds nothing for it. `timeout` bounds the whole run.
pub(crate) fn get(
    name: &str,
    server: &str,
    timeout: Duration,
) -> Result<Option<Login>, RegistryError> {
    run(name, server, timeout).map_err(|reason| RegistryError::CredHelper {
        helper: format!("docker-credential-{name}"),
        registry: server.to_owned(),
        reason,
    })
}

fn run(name: &str, server: &str, timeout: Duration) -> Result<Option<Login>, HelperFailure> {
    if name.is_empty()
        || name
            .chars()
            .any(|c| c == '/' || c.is_whitespace() || c.is_control())
    {
        return Err(HelperFailure::BadName);
    }
    let mut cmd = Command::new(format!("docker-credential-{name}"));
    cmd.arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    {
        use std::os::unix::process::CommandExt as _;
        // Its own process group, so a timeout kills what it started too.
        cmd.process_group(0);
    }
    let mut child = cmd.spawn().map_err(HelperFailure::Spawn)?;
    let pid = child.id();
    let kill = || {
        if let Ok(pid) = i32::try_from(pid) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    };
    // The server URL without a newline, as the docker CLI writes it. A
    // helper that exits without reading is not an error here.
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(server.as_bytes());
    }
    let reader = |pipe: Option<Box<dyn Read + Send>>| {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        std::thread::spawn(move || {
            let mut out = Vec::new();
            let r = match pipe {
                Some(p) => p.take(MAX_OUTPUT + 1).read_to_end(&mut out).map(|_| out),
                None => Ok(out),
            };
            let _ = tx.send(r);
        });
        rx
    };
    let stdout = reader(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = reader(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + timeout;
    let timed_out = || HelperFailure::TimedOut {
        secs: timeout.as_secs(),
    };
    let too_large = || HelperFailure::TooLarge { limit: MAX_OUTPUT };
    let mut outputs: [Option<Vec<u8>>; 2] = [None, None];
    let pipes = [stdout, stderr];
    // Takes what a reader has finished with, if it has.
    let poll = |outputs: &mut [Option<Vec<u8>>; 2], wait: Option<Duration>| {
        for (slot, rx) in outputs.iter_mut().zip(&pipes) {
            if slot.is_some() {
                continue;
            }
            let got = match wait {
                None => rx.try_recv().ok(),
                Some(d) => Some(rx.recv_timeout(d).map_err(|_| timed_out())?),
            };
            if let Some(r) = got {
                *slot = Some(r.map_err(HelperFailure::Io)?);
            }
        }
        Ok::<_, HelperFailure>(())
    };
    let over = |outputs: &[Option<Vec<u8>>; 2]| {
        outputs
            .iter()
            .flatten()
            .any(|o| o.len() as u64 > MAX_OUTPUT)
    };
    // The group is killed only while the helper is unreaped, so its id
    // cannot have been reused.
    let status = loop {
        let polled = poll(&mut outputs, None);
        let failure = match polled {
            Err(e) => Some(e),
            Ok(()) if over(&outputs) => Some(too_large()),
            Ok(()) => None,
        };
        if let Some(e) = failure {
            kill();
            let _ = child.wait();
            return Err(e);
        }
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                kill();
                let _ = child.wait();
                return Err(timed_out());
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => {
                kill();
                let _ = child.wait();
                return Err(HelperFailure::Io(e));
            }
        }
    };
    // A process it left behind may hold a pipe open: wait for the output
    // only until the deadline.
    poll(
        &mut outputs,
        Some(deadline.saturating_duration_since(Instant::now())),
    )?;
    if over(&outputs) {
        return Err(too_large());
    }
    let [out, err] = outputs.map(Option::unwrap_or_default);
    if !status.success() {
        let said = |b: &[u8]| {
            String::from_utf8_lossy(b)
                .lines()
                .map(str::trim)
                .find(|l| !l.is_empty())
                .map(|l| {
                    l.chars()
                        .filter(|c| !c.is_control())
                        .take(200)
                        .collect::<String>()
                })
        };
        let message = said(&out).or_else(|| said(&err));
        if message.as_deref() == Some(NOT_FOUND) {
            return Ok(None);
        }
        return Err(HelperFailure::Exit { status, message });
    }
    parse(&out).map(Some)
}

/// Parses a helper's answer.
pub(crate) fn parse(out: &[u8]) -> Result<Login, HelperFailure> {
    #[derive(serde::Deserialize)]
    struct Answer {
        #[serde(rename = "Username")]
        username: String,
        #[serde(rename = "Secret")]
        secret: String,
    }
    let a: Answer = serde_json::from_slice(out).map_err(|e| HelperFailure::Json {
        kind: match e.classify() {
            serde_json::error::Category::Syntax => "syntax",
            serde_json::error::Category::Data => "data",
            serde_json::error::Category::Eof => "end of input",
            serde_json::error::Category::Io => "read",
        },
        line: e.line(),
        column: e.column(),
    })?;
    if a.username.is_empty() || a.secret.is_empty() {
        return Err(HelperFailure::Empty);
    }
    Ok(if a.username == TOKEN_USER {
        Login::IdentityToken(IdentityToken(a.secret))
    } else {
        Login::Basic(Credentials {
            username: a.username,
            password: a.secret,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers() {
        let Ok(Login::Basic(c)) = parse(br#"{"ServerURL":"r.io","Username":"u","Secret":"s"}"#)
        else {
            panic!("basic credentials expected");
        };
        assert_eq!((c.username.as_str(), c.password.as_str()), ("u", "s"));
        assert!(matches!(
            parse(br#"{"Username":"<token>","Secret":"refresh"}"#),
            Ok(Login::IdentityToken(t)) if t.0 == "refresh"
        ));
        for bad in [
            &b"not json"[..],
            br#"{"Username":"u"}"#,
            br#"{"Username":"u","Secret":""}"#,
            br#"{"Username":1,"Secret":"hunter2"}"#,
            br#""hunter2""#,
            br#"["hunter2"]"#,
        ] {
            let e = parse(bad).map(|_| ()).expect_err("refused");
            assert!(!e.to_string().contains("hunter2"), "{e}");
        }
        assert_eq!(server_url("docker.io"), "https://index.docker.io/v1/");
        assert_eq!(server_url("127.0.0.1:5000"), "127.0.0.1:5000");
    }

    #[test]
    fn bad_names_are_refused() {
        for name in ["", "../x", "a b"] {
            assert!(matches!(
                run(name, "r.io", Duration::from_secs(1)),
                Err(HelperFailure::BadName)
            ));
        }
        let e = get("lode-no-such-helper", "r.io", Duration::from_secs(1))
            .map(|_| ())
            .expect_err("missing helper");
        let msg = e.to_string();
        assert!(
            msg.contains("docker-credential-lode-no-such-helper") && msg.contains("r.io"),
            "{msg}"
        );
    }
}
