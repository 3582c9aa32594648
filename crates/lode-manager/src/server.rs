//! The manager's HTTP API.
//!
//! | request | body | answer |
//! |---|---|---|
//! | `POST /v1/place` | [`PlaceRequest`] | [`Placement`], or 429 when shed |
//! | `POST /v1/release` | [`Release`] | 204 |
//! | `POST /v1/workers` | [`WorkerReport`] | 204 |
//! | `GET /v1/state` | | the workers' reports and counters (JSON) |
//! | `GET /metrics` | | Prometheus text |

use crate::placer::{Limits, Placer};
use bytes::Bytes;
use hyper::body::Incoming;
use lode_common::prom::{self, Kind};
use lode_lambda::http::{self, Response};
use lode_lambda::{ErrorKind, LambdaError, PlaceRequest, Placement, Release, WorkerReport};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};

/// Largest request body (a report of many sandboxes, a function spec).
pub const MAX_BODY: usize = 4 << 20;
/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 4096;

/// A running manager.
#[derive(Debug)]
pub struct Manager {
    placer: Mutex<Placer>,
    /// Woken when capacity may have come back (a release, a report).
    freed: Notify,
    waiting: AtomicUsize,
    started: Instant,
}

impl Manager {
    /// A manager with `limits`.
    pub fn new(limits: Limits) -> Manager {
        let nonce = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or_default()
            ^ u64::from(std::process::id()) << 32;
        Manager {
            placer: Mutex::new(Placer::new(limits, nonce)),
            freed: Notify::new(),
            waiting: AtomicUsize::new(0),
            started: Instant::now(),
        }
    }

    fn placer(&self) -> std::sync::MutexGuard<'_, Placer> {
        self.placer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Places `req`, waiting up to the queue wait for capacity.
    pub async fn place(&self, req: &PlaceRequest) -> Result<Placement, LambdaError> {
        let started = Instant::now();
        let (wait, waiters) = {
            let p = self.placer();
            (p.limits().queue_wait, p.limits().waiters)
        };
        let deadline = started + wait;
        let mut queued = false;
        let out = loop {
            // Registered before the attempt, so a release between the
            // attempt and the wait is not missed.
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            match self.placer().place(&req.function, Instant::now()) {
                Ok(Some(mut p)) => {
                    p.placement_us = started.elapsed().as_micros() as u64;
                    break Ok(p);
                }
                Ok(None) => {}
                Err(e) => break Err(e),
            }
            if !queued {
                if self.waiting.fetch_add(1, Ordering::SeqCst) >= waiters {
                    self.waiting.fetch_sub(1, Ordering::SeqCst);
                    break Err(self.shed(req, "the queue for capacity is full"));
                }
                queued = true;
            }
            if tokio::time::timeout_at(deadline.into(), freed)
                .await
                .is_err()
            {
                break Err(self.shed(req, &format!("no capacity within {wait:?}")));
            }
        };
        if queued {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
        }
        out
    }

    fn shed(&self, req: &PlaceRequest, why: &str) -> LambdaError {
        self.placer().counts.shed_capacity += 1;
        tracing::info!(
            function = req.function.arn,
            request = req.request_id,
            why,
            "invocation shed"
        );
        LambdaError::new(
            ErrorKind::TooManyRequestsException,
            format!("Rate Exceeded: {why}"),
        )
    }

    /// Gives a lease back.
    pub fn release(&self, r: &Release) {
        let mut p = self.placer();
        if r.unreachable {
            if let Some(w) = p.lease_worker(&r.lease) {
                p.unreachable(&w);
            }
        }
        p.release(&r.lease);
        drop(p);
        self.freed.notify_waiters();
    }

    /// Takes a worker's report.
    pub fn report(&self, r: WorkerReport) {
        let now = Instant::now();
        let mut p = self.placer();
        p.report(r, now);
        p.expire(now);
        drop(p);
        self.freed.notify_waiters();
    }

