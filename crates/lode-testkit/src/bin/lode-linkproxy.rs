//! `lode-linkproxy --delay-ms N LISTEN=UPSTREAM...`: TCP proxies that add a
//! one-way delay of N ms to each direction of every link (see
//! [`lode_testkit::proxy`]). The test bed (`scripts/testbed.sh`) runs one per
//! host for its links to the cache nodes and the store. Runs until killed;
//! prints `ready` once every listener is bound.

use anyhow::{bail, Context};
use lode_testkit::proxy::{LinkOptions, Proxy};
use std::time::Duration;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut delay = Duration::ZERO;
    let mut links = Vec::new();
    while let Some(a) = args.next() {
        if a == "--delay-ms" {
            let v = args.next().context("--delay-ms needs a value")?;
            let ms: u64 = v.parse().with_context(|| format!("--delay-ms '{v}'"))?;
            delay = Duration::from_millis(ms);
        } else if let Some((l, u)) = a.split_once('=') {
            links.push((l.to_string(), u.to_string()));
        } else {
            bail!("usage: lode-linkproxy [--delay-ms N] LISTEN=UPSTREAM... (got '{a}')");
        }
    }
    if links.is_empty() {
        bail!("usage: lode-linkproxy [--delay-ms N] LISTEN=UPSTREAM...");
    }
    let opts = LinkOptions {
        delay,
        ..LinkOptions::default()
    };
    let _proxies = links
        .iter()
        .map(|(l, u)| {
            Proxy::start(l, u, opts.clone()).with_context(|| format!("listening on {l} for {u}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    println!("ready");
    loop {
        std::thread::park();
    }
}
