//! A real QEMU guest on a read-write vhost-user volume of a running
//! `lode agent` writes, syncs and later verifies files while the agent is
//! SIGKILLed and restarted three times and then upgraded (a second binary
//! takes the state directory over): the guest keeps running, sees no I/O
//! error, and everything it synced reads back. And `lode run --agent`
//! boots through a running agent and detaches its volume at the end. QEMU reconnects (`reconnect-ms`)
//! and the new agent resubmits the requests that were in flight
//! (`VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD`). Needs qemu-system-x86_64,
//! busybox-static and xz (scripts/test.sh installs them).
#![allow(clippy::unwrap_used, missing_docs)]

mod common_agent;
mod common_vm;

use common_agent::service::Service;
use common_agent::*;
use common_vm::{vm_dir, write_image};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const TICKS: usize = 36;

const SCRIPT: &str = "i=0; errs=0
while [ $i -lt 36 ]; do
  busybox dd if=/dev/urandom of=/root/f$i bs=65536 count=4 2>/dev/null || errs=$((errs+1))
  busybox sha256sum /root/f$i >> /root/sums || errs=$((errs+1))
  busybox sync || errs=$((errs+1))
  echo LODE-TICK $i
  i=$((i+1))
done
echo 3 > /proc/sys/vm/drop_caches
if busybox sha256sum -c /root/sums > /root/check 2>&1; then echo verify-ok; else busybox cat /root/check; fi
busybox dmesg | busybox grep -iE 'i/o error|blk_update|virtio_blk|buffer i/o' || true
echo ioerrors=$(busybox dmesg | busybox grep -ciE 'i/o error|blk_update_request|buffer i/o')
echo errs=$errs";

/// An environment holding `t/img` (the test image, pushed) and a prepared VM directory.
fn pushed_and_prepared() -> Env {
    let env = Env::new();
    write_image(&env.path("oci"));
    env.lode_ok(&[
        "push",
        &format!("oci:{}:latest", env.path("oci").display()),
        "--tenant",
        "t",
        "--name",
        "img",
        "--store",
        env.store.to_str().unwrap(),
    ]);
    let prep = run_timeout(
        env.lode().args(["vm", "prepare", "--dir"]).arg(vm_dir()),
        Duration::from_secs(600),
    );
    assert!(prep.status.success(), "vm prepare: {prep:?}");
    env
}

