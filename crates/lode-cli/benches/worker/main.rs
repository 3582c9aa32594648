//! Cold and warm invocations through `lode worker` (issue 16), measured side
//! by side in one run: a real agent, real micro-VMs (QEMU, TCG) and AWS's
//! custom-runtime tutorial `bootstrap` (tests/common_worker).
//!
//! Per round: the agent is restarted on an empty host cache, then
//! 1. a cold start from a cold host cache (every chunk from the store);
//! 2. a cold start of another revision from the warm host cache;
//! 3. `WARM` warm invocations of that sandbox.
//!
//! Then the warm-invoke overhead with AWS's Python runtime interface client
//! (`python -m awslambdaric`, tests/common_worker's image): one cold start,
//! `WARM` warm invocations of the handler, and the same handler called
//! `DIRECT` times in a loop inside the same guest (its event
//! `{"direct": N}`), so the overhead is the warm invocation minus the
//! direct call, measured in one sandbox.
//!
//! ```sh
//! ROUNDS=5 WARM=10 cargo bench -p lode-cli --bench worker
//! ```
//! Prints the p50/p99 of each stage (attach, VM boot, runtime init, the
//! invocation) and of the whole request. Needs QEMU and a prepared VM
//! directory (as `tests/worker_vm.rs`).
#![allow(clippy::unwrap_used, missing_docs, dead_code)]

#[path = "../../tests/common_agent/mod.rs"]
mod common_agent;
#[path = "../../tests/common_vm/mod.rs"]
mod common_vm;
#[path = "../../tests/common_worker/mod.rs"]
mod common_worker;

use common_agent::Env;
use common_worker::{
    invoke, payload, push_layout, spec, stack, write_python_image, write_runtime_image,
};
use serde_json::json;
use serde_json::Value;
use std::time::Instant;

