//! Shared helpers for the lode CLI integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

/// The `lode` binary under test: `LODE_BIN` if set, else the one cargo
/// built for this package.
pub fn lode_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("LODE_BIN") {
        return PathBuf::from(p);
    }
    match option_env!("CARGO_BIN_EXE_lode") {
        Some(p) => PathBuf::from(p),
        None => panic!("set LODE_BIN to the lode binary"),
    }
}

/// Large cases (hundreds of MiB) run only with `LODE_BIG_TESTS=1`.
pub fn big_tests() -> bool {
    std::env::var("LODE_BIG_TESTS").is_ok_and(|v| v == "1")
}

/// A fresh temporary directory.
pub fn tmp() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("lode-it-")
        .tempdir()
        .expect("tempdir")
}

/// Runs `cmd` under `/usr/bin/time` and returns its output and its peak
/// resident memory in bytes (the kernel's `ru_maxrss`). `kill_after` bounds
/// the run: a command still running then is killed (and the test fails on
/// its status), so a regression cannot hang the suite.
pub fn run_measured(
    cmd: &mut std::process::Command,
    kill_after: std::time::Duration,
) -> (std::process::Output, u64) {
    let dir = tmp();
    let rss = dir.path().join("rss");
    let mut wrapped = std::process::Command::new("timeout");
    wrapped
        .arg("-s")
        .arg("KILL")
        .arg(format!("{}", kill_after.as_secs().max(1)))
        .arg("/usr/bin/time")
        .arg("-f")
        .arg("%M")
        .arg("-o")
        .arg(&rss)
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => wrapped.env(k, v),
            None => wrapped.env_remove(k),
        };
    }
    if let Some(d) = cmd.get_current_dir() {
        wrapped.current_dir(d);
    }
    let out = wrapped
        .output()
        .expect("run /usr/bin/time (apt install time)");
    let kib: u64 = std::fs::read_to_string(&rss)
        .ok()
        .and_then(|s| s.lines().last().and_then(|l| l.trim().parse().ok()))
        .unwrap_or(0);
    (out, kib * 1024)
}

/// The names in `dir`, sorted.
pub fn names_in(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Peak resident memory of a running process (`VmHWM`), in bytes.
pub fn peak_rss(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

/// CPU time (user + system) a running process has used, in seconds.
pub fn cpu_seconds(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at ')'.
    let rest = s.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 (1-based), i.e. 11 and 12 here.
    (ticks(11) + ticks(12)) / 100.0
}
