//! The path of an invocation from a frontend: ask the worker manager that
//! owns the function for a placement, send the invocation to that worker
//! directly, give the capacity back. Managers split the functions between
//! them by rendezvous hashing of the function's ARN, so every frontend asks
//! the same manager about a function (which keeps its warm sandboxes
//! sticky), and a lost manager moves only its own functions.

use lode_lambda::http::{CallError, Client};
use lode_lambda::{
    ErrorKind, InvokeRequest, InvokeResult, LambdaError, PlaceRequest, Placement, Release,
    MAX_PAYLOAD,
};
use sha2::{Digest, Sha256};
use std::time::{Duration, Instant};

/// Largest answer read from a worker: a payload and a log tail, base64.
pub const MAX_ANSWER: usize = MAX_PAYLOAD * 2;
/// Longest wait for a placement (the manager queues a request for capacity
/// for a few seconds at most).
pub const PLACE_TIMEOUT: Duration = Duration::from_secs(30);
/// Placements tried for one invocation when the worker placed on cannot
/// be reached.
pub const PLACE_ATTEMPTS: usize = 3;

/// The worker managers a frontend routes to.
#[derive(Clone, Debug)]
pub struct Managers {
    urls: Vec<String>,
    client: Client,
}

/// Rendezvous (highest random weight) order of `nodes` for `key`.
pub fn rendezvous<'a>(nodes: &'a [String], key: &str) -> Vec<&'a str> {
    let mut scored: Vec<([u8; 32], &str)> = nodes
        .iter()
        .map(|n| {
            let h = Sha256::new()
                .chain_update(n.as_bytes())
                .chain_update([0])
                .chain_update(key.as_bytes())
                .finalize();
            (h.into(), n.as_str())
        })
        .collect();
    scored.sort_by_key(|s| std::cmp::Reverse(s.0));
    scored.into_iter().map(|(_, n)| n).collect()
}

impl Managers {
    /// Managers at these base URLs (`http://HOST:PORT`).
    pub fn new(urls: Vec<String>) -> Managers {
        Managers {
            urls: urls
                .into_iter()
                .map(|u| u.trim_end_matches('/').to_string())
                .collect(),
            client: Client::new(),
        }
    }

    /// A placement from the manager that owns the function, or from the
    /// next in rendezvous order when that one cannot be reached.
    async fn place(&self, req: &InvokeRequest) -> Result<(String, Placement), LambdaError> {
        let ask = PlaceRequest {
            request_id: req.request_id.clone(),
            function: req.function.clone(),
        };
        let mut last = None;
        for url in rendezvous(&self.urls, &req.function.arn) {
            let at = format!("{url}/v1/place");
            match self
                .client
                .post::<_, Placement>(&at, &ask, 64 << 10, PLACE_TIMEOUT)
                .await
            {
                Ok(Some(p)) => return Ok((url.to_string(), p)),
                Ok(None) => last = Some(format!("{at}: empty answer")),
                Err(e @ CallError::Unreachable { .. }) => {
                    tracing::warn!(manager = url, error = %e, "manager unreachable; trying the next");
                    last = Some(e.to_string());
                }
                Err(e) => return Err(e.to_lambda()),
            }
        }
        Err(LambdaError::new(
            ErrorKind::ServiceException,
            match last {
                Some(l) => format!("no worker manager reachable (last: {l})"),
                None => "no worker manager configured".to_string(),
            },
        ))
    }

    /// Gives a placement back (in the background: a lost manager only
    /// delays its lease's expiry).
    fn release(&self, manager: String, lease: String, unreachable: bool) {
        let client = self.client.clone();
        tokio::spawn(async move {
            let r = Release { lease, unreachable };
            let at = format!("{manager}/v1/release");
            if let Err(e) = client
                .post::<_, serde_json::Value>(&at, &r, 4096, Duration::from_secs(5))
                .await
            {
                tracing::debug!(error = %e, "release not delivered (the lease expires)");
            }
        });
    }

    /// Runs `req`: placement, then the worker; waits at most `timeout` for
    /// the worker's answer. An invocation is sent to a worker at most once:
    /// only a worker that could not be reached at all is replaced.
    pub async fn invoke(
        &self,
        mut req: InvokeRequest,
        timeout: Duration,
    ) -> Result<InvokeResult, LambdaError> {
        let mut last = String::new();
        for _ in 0..PLACE_ATTEMPTS {
            let started = Instant::now();
            let (manager, p) = self.place(&req).await?;
            let placement_us = started.elapsed().as_micros() as u64;
            req.sandbox = p.sandbox.clone();
            let at = format!("{}/v1/invoke", p.url);
            let answer = self
                .client
                .post::<_, InvokeResult>(&at, &req, MAX_ANSWER, timeout)
                .await;
            match answer {
                Ok(Some(mut r)) => {
                    self.release(manager, p.lease, false);
                    r.timings.placement_us = placement_us;
                    return Ok(r);
                }
                Err(e @ CallError::Unreachable { .. }) => {
                    tracing::warn!(worker = p.worker, error = %e, "worker unreachable; placing again");
                    self.release(manager, p.lease, true);
                    last = e.to_string();
                }
                Err(CallError::Refused { error, .. }) => {
                    self.release(manager, p.lease, false);
                    return Err(error);
                }
                other => {
                    self.release(manager, p.lease, false);
                    let why = match other {
                        Err(e) => e.to_string(),
                        _ => "empty answer".to_string(),
                    };
                    return Err(LambdaError::new(
                        ErrorKind::ServiceException,
                        format!(
                            "worker {} lost during invocation {}: {why}",
                            p.worker, req.request_id
                        ),
                    ));
                }
            }
        }
        Err(LambdaError::new(
            ErrorKind::ServiceException,
            format!(
                "no reachable worker for invocation {} ({last})",
                req.request_id
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendezvous_moves_only_the_lost_nodes_keys() {
        let nodes: Vec<String> = (0..5)
            .map(|i| format!("http://127.0.0.1:{}", 9000 + i))
            .collect();
        let fewer: Vec<String> = nodes[..4].to_vec();
        let mut moved = 0;
        for k in 0..1000 {
            let key = format!("arn:aws:lambda:r:1:function:f{k}");
            let a = rendezvous(&nodes, &key)[0];
            let b = rendezvous(&fewer, &key)[0];
            if a != nodes[4] {
                assert_eq!(a, b, "a key of a kept node moved");
            } else {
                moved += 1;
            }
        }
        assert!(
            (100..300).contains(&moved),
            "{moved} of 1000 keys on one of 5 nodes"
        );
    }
}
