//! lode's worker manager: where each invocation runs.
//!
//! The manager is a sticky load balancer with soft state. Workers report
//! themselves about once a second ([`WorkerReport`]: slots, memory, warm
//! sandboxes, cached images); a frontend asks for a [`Placement`] per
//! invocation and the manager answers, in this order of preference:
//!
//! 1. an idle warm sandbox of the same function revision (sticky), the most
//!    recently used first, so that surplus sandboxes idle out;
//! 2. a worker with a free slot and memory whose host cache holds the
//!    function's image, the least loaded first;
//! 3. any worker with a free slot and memory, the least loaded first.
//!
//! Capacity is held by a lease until the frontend releases it (or the lease
//! outlives the function's timeout). With no capacity, a request waits
//! briefly ([`Limits::queue_wait`], at most [`Limits::waiters`] at once) and
//! is then shed with `TooManyRequestsException`, as is a tenant over its
//! concurrency limit. Everything here is rebuilt from the workers' next
//! reports after a restart; frontends talk to workers directly, so no
//! running invocation depends on the manager.
//!
//! - [`placer`]: the state and the placement decision (no I/O);
//! - [`server`]: the HTTP API (`/v1/place`, `/v1/release`, `/v1/workers`,
//!   `/v1/state`, `/metrics`).

pub mod placer;
pub mod server;

pub use lode_lambda::{Placement, WorkerReport};
pub use placer::{Limits, Placer};
pub use server::{serve, Manager};
