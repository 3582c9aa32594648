//! lode's worker: runs each function invocation in a micro-VM sandbox.
//!
//! A worker (`lode worker`) serves `POST /v1/invoke` ([`lode_lambda::InvokeRequest`])
//! for the worker manager. Each sandbox is one micro-VM booted from the
//! function's pinned image, attached through the host's agent as a
//! read-only image with a private overlay. The guest runs the image's entry
//! point with `AWS_LAMBDA_RUNTIME_API` pointing at the worker's
//! implementation of the Lambda **Runtime API** for that sandbox — the one
//! address the guest can reach (see `docs/architecture.md`, "Function
//! sandboxes").
//!
//! - [`runtime_api`]: the Runtime API of one sandbox (`invocation/next`,
//!   `response`, `error`, `init/error`);
//! - [`sandbox`]: one sandbox: attach, boot, invoke, stop, detach;
//! - [`worker`]: slots and memory, warm sandboxes and keep-alive, the
//!   report to the manager, metrics;
//! - [`warm`]: the images this host is warm for, from the agent's caches;
//! - [`server`]: the worker's HTTP API and its heartbeat to the manager;
//! - [`env`]: the environment Lambda gives a function;
//! - [`ledger`]: the volumes attached, for a killed worker's successor;
//! - [`jail`]: each sandbox's VMM runs under a user id of its own and
//!   reaches only its own sockets.

pub mod env;
pub mod jail;
pub mod ledger;
pub mod runtime_api;
pub mod sandbox;
pub mod server;
pub mod warm;
pub mod worker;

pub use worker::{Config, Worker, WorkerError};