fn env_u64(k: &str, d: u64) -> u64 {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

fn pct(v: &[f64], p: f64) -> f64 {
    let mut v = v.to_vec();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// Stage times (ms) of some invocations.
#[derive(Default)]
struct Stages {
    attach: Vec<f64>,
    boot: Vec<f64>,
    init: Vec<f64>,
    invoke: Vec<f64>,
    total: Vec<f64>,
}

impl Stages {
    fn add(&mut self, r: &Value, total_ms: f64) {
        let t = &r["timings"];
        let ms = |k: &str| t[k].as_u64().unwrap_or(0) as f64 / 1e3;
        self.attach.push(ms("attach_us"));
        self.boot.push(ms("boot_us"));
        self.init.push(ms("init_us"));
        self.invoke.push(ms("invoke_us"));
        self.total.push(total_ms);
    }

    fn row(&self, name: &str) -> String {
        let f = |v: &[f64]| format!("{:.0} / {:.0}", pct(v, 0.5), pct(v, 0.99));
        format!(
            "| {name} | {} | {} | {} | {} | {} | {} |",
            self.total.len(),
            f(&self.attach),
            f(&self.boot),
            f(&self.init),
            f(&self.invoke),
            f(&self.total)
        )
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    let rounds = env_u64("ROUNDS", 5);
    let warm_n = env_u64("WARM", 10);
    let env = Env::new();
    let oci = env.path("oci");
    write_runtime_image(&oci);
    let digest = push_layout(&env, &oci, "rt");
    let (mut agent, _manager, _reports, _w, addr) = stack(&env);
    let (mut cold_cache, mut warm_cache, mut warm) =
        (Stages::default(), Stages::default(), Stages::default());
    let timed = |id: &str, f: &Value, sandbox: Option<&str>| {
        let t = Instant::now();
        let (status, head, r) = invoke(&addr, id, f, br#"{"x":1}"#, sandbox);
        assert!(status == 200 && r["outcome"] == "success", "{head}\n{r}");
        (r, t.elapsed().as_secs_f64() * 1e3)
    };
    for round in 0..rounds {
        agent.kill();
        std::fs::remove_dir_all(&agent.cache).ok();
        agent.start();
        let f = spec(&digest, 2 * round + 1, 60, None, 1);
        let (r, ms) = timed(&format!("c{round}"), &f, None);
        cold_cache.add(&r, ms);
        let f = spec(&digest, 2 * round + 2, 60, None, 1);
        let (r, ms) = timed(&format!("h{round}"), &f, None);
        warm_cache.add(&r, ms);
        let sandbox = r["sandbox"].as_str().unwrap().to_string();
        for i in 0..warm_n {
            let (r, ms) = timed(&format!("w{round}-{i}"), &f, Some(&sandbox));
            assert_eq!(r["warm"], true);
            warm.add(&r, ms);
        }
        eprintln!("round {} of {rounds} done", round + 1);
    }
    println!("| invocation | n | attach ms p50 / p99 | VM boot | runtime init | invoke | whole request |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    println!("{}", cold_cache.row("cold start, cold host cache"));
    println!("{}", warm_cache.row("cold start, warm host cache"));
    println!("{}", warm.row("warm"));
    let ratio = pct(&cold_cache.total, 0.5) / pct(&warm.total, 0.5);
    println!("\ncold (cold cache) / warm, p50 of the whole request: {ratio:.1}x");
    python_overhead(&env, &addr, warm_n.max(20), env_u64("DIRECT", 200));
}

/// Warm invocations of a Python handler against the same handler called
/// directly in the guest.
fn python_overhead(env: &Env, addr: &str, warm_n: u64, direct_n: u64) {
    let oci = env.path("py-oci");
    let config = write_python_image(&oci, &env.path("py-work"));
    let digest = push_layout(env, &oci, "py");
    let f = json!({
        "tenant": "t", "name": "py", "arn": "arn:aws:lambda:us-east-1:t:function:py", "revision": 1,
        "image": format!("t/py@{digest}"), "memory_mib": 256, "timeout_s": 120, "image_config": config
    });
    let event = br#"{"hello":"python"}"#;
    let t = Instant::now();
    let (status, head, r) = invoke(addr, "py-cold", &f, event, None);
    assert!(status == 200 && r["outcome"] == "success", "{head}\n{r}");
    let mut cold = Stages::default();
    cold.add(&r, t.elapsed().as_secs_f64() * 1e3);
    let sandbox = r["sandbox"].as_str().unwrap().to_string();
    let mut warm = Stages::default();
    for i in 0..warm_n {
        let t = Instant::now();
        let (_, head, r) = invoke(addr, &format!("py-w{i}"), &f, event, Some(&sandbox));
        assert!(
            r["outcome"] == "success" && r["warm"] == true,
            "{head}\n{r}"
        );
        warm.add(&r, t.elapsed().as_secs_f64() * 1e3);
    }
    let mut direct = Vec::new();
    for i in 0..3 {
        let e = json!({"direct": direct_n, "event": {"hello": "python"}});
        let (_, head, r) = invoke(
            addr,
            &format!("py-d{i}"),
            &f,
            e.to_string().as_bytes(),
            Some(&sandbox),
        );
        assert!(r["outcome"] == "success", "{head}\n{r}");
        let p: serde_json::Value = serde_json::from_str(&payload(&r)).unwrap();
        direct.push(p["direct_us"].as_f64().unwrap() / 1e3);
    }
    println!("\nAWS Python runtime interface client (awslambdaric), one sandbox:\n");
    println!("| invocation | n | attach ms p50 / p99 | VM boot | runtime init | invoke | whole request |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    println!("{}", cold.row("cold start"));
    println!("{}", warm.row("warm"));
    let d = pct(&direct, 0.5);
    println!(
        "| handler called directly in the guest ({direct_n} calls × 3, median of the means) | {} | | | | {d:.2} | |",
        direct.len()
    );
    println!(
        "\nwarm-invoke overhead over the direct call, p50: {:.1} ms at the worker (invoke stage), {:.1} ms for the whole request",
        pct(&warm.invoke, 0.5) - d,
        pct(&warm.total, 0.5) - d
    );
}
