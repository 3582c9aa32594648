//! The frontend's Prometheus metrics: requests per operation and outcome,
//! and a latency histogram per operation (`lode frontend --metrics`).

use lode_common::prom::{self, Histogram, Kind};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The operations counted (`Auth` is a request refused before routing).
pub const OPERATIONS: [&str; 10] = [
    "CreateFunction",
    "ListFunctions",
    "GetFunction",
    "GetFunctionConfiguration",
    "UpdateFunctionConfiguration",
    "UpdateFunctionCode",
    "DeleteFunction",
    "Invoke",
    "Unknown",
    "Auth",
];

/// How a request ended.
#[derive(Debug, Clone, Copy)]
pub enum Outcome {
    /// 2xx.
    Ok,
    /// A caller's error (4xx).
    User,
    /// lode's error (5xx).
    Service,
}

#[derive(Debug, Default)]
struct Op {
    ok: AtomicU64,
    user: AtomicU64,
    service: AtomicU64,
    latency: Histogram,
}

/// The frontend's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    ops: [Op; OPERATIONS.len()],
    /// Invocations that ran and ended in the function's own error.
    pub function_errors: AtomicU64,
    /// Asynchronous invocations accepted.
    pub async_accepted: AtomicU64,
}

impl Metrics {
    /// Records one request of operation `op` (one of [`OPERATIONS`]).
    pub fn record(&self, op: &str, outcome: Outcome, took: Duration) {
        let i = OPERATIONS.iter().position(|o| *o == op).unwrap_or(8);
        let o = &self.ops[i];
        match outcome {
            Outcome::Ok => &o.ok,
            Outcome::User => &o.user,
            Outcome::Service => &o.service,
        }
        .fetch_add(1, Ordering::Relaxed);
        o.latency.observe(took);
    }

    /// Prometheus text.
    pub fn render(&self, events: &crate::events::EventCounters) -> String {
        let mut out = String::new();
        prom::describe(
            &mut out,
            "lode_frontend_requests_total",
            Kind::Counter,
            "Lambda API requests by operation and outcome.",
        );
        for (name, o) in OPERATIONS.iter().zip(&self.ops) {
            for (outcome, c) in [
                ("ok", &o.ok),
                ("user_error", &o.user),
                ("service_error", &o.service),
            ] {
                prom::sample(
                    &mut out,
                    "lode_frontend_requests_total",
                    &format!("operation=\"{name}\",outcome=\"{outcome}\""),
                    prom::load(c),
                );
            }
        }
        prom::describe(
            &mut out,
            "lode_frontend_request_seconds",
            Kind::Histogram,
            "Lambda API request latency by operation.",
        );
        for (name, o) in OPERATIONS.iter().zip(&self.ops) {
            o.latency.render(
                &mut out,
                "lode_frontend_request_seconds",
                &format!("operation=\"{name}\""),
            );
        }
        for (name, help, c) in [
            (
                "lode_frontend_function_errors_total",
                "Invocations that ended in the function's error.",
                &self.function_errors,
            ),
            (
                "lode_frontend_async_accepted_total",
                "Asynchronous invocations accepted (stored in the queue).",
                &self.async_accepted,
            ),
            (
                "lode_frontend_async_done_total",
                "Queued invocations this frontend ran to success.",
                &events.done,
            ),
            (
                "lode_frontend_async_failed_total",
                "Queued invocations whose every attempt ended in the function's error.",
                &events.failed,
            ),
            (
                "lode_frontend_async_retried_total",
                "Queued invocations scheduled again after an error.",
                &events.retried,
            ),
            (
                "lode_frontend_async_dropped_total",
                "Queued invocations dropped (function deleted, too old, unreadable).",
                &events.dropped,
            ),
        ] {
            prom::single(&mut out, name, Kind::Counter, help, prom::load(c));
        }
        out
    }
}
