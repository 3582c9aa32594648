//! lode's Lambda-compatible frontend.
//!
//! A stateless service that speaks the subset of the AWS Lambda API that
//! container-image functions use, so that boto3 and the AWS CLI work with
//! `endpoint_url` pointed at it:
//!
//! - [`sigv4`]: every request is signed with AWS Signature V4 by a
//!   tenant's access key ([`credentials`]); a tenant sees only its own
//!   functions;
//! - [`functions`]: function definitions, sealed in the store with the
//!   tenant's key ([`seal`]), so several frontends can run behind a load
//!   balancer;
//! - [`api`] and [`shapes`]: the Lambda operations and their JSON;
//! - [`managers`]: an invocation's way to the worker manager that owns its
//!   function;
//! - [`server`]: the HTTP server.

pub mod api;
pub mod credentials;
pub mod error;
pub mod events;
pub mod functions;
pub mod managers;
pub mod metrics;
pub mod seal;
pub mod server;
pub mod shapes;
pub mod sigv4;

pub use error::{FrontendError, Result};
pub use server::{serve, serve_metrics, Frontend};
