//! The messages between frontend, worker manager and workers (JSON over
//! HTTP/1.1).
//!
//! - frontend → manager: `POST /v1/place` with a [`PlaceRequest`]; the
//!   answer is a [`Placement`]: a worker, maybe a warm sandbox there, and a
//!   lease on that capacity. As in the published design, the frontend then
//!   sends the invocation to the worker itself, so a manager that restarts
//!   loses no running invocation, and `POST /v1/release` with a [`Release`]
//!   gives the capacity back.
//! - frontend → worker: `POST /v1/invoke` with an [`InvokeRequest`]; the
//!   answer is `200` with an [`InvokeResult`].
//! - Every refusal is an error status with a [`LambdaError`](crate::LambdaError)
//!   body and the `X-Amzn-ErrorType` header.
//! - worker → manager: `POST /v1/workers` with a [`WorkerReport`] about once
//!   a second (the heartbeat from which a restarted manager rebuilds its
//!   state); a worker also answers `GET /v1/report` with the same.
//!
//! A function's own failure (an unhandled exception, a timeout, a runtime
//! that exits) is not a refused request: it is an [`InvokeResult`] with
//! [`InvokeOutcome::FunctionError`], which the frontend turns into Lambda's
//! `200` with `X-Amz-Function-Error`.

use crate::FunctionSpec;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Largest invocation payload and response (Lambda's 6 MB).
pub const MAX_PAYLOAD: usize = 6 * 1024 * 1024;

/// Bytes carried as base64 in JSON.
mod b64 {
    use super::*;
    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&B64.encode(v))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        B64.decode(s.as_bytes()).map_err(serde::de::Error::custom)
    }
}

/// One invocation, as the manager and the workers receive it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InvokeRequest {
    /// Request id (a UUID; the `Lambda-Runtime-Aws-Request-Id` the runtime sees).
    pub request_id: String,
    /// The function, as stored (pinned image, limits, configuration).
    pub function: FunctionSpec,
    /// The event, as the caller sent it (at most [`MAX_PAYLOAD`]).
    #[serde(with = "b64")]
    pub payload: Vec<u8>,
    /// The warm sandbox the manager chose, if any; a worker whose sandbox is
    /// gone or busy starts another one.
    #[serde(default)]
    pub sandbox: Option<String>,
}

/// A frontend's request for somewhere to run one invocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlaceRequest {
    /// The invocation's request id.
    pub request_id: String,
    /// The function.
    pub function: FunctionSpec,
}

/// Where to run an invocation: the manager's answer to a [`PlaceRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// The capacity held for the invocation; give it back with a [`Release`].
    pub lease: String,
    /// Worker id.
    pub worker: String,
    /// The worker's base URL.
    pub url: String,
    /// The idle warm sandbox chosen there, if any (else a cold start).
    #[serde(default)]
    pub sandbox: Option<String>,
    /// Whether the worker's host cache holds the function's image.
    #[serde(default)]
    pub cached: bool,
    /// Time the manager took, waiting for capacity included, microseconds.
    #[serde(default)]
    pub placement_us: u64,
}

/// Gives a [`Placement`]'s capacity back (the invocation ended, or never
/// reached the worker: then `unreachable` says so and the manager stops
/// placing on that worker until it reports again).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Release {
    /// The lease.
    pub lease: String,
    /// The worker could not be reached.
    #[serde(default)]
    pub unreachable: bool,
}

/// How an invocation ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum InvokeOutcome {
    /// The runtime posted a response.
    Success,
    /// The function failed. `error_type` is what Lambda reports in the
    /// payload's `errorType` (the runtime's own, or `Runtime.ExitError`,
    /// `Sandbox.Timedout`, `Runtime.OutOfMemory`, ...).
    FunctionError {
        /// `errorType`.
        error_type: String,
    },
}

/// Where an invocation's time went, in microseconds (0 for a stage that did
/// not run, such as boot for a warm invocation).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timings {
    /// Manager: choosing a worker, waiting for capacity.
    #[serde(default)]
    pub placement_us: u64,
    /// Worker: attaching the image and overlay volumes.
    #[serde(default)]
    pub attach_us: u64,
    /// Worker: QEMU start to the guest running the entry point.
    #[serde(default)]
    pub boot_us: u64,
    /// Worker: entry point start to its first `invocation/next`.
    #[serde(default)]
    pub init_us: u64,
    /// Worker: event handed over to response posted.
    #[serde(default)]
    pub invoke_us: u64,
}

