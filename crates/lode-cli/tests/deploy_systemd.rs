//! The systemd units in deploy/systemd: `systemd-analyze verify` accepts
//! them (with ExecStart pointing at the binary under test), they are
//! sandboxed, and every option their command lines use is one the binary has.
#![allow(clippy::unwrap_used, missing_docs)]

mod common_agent;

use common_agent::*;
use std::path::PathBuf;
use std::process::Command;

const UNITS: [(&str, &str); 2] = [
    ("lode-agent.service", "agent"),
    ("lode-cache-node.service", "cache-node"),
];

fn units_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/systemd")
}

/// The `--options` of the unit's ExecStart (continuation lines joined).
fn exec_options(unit: &str) -> Vec<String> {
    let joined = unit.replace("\\\n", " ");
    let line = joined
        .lines()
        .find(|l| l.starts_with("ExecStart="))
        .expect("ExecStart");
    line.split_whitespace()
        .filter(|w| w.starts_with("--"))
        .map(|w| w.split('=').next().unwrap().to_string())
        .collect()
}

#[test]
fn units_use_real_options_and_are_sandboxed() {
    for (file, sub) in UNITS {
        let text = std::fs::read_to_string(units_dir().join(file)).unwrap();
        for must in [
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "ProtectHome=yes",
            "CapabilityBoundingSet=",
            "CacheDirectory=",
        ] {
            assert!(text.contains(must), "{file}: no {must}");
        }
        assert!(
            text.contains("DynamicUser=yes") || text.contains("User="),
            "{file}: runs as root"
        );
        let help = Command::new(lode_bin())
            .args([sub, "--help"])
            .output()
            .unwrap();
        let help = String::from_utf8_lossy(&help.stdout);
        let opts = exec_options(&text);
        assert!(!opts.is_empty(), "{file}: no options parsed");
        for o in opts {
            assert!(help.contains(&o), "{file}: `lode {sub}` has no option {o}");
        }
    }
}

#[test]
fn systemd_analyze_verify_accepts_the_units() {
    let Ok(v) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("SKIPPED: systemd-analyze is not installed (apt-get install systemd); the units were not verified");
        return;
    };
    assert!(v.status.success());
    let dir = tempfile::tempdir().unwrap();
    let mut paths = Vec::new();
    for (file, _) in UNITS {
        let text = std::fs::read_to_string(units_dir().join(file))
            .unwrap()
            .replace("/usr/local/bin/lode", lode_bin());
        let p = dir.path().join(file);
        std::fs::write(&p, text).unwrap();
        paths.push(p);
    }
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(&paths)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    // Lines about our units (systemd may also complain about the host's own
    // units it loads as dependencies, which are not ours to fix).
    let ours: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("lode-agent.service") || l.contains("lode-cache-node.service"))
        .collect();
    assert!(
        out.status.success() && ours.is_empty(),
        "systemd-analyze verify: status {}\n{err}",
        out.status
    );
}