    /// Prometheus text of the manager's counters and gauges.
    pub fn metrics(&self) -> String {
        let p = self.placer();
        let (known, live) = p.workers(Instant::now());
        let c = p.counts;
        let mut out = String::new();
        let placed = "lode_manager_placements_total";
        prom::describe(
            &mut out,
            placed,
            Kind::Counter,
            "Invocations placed, by kind.",
        );
        for (kind, v) in [
            ("warm", c.warm),
            ("cold_cached", c.cold_cached),
            ("cold", c.cold),
        ] {
            prom::sample(&mut out, placed, &format!("kind=\"{kind}\""), v);
        }
        let shed = "lode_manager_shed_total";
        prom::describe(
            &mut out,
            shed,
            Kind::Counter,
            "Invocations shed, by reason.",
        );
        for (why, v) in [
            ("capacity", c.shed_capacity),
            ("tenant_limit", c.shed_tenant),
        ] {
            prom::sample(&mut out, shed, &format!("reason=\"{why}\""), v);
        }
        for (name, help, v) in [
            ("lode_manager_workers", "Workers known.", known as u64),
            (
                "lode_manager_workers_live",
                "Workers heard from recently.",
                live as u64,
            ),
            ("lode_manager_leases", "Leases held.", p.leases() as u64),
            (
                "lode_manager_waiting",
                "Requests waiting for capacity.",
                self.waiting.load(Ordering::Relaxed) as u64,
            ),
        ] {
            prom::single(&mut out, name, Kind::Gauge, help, v);
        }
        out
    }

    /// Answers one HTTP request.
    pub async fn handle(self: Arc<Self>, req: hyper::Request<Incoming>) -> Response {
        let (parts, body) = req.into_parts();
        let route = (parts.method.as_str(), parts.uri.path());
        let body = match route {
            ("POST", _) => match http::body(body, MAX_BODY).await {
                Ok(b) => b,
                Err(e) => return http::error(&e),
            },
            _ => Bytes::new(),
        };
        match route {
            ("POST", "/v1/place") => match http::parse::<PlaceRequest>(&body) {
                Ok(r) => match self.place(&r).await {
                    Ok(p) => http::json(200, &p),
                    Err(e) => http::error(&e),
                },
                Err(e) => http::error(&e),
            },
            ("POST", "/v1/release") => match http::parse::<Release>(&body) {
                Ok(r) => {
                    self.release(&r);
                    http::reply(204, &[], Bytes::new())
                }
                Err(e) => http::error(&e),
            },
            ("POST", "/v1/workers") => match http::parse::<WorkerReport>(&body) {
                Ok(r) => {
                    self.report(r);
                    http::reply(204, &[], Bytes::new())
                }
                Err(e) => http::error(&e),
            },
            ("GET", "/v1/state") => {
                let p = self.placer();
                let (known, live) = p.workers(Instant::now());
                let state = serde_json::json!({
                    "uptime_s": self.started.elapsed().as_secs(),
                    "workers_known": known,
                    "workers_live": live,
                    "leases": p.leases(),
                    "placements": {"warm": p.counts.warm, "cold_cached": p.counts.cold_cached, "cold": p.counts.cold},
                    "shed": {"capacity": p.counts.shed_capacity, "tenant_limit": p.counts.shed_tenant},
                    "workers": p.reports(),
                });
                http::json(200, &state)
            }
            ("GET", "/metrics") => http::reply(
                200,
                &[("content-type", "text/plain; version=0.0.4")],
                Bytes::from(self.metrics()),
            ),
            ("GET", "/ping") => http::reply(200, &[], Bytes::from_static(b"ok\n")),
            (m, p) => http::error(&LambdaError::new(
                ErrorKind::ResourceNotFoundException,
                format!("no manager operation {m} {p}"),
            )),
        }
    }
}

/// Serves `manager` on `listener` until `stop`; expires silent workers and
/// stale leases every second.
pub async fn serve(listener: TcpListener, manager: Arc<Manager>, stop: watch::Receiver<bool>) {
    let ticker = {
        let manager = manager.clone();
        let mut stop = stop.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {
                        manager.placer().expire(Instant::now());
                        manager.freed.notify_waiters();
                    }
                    _ = http::stopped(&mut stop) => return,
                }
            }
        })
    };
    http::serve(listener, MAX_CONNECTIONS, stop, move |req| {
        manager.clone().handle(req)
    })
    .await;
    ticker.abort();
}
