//! The fleet tier passes the tier conformance suite over both node kinds:
//! lode cache nodes (in-process servers on 127.0.0.1) and real memcached
//! processes, each fleet with fill leases on (so the suite's abandon checks
//! release real leases). A fleet is a cache: it is seeded by filling it and
//! settling, as the reader fills it after a store fetch. Node failures are
//! misses by design (the reader goes on to the store), so there is no fault
//! to inject that the fleet would report as a failure.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use lode_fleet::node::{Limits, Node, NodeStore};
use lode_fleet::LeaseConfig;
use lode_testkit::services::Memcached;
use lode_tier::conformance::{self, Remote};
use std::sync::Arc;
use std::time::Duration;

/// Nodes in each fleet (stripes go to 5 of them).
const NODES: usize = 6;
const TIMEOUT: Duration = Duration::from_secs(5);

async fn passes(spec: &str, label: &str) {
    let fleet = lode_fleet::from_spec(spec, TIMEOUT)
        .unwrap()
        .with_leases(LeaseConfig::default());
    let t = Remote::filled(fleet);
    let report = conformance::run(&t, "conformance").await.unwrap();
    assert_eq!(report.tier, label);
    assert_eq!(report.passed.len(), 5, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_of_lode_nodes_is_a_conforming_tier() {
    let mut addrs = Vec::new();
    for _ in 0..NODES {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        addrs.push(l.local_addr().unwrap().to_string());
        let store = Arc::new(NodeStore::new(64 << 20, None).unwrap());
        tokio::spawn(Node::new(store, Limits::default()).serve(l));
    }
    passes(&addrs.join(","), "fleet").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_of_memcached_is_a_conforming_tier() {
    let servers: Vec<Memcached> = (0..NODES).map(|_| Memcached::start()).collect();
    let addrs: Vec<&str> = servers.iter().map(|m| m.addr.as_str()).collect();
    passes(
        &format!("memcached://{}", addrs.join(",")),
        "fleet-memcached",
    )
    .await;
}
