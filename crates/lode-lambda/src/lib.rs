//! lode's function layer: what turns "invoke this function" into a micro-VM
//! on a host.
//!
//! Three parts, as in the system lode follows (USENIX ATC 2023): a stateless
//! **frontend** that speaks the Lambda API, a sticky **worker manager** that
//! routes each invocation to a warm sandbox or a host with capacity, and
//! **workers** that run each function in its own micro-VM started from a
//! lazily loaded image. This crate holds what they share:
//!
//! - [`function`]: a function's definition ([`FunctionSpec`]) and the image
//!   reference it pins ([`ImageRef`]);
//! - [`wire`]: the messages between frontend, manager and workers
//!   ([`InvokeRequest`], [`InvokeResult`], [`WorkerReport`]);
//! - [`error`]: Lambda's error shapes ([`ErrorKind`], [`LambdaError`]);
//! - [`http`]: the HTTP server loop, replies and JSON client they share.

pub mod error;
pub mod function;
pub mod http;
pub mod wire;

pub use error::{ErrorKind, LambdaError};
pub use function::{FunctionSpec, ImageConfig, ImageRef, ImageRefError, Launch};
pub use wire::{
    InvokeOutcome, InvokeRequest, InvokeResult, PlaceRequest, Placement, Release, SandboxReport,
    Timings, WorkerReport, MAX_PAYLOAD,
};
