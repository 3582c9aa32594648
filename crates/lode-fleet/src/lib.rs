//! lode's AZ cache fleet.
//!
//! * [`node`]: the `lode cache-node` server (HTTP/2; memory and disk tiers,
//!   LRU-2 eviction);
//! * [`stripe`]: the 4-of-5 code (4 data stripes + XOR parity);
//! * [`client`]: [`FleetTier`], the agent's tier that reads the first 4 of 5
//!   stripes and fills the fleet after a miss;
//! * [`auth`]: the write key: nodes accept writes only with its MAC;
//! * [`backend`]: the node protocols — lode nodes over HTTP/2, or memcached;
//! * [`lease`]: fill leases, so a herd of hosts missing one chunk costs one
//!   store GET.

pub mod auth;
pub mod backend;
pub mod client;
pub mod lease;
pub mod lru2;
pub mod members;
pub mod node;
pub mod stripe;
mod write;

pub use backend::{Http2Nodes, Lease, Memcached, StripeBackend};
pub use client::{placement, FleetTier};
pub use lease::LeaseConfig;
pub use members::Change;
pub use node::NodeStore;

/// Parses a fleet spec: `HOST:PORT,...` or `memcached://HOST:PORT,...` (commas
/// or newlines between nodes) into (is memcached, node list).
pub fn parse_spec(spec: &str) -> Result<(bool, Vec<String>), String> {
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
        return Err(format!("--cache-nodes '{spec}' names no node"));
    }
    for n in &nodes {
        if n.rsplit_once(':')
            .is_none_or(|(_, p)| p.parse::<u16>().is_err())
        {
            return Err(format!("cache node '{n}' is not HOST:PORT"));
        }
    }
    let distinct: std::collections::HashSet<&String> = nodes.iter().collect();
    if distinct.len() != nodes.len() {
        return Err("--cache-nodes lists a node twice".into());
    }
    Ok((mc, nodes))
}

/// Builds the fleet tier from `--cache-nodes`: `HOST:PORT,...` (lode nodes)
/// or `memcached://HOST:PORT,...`.
pub fn from_spec(spec: &str, timeout: std::time::Duration) -> Result<FleetTier, String> {
    from_spec_with_key(spec, timeout, None)
}

/// [`from_spec`], signing every write to lode nodes with `key` (memcached has
/// no authentication: a key with a `memcached://` spec is an error).
pub fn from_spec_with_key(
    spec: &str,
    timeout: std::time::Duration,
    key: Option<auth::WriteKey>,
) -> Result<FleetTier, String> {
    let (mc, nodes) = parse_spec(spec)?;
    if mc && key.is_some() {
        return Err(
            "memcached has no authentication: a fleet write key applies to lode cache nodes only"
                .into(),
        );
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