#[test]
fn vhost_user_guest_rides_out_three_agent_restarts() {
    for tool in ["qemu-system-x86_64", "xz"] {
        require_tool(tool, "qemu-system-x86 / xz-utils (scripts/vm-deps.sh)");
    }
    let env = pushed_and_prepared();
    let assets = lode_vm::Assets::find(&vm_dir()).unwrap();
    let mut svc = Service::new(&env, "vm");
    svc.start();
    let v = svc.attach(&["t/img", "--rw", "--via", "vhost-user"]);
    let socket = std::path::PathBuf::from(v["socket"].as_str().unwrap());
    let upgraded = env.path("lode-upgraded");
    std::fs::copy(lode_bin(), &upgraded).unwrap();

    let base = std::fs::read(&assets.initrd).unwrap();
    let cmd = ["/bin/sh".to_string(), "-c".into(), SCRIPT.into()];
    let initrd = env.path("initrd");
    std::fs::write(&initrd, lode_vm::run_initrd(&base, &cmd, true)).unwrap();
    let mut spec = lode_vm::RunSpec::new(
        assets.kernel.clone(),
        initrd,
        lode_vm::Disk::VhostUser { socket },
    );
    spec.reset_log = Some(env.path("qemu-resets.log"));
    spec.reconnect = Some(lode_vm::Reconnect::default());
    let (tx, rx) = mpsc::channel::<(usize, Instant)>();
    let vm = std::thread::spawn(move || {
        let mut lines = Vec::new();
        let limits = lode_vm::Limits {
            total: Duration::from_secs(600),
            ..lode_vm::Limits::default()
        };
        let r = lode_vm::boot::run(&spec, &limits, &mut |line, ev| {
            if let lode_vm::Event::Output(l) = ev {
                if let Some(n) = l.strip_prefix("LODE-TICK ") {
                    let _ = tx.send((n.trim().parse().unwrap_or(0), Instant::now()));
                }
                lines.push(l.clone());
            } else {
                lines.push(line.to_string());
            }
        });
        (
            r.map(|o| o.status)
                .map_err(|e| format!("{e}: {}", e.details())),
            lines,
        )
    });
    let mut ticks: Vec<(usize, Instant)> = Vec::new();
    let mut restarts: Vec<Instant> = Vec::new();
    let wait_tick = |ticks: &mut Vec<(usize, Instant)>, n: usize| {
        while ticks.last().is_none_or(|t| t.0 < n) {
            match rx.recv_timeout(Duration::from_secs(300)) {
                Ok(t) => ticks.push(t),
                Err(e) => panic!(
                    "guest stopped ticking before {n} ({e}); ticks {}",
                    ticks.len()
                ),
            }
        }
    };
    for (round, at) in [4usize, 10, 16, 22].into_iter().enumerate() {
        wait_tick(&mut ticks, at);
        restarts.push(Instant::now());
        if round < 3 {
            svc.kill();
            svc.start();
        } else {
            let mut next = Service::new(&env, "vm");
            next.bin = upgraded.clone();
            next.metrics_addr = svc.metrics_addr.clone();
            next.log = env.path("service-vm-upgraded.log");
            next.take_over_from(&mut svc);
            svc = next;
        }
        eprintln!(
            "restart {round} done at tick {}",
            ticks.last().map_or(0, |t| t.0)
        );
    }
    while let Ok(t) = rx.recv_timeout(Duration::from_secs(300)) {
        ticks.push(t);
        if t.0 + 1 == TICKS {
            break;
        }
    }
    let (status, lines) = vm.join().unwrap();
    let out = lines.join("\n");
    assert_eq!(status, Ok(0), "guest: {out}");
    assert_eq!(ticks.len(), TICKS, "ticks seen: {out}");
    assert!(
        out.contains("verify-ok"),
        "synced files did not read back:\n{out}"
    );
    assert!(
        out.contains("ioerrors=0"),
        "the guest saw I/O errors:\n{out}"
    );
    assert!(
        out.contains("errs=0"),
        "commands failed in the guest:\n{out}"
    );
    // The longest gap between ticks around each restart, and the usual one.
    let mut gaps: Vec<f64> = ticks
        .windows(2)
        .map(|w| (w[1].1 - w[0].1).as_secs_f64())
        .collect();
    let worst = restarts
        .iter()
        .map(|r| {
            ticks
                .windows(2)
                .filter(|w| w[1].1 >= *r)
                .map(|w| (w[1].1 - w[0].1).as_secs_f64())
                .next()
                .unwrap_or(0.0)
        })
        .fold(0.0, f64::max);
    gaps.sort_by(f64::total_cmp);
    eprintln!(
        "guest tick gap: median {:.3} s, longest across a restart {:.3} s",
        gaps[gaps.len() / 2],
        worst
    );
    svc.assert_alive();
    let vols = svc.volumes();
    assert_eq!(vols.len(), 1);
    assert!(
        vols[0]["counters"]["errors"] == 0,
        "volume errors: {vols:?}"
    );
}

#[test]
fn lode_run_attaches_through_a_running_agent() {
    require_tool("qemu-system-x86_64", "qemu-system-x86 (scripts/vm-deps.sh)");
    let env = pushed_and_prepared();
    let mut svc = Service::new(&env, "run");
    svc.start();
    for via in ["nbd", "vhost-user"] {
        let o = run_timeout(
            env.lode()
                .args([
                    "run", "img", "--tenant", "t", "--via", via, "--rw", "--agent",
                ])
                .arg(&svc.control)
                .arg("--vm-dir")
                .arg(vm_dir())
                .args([
                    "--",
                    "/bin/sh",
                    "-c",
                    "cat /etc/msg; echo hi > /root/x; cat /root/x",
                ]),
            Duration::from_secs(300),
        );
        assert!(
            o.status.success()
                && o.stdout_str().contains("hello from the image")
                && o.stdout_str().contains("hi"),
            "{via}: {o:?}"
        );
        assert!(
            o.stderr.contains("volume v"),
            "{via}: no volume counters: {}",
            o.stderr
        );
        assert!(svc.volumes().is_empty(), "{via}: volume left attached");
        assert_eq!(svc.state_files("sockets"), Vec::<String>::new());
        assert_eq!(svc.state_files("volumes"), Vec::<String>::new());
    }
    svc.assert_alive();
}
