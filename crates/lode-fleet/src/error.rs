//! The fleet's errors: a request to a cache node ([`BackendError`]), a
//! memcached reply out of protocol ([`ReplyError`]), a fleet spec or
//! membership change refused ([`SpecError`]).

use std::time::Duration;

/// Why a request to a cache node failed. Every variant names the node (as
/// configured, see [`crate::parse_spec`]) and keeps its cause.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    /// The HTTP request could not be built (a key or node the URI refuses).
    #[error("node {node}: building the request")]
    Request {
        /// The node.
        node: String,
        /// Why.
        #[source]
        source: hyper::http::Error,
    },
    /// The HTTP/2 request failed (connect, reset, protocol).
    #[error("node {node}: request failed")]
    Http {
        /// The node.
        node: String,
        /// Why.
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    /// The reply's body could not be read, or was over its limit.
    #[error("node {node}: reading the reply body")]
    Body {
        /// The node.
        node: String,
        /// Why (`http_body_util::Limited` reports a body over the limit as
        /// a boxed `LengthLimitError`).
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A status the request does not allow.
    #[error("node {node}: {what}: status {status}")]
    Status {
        /// The node.
        node: String,
        /// The request (`stripe get`, `lease`, ...).
        what: &'static str,
        /// The status.
        status: hyper::StatusCode,
    },
    /// A lease granted without a (parsable) token.
    #[error("node {node}: lease granted without a token")]
    NoToken {
        /// The node.
        node: String,
    },
    /// No connection within the connect timeout.
    #[error("node {node}: no connection within {after:?}")]
    ConnectTimeout {
        /// The node.
        node: String,
        /// The limit.
        after: Duration,
    },
    /// A socket error.
    #[error("node {node}: {what}")]
    Io {
        /// The node.
        node: String,
        /// What was being done (`connect`, `send`).
        what: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A memcached reply out of protocol (the connection is dropped).
    #[error("node {node}: memcached reply")]
    Reply {
        /// The node.
        node: String,
        /// What was wrong with it.
        #[source]
        source: ReplyError,
    },
    /// A memcached GET still running when its time ran out.
    #[error("node {node}: memcached GET did not finish within {after:?}")]
    Timeout {
        /// The node.
        node: String,
        /// The limit.
        after: Duration,
    },
    /// The task running a memcached GET ended abnormally.
    #[error("node {node}: memcached GET task")]
    Task {
        /// The node.
        node: String,
        /// Why.
        #[source]
        source: tokio::task::JoinError,
    },
    /// Fill leases asked of a backend without them.
    #[error("this backend has no fill leases")]
    NoLeases,
}

/// Why one stripe request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StripeFailure {
    /// The node's request failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// No answer within the stripe timeout.
    #[error("stripe {stripe}: no answer within {after:?}")]
    Timeout {
        /// Stripe index.
        stripe: usize,
        /// The limit.
        after: Duration,
    },
}

/// A read that no node answered: every stripe request failed or timed out
/// (nodes down or unreachable), as opposed to nodes that answered that they
/// do not have the chunk. The reader reports it as the fleet's
/// `TierError::Failed`, with the last request's failure as its cause.
#[derive(Debug, thiserror::Error)]
#[error("none of the {asked} stripe requests was answered")]
pub struct Unreachable {
    /// Stripe requests sent (hand-offs to earlier members included).
    pub asked: usize,
    /// The last one's failure.
    #[source]
    pub last: StripeFailure,
}

/// A memcached reply that is not what the meta protocol allows (read from
/// an untrusted node: bounded, never panicking; see the fuzz target
/// `fleet_memcached_reply`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplyError {
    /// The reply could not be read.
    #[error("reading the reply")]
    Io(#[from] std::io::Error),
    /// A reply line longer than [`crate::backend::MAX_LINE`].
    #[error("reply line over the limit of {limit} bytes")]
    LineTooLong {
        /// The limit.
        limit: u64,
    },
    /// The connection closed before the reply's end.
    #[error("connection closed mid-reply")]
    Closed,
    /// A `VA` line without a length.
    #[error("malformed value line '{line}'")]
    BadValueLine {
        /// The line.
        line: String,
    },
    /// A value longer than a stripe.
    #[error("value of {len} bytes, over the limit of {limit} bytes (one stripe)")]
    TooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// A value not followed by `\r\n`.
    #[error("value not followed by \\r\\n")]
    NoCrlf,
    /// A reply the command does not expect (an error such as
    /// `SERVER_ERROR out of memory`, or another command's reply).
    #[error("unexpected reply '{line}'")]
    Unexpected {
        /// The reply line, trimmed.
        line: String,
    },
    /// A lease won without a CAS token.
    #[error("lease won without a CAS token: '{line}'")]
    NoCas {
        /// The reply line, trimmed.
        line: String,
    },
}

/// Why a fleet spec or membership change was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SpecError {
    /// A spec without nodes.
    #[error("--cache-nodes '{spec}' names no node")]
    Empty {
        /// The spec.
        spec: String,
    },
    /// A node that is not `HOST:PORT` or `NAME=HOST:PORT`.
    #[error("cache node '{node}' is not HOST:PORT or NAME=HOST:PORT")]
    BadNode {
        /// The node.
        node: String,
    },
    /// A node with an empty name.
    #[error("cache node '{node}' has an empty name")]
    EmptyName {
        /// The node.
        node: String,
    },
    /// A node (by name) listed twice.
    #[error("--cache-nodes lists node '{name}' twice")]
    Twice {
        /// The node's name.
        name: String,
    },
    /// A write key with a memcached fleet.
    #[error("memcached has no authentication: a fleet write key applies to lode cache nodes only")]
    KeyWithMemcached,
    /// A change between lode nodes and memcached.
    #[error("'{spec}': a fleet cannot change between lode nodes and memcached; restart the agent")]
    KindChange {
        /// The new spec.
        spec: String,
    },
    /// A membership change of a fleet built from a fixed backend.
    #[error("this fleet was not built from a node list; it cannot be changed")]
    Fixed,
}