/// The answer to an [`InvokeRequest`] that reached a runtime.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvokeResult {
    /// The request's id.
    pub request_id: String,
    /// Success or the function's error.
    #[serde(flatten)]
    pub outcome: InvokeOutcome,
    /// The response (or error document) the runtime posted.
    #[serde(with = "b64")]
    pub payload: Vec<u8>,
    /// The last 4 KB of the invocation's log (console output).
    #[serde(with = "b64", default)]
    pub log_tail: Vec<u8>,
    /// Worker that ran it.
    pub worker: String,
    /// Sandbox that ran it.
    pub sandbox: String,
    /// Whether the sandbox was warm (had run this function before).
    pub warm: bool,
    /// Where the time went.
    #[serde(default)]
    pub timings: Timings,
}

/// One sandbox, as its worker reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxReport {
    /// Sandbox id (unique on its worker).
    pub id: String,
    /// [`FunctionSpec::sandbox_key`] of the function it runs.
    pub key: String,
    /// Tenant of that function.
    pub tenant: String,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// Request id it is running, if busy.
    #[serde(default)]
    pub running: Option<String>,
    /// Milliseconds since its last invocation ended (0 when busy).
    #[serde(default)]
    pub idle_ms: u64,
}

/// What a worker tells the manager about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerReport {
    /// Worker id (stable across its restarts on one host).
    pub worker: String,
    /// Changes each time the worker process starts: sandboxes from an older
    /// epoch are gone.
    pub epoch: u64,
    /// Base URL where the manager reaches it (`http://HOST:PORT`).
    pub url: String,
    /// Sandboxes it may run at once.
    pub slots: u32,
    /// Guest memory it may hand out, MiB.
    pub memory_mib: u64,
    /// Guest memory of its live sandboxes, MiB.
    pub used_memory_mib: u64,
    /// Its live sandboxes, busy and idle.
    pub sandboxes: Vec<SandboxReport>,
    /// Manifest digests (`sha256:...`) its host is warm for: images whose
    /// chunks the host's VMs read (demand reads, not prefetch), of which the
    /// host agent's memory or disk cache still held at least half when the
    /// worker last asked the agent (answers are a few seconds old at most).
    /// At most 256, most recently used first; empty when the agent could
    /// not be asked, and after an agent restart until VMs read again.
    #[serde(default)]
    pub images: Vec<String>,
}

impl WorkerReport {
    /// Sandboxes running an invocation.
    pub fn busy(&self) -> usize {
        self.sandboxes
            .iter()
            .filter(|s| s.running.is_some())
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ImageRef;

    fn spec() -> FunctionSpec {
        FunctionSpec {
            tenant: "acme".into(),
            name: "hello".into(),
            arn: "arn:aws:lambda:us-east-1:acme:function:hello".into(),
            revision: 1,
            image: format!("acme/py@sha256:{}", "0".repeat(64))
                .parse::<ImageRef>()
                .unwrap(),
            memory_mib: 256,
            timeout_s: 3,
            environment: [("A".to_string(), "1".to_string())].into(),
            entry_point: None,
            command: Some(vec!["app.handler".into()]),
            working_directory: None,
            image_config: Default::default(),
        }
    }

    #[test]
    fn messages_round_trip() {
        let r = InvokeRequest {
            request_id: "r1".into(),
            function: spec(),
            payload: b"{\"x\":1}\0\xff".to_vec(),
            sandbox: None,
        };
        let j = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<InvokeRequest>(&j).unwrap(), r);
        let res = InvokeResult {
            request_id: "r1".into(),
            outcome: InvokeOutcome::FunctionError {
                error_type: "Runtime.ExitError".into(),
            },
            payload: b"{}".to_vec(),
            log_tail: b"log".to_vec(),
            worker: "w1".into(),
            sandbox: "s1".into(),
            warm: false,
            timings: Timings::default(),
        };
        let j = serde_json::to_string(&res).unwrap();
        assert!(j.contains("\"outcome\":\"function_error\""), "{j}");
        assert_eq!(serde_json::from_str::<InvokeResult>(&j).unwrap(), res);
        assert!(serde_json::from_str::<InvokeRequest>(&j).is_err());
    }
}
