//! Fleet membership changes under a running agent: `--cache-nodes-file`
//! re-read on SIGHUP, and `lode fleet show|set` (the control API). A node added mid-run starts receiving stripes; a bad
//! file leaves the fleet as it was; reads stay byte-identical throughout.
#![allow(clippy::unwrap_used, missing_docs)]

mod common_agent;
mod common_fleet;

use common_agent::*;
use common_fleet::*;
use std::fs;
use std::process::Command;
use std::time::{Duration, Instant};

const TENANT: &str = "acme";
const NAME: &str = "blk";
const EXPORT: &str = "acme/blk";

fn sighup(pid: u32) {
    assert!(Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap()
        .success());
}

fn wait_log(a: &Agent, needle: &str, n: usize) {
    let t = Instant::now();
    while a.log_text().matches(needle).count() < n {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "agent never logged '{needle}':\n{}",
            a.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn stripes(n: &CacheNode) -> f64 {
    get(&n.metrics(), "lode_node_stripes{tier=\"memory\"}")
}

#[test]
fn a_node_added_on_sighup_receives_its_share_of_stripes() {
    let _serial = serial();
    let env = Env::new();
    let p = push_image(&env, TENANT, NAME, 24 * MIB);
    let nodes = start_nodes(env.dir.path(), 6);
    let file = env.path("fleet.nodes");
    let five: Vec<&str> = nodes[..5].iter().map(|n| n.addr.as_str()).collect();
    fs::write(&file, five.join("\n")).unwrap();
    let mut a = env.agent(
        "a",
        &[
            "--cache-nodes-file",
            file.to_str().unwrap(),
            "--fleet-timeout-ms",
            FLEET_TIMEOUT_MS,
            "--cache-size",
            "1M",
            "--memory-cache",
            "1M",
        ],
    );
    let pid = a.pid().unwrap();

    // A bad file: reported, fleet unchanged.
    fs::write(&file, "not-a-node").unwrap();
    sighup(pid);
    wait_log(&a, "fleet unchanged", 1);
    a.assert_alive();

    // Node 6 joins.
    let six: Vec<&str> = nodes.iter().map(|n| n.addr.as_str()).collect();
    fs::write(&file, six.join(",")).unwrap();
    sighup(pid);
    wait_log(&a, "fleet now 6 node(s)", 1);
    let out = env.path("a.raw");
    qemu_img_convert(&a.uri(EXPORT), &out).ok();
    assert_file_is(&out, &p.pulled, "read after node 6 joined");
    wait_fills_settled(&a, &tier_hits("store"), Duration::from_secs(60));
    let held: Vec<f64> = nodes.iter().map(stripes).collect();
    let total: f64 = held.iter().sum();
    assert!(total > 0.0, "no stripes stored");
    let share = held[5] / total;
    eprintln!("stripes per node after the join: {held:?}; node 6 holds {share:.3}");
    assert!(
        share > 0.05 && share < 0.35,
        "node 6 holds {share:.3} of the stripes; rendezvous placement gives about 1/6"
    );
    assert!(
        a.metrics_text()
            .contains(&format!("node=\"{}\"", nodes[5].addr)),
        "node 6 missing from the agent's metrics"
    );

    // Node 6 leaves again: reads still right (its stripes come back from
    // the other nodes by read repair or the store).
    fs::write(&file, five.join(",")).unwrap();
    sighup(pid);
    wait_log(&a, "fleet now 5 node(s)", 1);
    fs::remove_file(&out).unwrap();
    qemu_img_convert(&a.uri(EXPORT), &out).ok();
    assert_file_is(&out, &p.pulled, "read after node 6 left");

    // The control API through `lode fleet`: read the membership, add node 6
    // back, refuse junk (and leave the fleet as it was).
    let (ok, shown, _) = fleet_cli(&a, &["show"]);
    let five_lines: Vec<&str> = shown.lines().collect();
    assert!(ok && five_lines == five, "lode fleet show: {shown}");
    let (ok, set, err) = fleet_cli(&a, &["set", &six.join(","), "--json"]);
    assert!(ok, "lode fleet set: {err}");
    assert!(
        set.contains(&format!(r#""added":["{}"]"#, nodes[5].addr)),
        "{set}"
    );
    let (ok, _, err) = fleet_cli(&a, &["set", "memcached://127.0.0.1:1"]);
    assert!(!ok && err.contains("cannot change between"), "{err}");
    let (ok, _, err) = fleet_cli(&a, &["set", "no-port"]);
    assert!(!ok && err.contains("not HOST:PORT"), "{err}");
    let (_, shown, _) = fleet_cli(&a, &["show", "--json"]);
    assert!(shown.contains(&nodes[5].addr), "{shown}");
    // The raw API answers the same (curl over the unix socket).
    assert!(control(&a, "GET", None).contains(&nodes[5].addr));
    // An agent without a fleet says so.
    let plain = env.agent("plain", &[]);
    let (ok, _, err) = fleet_cli(&plain, &["show"]);
    assert!(!ok && err.contains("no cache fleet"), "{err}");
    drop(plain);
    fs::remove_file(&out).unwrap();
    qemu_img_convert(&a.uri(EXPORT), &out).ok();
    assert_file_is(
        &out,
        &p.pulled,
        "read after node 6 joined through the control API",
    );
    a.assert_alive();
}

/// `lode fleet ARGS --agent SOCKET`: (success, stdout, stderr).
fn fleet_cli(a: &Agent, args: &[&str]) -> (bool, String, String) {
    let o = Command::new(lode_bin())
        .arg("fleet")
        .args(args)
        .arg("--agent")
        .arg(&a.control)
        .output()
        .unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// One request to the agent's control API (curl over its unix socket).
fn control(a: &Agent, method: &str, body: Option<&str>) -> String {
    let mut c = Command::new("curl");
    c.args(["-s", "--unix-socket"])
        .arg(&a.control)
        .args(["-X", method, "http://agent/v1/fleet"]);
    if let Some(b) = body {
        c.args(["-H", "content-type: application/json", "-d", b]);
    }
    let o = c.output().unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned()
}
