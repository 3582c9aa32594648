//! lode's AZ cache fleet.
//!
//! * [`node`]: the `lode cache-node` server (HTTP/2; memory and disk tiers,
//!   LRU-2 eviction);
//! * [`stripe`]: the 4-of-5 code (4 data stripes + XOR parity);
//! * [`client`]: [`FleetTier`], the agent's tier that reads the first 4 of 5
//!   stripes and fills the fleet after a miss;
//! * [`auth`]: the write key: nodes accept writes only with its MAC;
//! * [`backend`]: the node protocols — lode nodes over HTTP/2, or memcached;
//! * [`error`]: typed errors of node requests, memcached replies and specs;
//! * [`lease`]: fill leases, so a herd of hosts missing one chunk costs one
//!   store GET;
//! * [`members`]: the node list, changed while reads run;
//! * `write`: fills and read repair, in the background and bounded.

pub mod auth;
pub mod backend;
pub mod client;
pub mod error;
pub mod lease;
pub mod lru2;
pub mod members;
pub mod node;
pub mod stripe;
mod write;

pub use backend::{Http2Nodes, Lease, Memcached, StripeBackend};
pub use client::{placement, FleetTier};
pub use error::{BackendError, ReplyError, SpecError, StripeFailure, Unreachable};
pub use lease::LeaseConfig;
pub use members::Change;
pub use node::NodeStore;

/// Parses a fleet spec: `NODE,...` or `memcached://NODE,...` (commas or
/// newlines between nodes) into (is memcached, node list). A node is
/// `HOST:PORT`, or `NAME=HOST:PORT` when a host reaches it at an address of
/// its own (a proxy, NAT): placement hashes the node's name (by default its
/// `HOST:PORT`), so every host must name a node alike.
pub fn parse_spec(spec: &str) -> Result<(bool, Vec<String>), SpecError> {
    let spec = spec.trim();
    let (mc, list) = match spec.strip_prefix("memcached://") {
        Some(rest) => (true, rest),
        None => (false, spec),
    };
    let nodes: Vec<String> = list
        .split([',', '\n'])
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    if nodes.is_empty() {
        return Err(SpecError::Empty { spec: spec.into() });
    }
    for n in &nodes {
        if node_addr(n)
            .rsplit_once(':')
            .is_none_or(|(_, p)| p.parse::<u16>().is_err())
        {
            return Err(SpecError::BadNode { node: n.clone() });
        }
        if node_name(n).is_empty() {
            return Err(SpecError::EmptyName { node: n.clone() });
        }
    }
    let mut distinct = std::collections::HashSet::new();
    if let Some(n) = nodes
        .iter()
        .map(|n| node_name(n))
        .find(|n| !distinct.insert(*n))
    {
        return Err(SpecError::Twice { name: n.into() });
    }
    Ok((mc, nodes))
}

/// A node's name in placement: `NAME` of `NAME=HOST:PORT`, else `HOST:PORT`.
pub fn node_name(node: &str) -> &str {
    node.split_once('=').map_or(node, |(name, _)| name)
}

/// The address a node is reached at: `HOST:PORT` of `NAME=HOST:PORT`.
pub fn node_addr(node: &str) -> &str {
    node.split_once('=').map_or(node, |(_, addr)| addr)
}

/// Builds the fleet tier from `--cache-nodes`: `NODE,...` (lode nodes) or
/// `memcached://NODE,...` (see [`parse_spec`]).
pub fn from_spec(spec: &str, timeout: std::time::Duration) -> Result<FleetTier, SpecError> {
    from_spec_with_key(spec, timeout, None)
}

/// [`from_spec`], signing every write to lode nodes with `key` (memcached has
/// no authentication: a key with a `memcached://` spec is an error).
pub fn from_spec_with_key(
    spec: &str,
    timeout: std::time::Duration,
    key: Option<auth::WriteKey>,
) -> Result<FleetTier, SpecError> {
    let (mc, nodes) = parse_spec(spec)?;
    if mc && key.is_some() {
        return Err(SpecError::KeyWithMemcached);
    }
    let rebuild: members::Rebuild = std::sync::Arc::new(move |nodes: Vec<String>| {
        let b: std::sync::Arc<dyn StripeBackend> = match (mc, &key) {
            (true, _) => std::sync::Arc::new(Memcached::new(nodes)),
            (false, None) => std::sync::Arc::new(Http2Nodes::new(nodes)),
            (false, Some(k)) => std::sync::Arc::new(Http2Nodes::new(nodes).with_key(k.clone())),
        };
        b
    });
    Ok(FleetTier::with_rebuild(
        rebuild(nodes),
        Some(rebuild),
        timeout,
        if mc { "fleet-memcached" } else { "fleet" },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_with_names() {
        let (mc, n) = parse_spec("a=127.0.1.1:7001, 127.0.2.2:7000\n").unwrap();
        assert!(!mc);
        assert_eq!(n, ["a=127.0.1.1:7001", "127.0.2.2:7000"]);
        assert_eq!(
            (node_name(&n[0]), node_addr(&n[0])),
            ("a", "127.0.1.1:7001")
        );
        assert_eq!(
            (node_name(&n[1]), node_addr(&n[1])),
            ("127.0.2.2:7000", "127.0.2.2:7000")
        );
        assert!(parse_spec("a=x").is_err());
        assert!(parse_spec("=127.0.0.1:1").is_err());
        assert_eq!(
            parse_spec("a=127.0.0.1:1,a=127.0.0.1:2"),
            Err(SpecError::Twice { name: "a".into() })
        );
        // Two hosts reaching the same nodes at different addresses place alike.
        let name = lode_chunk::ChunkName([3; 32]);
        let h1: Vec<String> = (1..=6).map(|i| format!("n{i}=127.0.1.1:700{i}")).collect();
        let h2: Vec<String> = (1..=6).map(|i| format!("n{i}=127.0.1.2:700{i}")).collect();
        assert_eq!(placement(&h1, &name), placement(&h2, &name));
    }
}
