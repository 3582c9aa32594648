//! A function sandbox's guest: the program it runs (with its environment
//! and working directory) and its one network service.
//!
//! A sandbox's guest has a virtio network device on QEMU's user-mode
//! network with `restrict=on`: no packet leaves QEMU, neither to the host
//! nor beyond. The only thing the guest reaches is one forwarded address,
//! [`RUNTIME_API`] (`guestfwd`), whose every TCP connection QEMU hands to a
//! relay process of the worker's choosing (stdin and stdout are the
//! connection), which copies it to that sandbox's Runtime API socket. The
//! guest's `/init` gives `eth0` the static address [`GUEST_ADDR`] (no DHCP,
//! no default route).

use crate::cpio::{archive, Member};
use crate::qemu::shell_quote;
use std::collections::BTreeMap;

/// The guest's address on its private network.
pub const GUEST_ADDR: &str = "10.0.2.15/24";
/// Where the guest reaches the Runtime API (`AWS_LAMBDA_RUNTIME_API`).
pub const RUNTIME_API: &str = "10.0.2.100:9001";

/// The network of a sandbox: QEMU user networking, restricted, with one
/// forward to a relay command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Network {
    /// Program and arguments QEMU starts for each connection to
    /// [`RUNTIME_API`] (stdin/stdout are the connection).
    pub relay: Vec<String>,
}

impl Network {
    /// The `-netdev` value, with id `id`.
    pub fn netdev(&self, id: &str) -> String {
        let (host, port) = RUNTIME_API.split_once(':').unwrap_or((RUNTIME_API, ""));
        // libslirp splits the command like a shell (g_shell_parse_argv);
        // QEMU's option parser takes ",," for a comma.
        let cmd: Vec<String> = self.relay.iter().map(|a| shell_quote(a)).collect();
        let cmd = cmd.join(" ").replace(',', ",,");
        format!(
            "user,id={id},restrict=on,ipv6=off,net=10.0.2.0/24,host=10.0.2.2,guestfwd=tcp:{host}:{port}-cmd:{cmd}"
        )
    }
}

/// What a sandbox's guest runs, chrooted into its image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SandboxLaunch {
    /// Program and arguments (looked up in the environment's `PATH`).
    pub argv: Vec<String>,
    /// The whole environment (nothing else is inherited).
    pub env: BTreeMap<String, String>,
    /// Working directory inside the image.
    pub working_dir: String,
}

impl SandboxLaunch {
    /// The per-run initramfs part: `/lode/net` (the guest's address, which
    /// also makes `/init` bring up the network) and `/lode/cmd.sh`, which
    /// runs `argv` in the image's root with exactly `env`, from
    /// `working_dir`. The image is mounted read-write (its private overlay).
    ///
    /// `chroot` always starts in `/`, so the program is started by the
    /// initramfs's busybox, reached from inside the image through
    /// `/proc/1/root` (the image need not have a shell): it changes to the
    /// working directory and execs the program.
    pub fn cpio(&self) -> Vec<u8> {
        let q = |s: &str| shell_quote(s);
        let mut script = String::from(
            "export PATH=/bin\n\
             for d in proc dev; do [ -d /newroot/$d ] || { mkdir -p /newroot/$d && mount --bind /$d /newroot/$d; }; done\n\
             exec chroot /newroot /proc/1/root/bin/busybox env -i",
        );
        for (k, v) in &self.env {
            script.push(' ');
            script.push_str(&q(&format!("{k}={v}")));
        }
        script.push_str(" /proc/1/root/bin/busybox sh -c ");
        script.push_str(&q(
            "cd \"$0\" || { echo \"lode: cannot enter the working directory $0\" >&2; exit 126; }; exec \"$@\"",
        ));
        script.push(' ');
        script.push_str(&q(&self.working_dir));
        for a in &self.argv {
            script.push(' ');
            script.push_str(&q(a));
        }
        script.push('\n');
        let net = format!("LODE_GUEST_ADDR={}\n", q(GUEST_ADDR));
        archive(&[
            Member::Dir("lode".into(), 0o755),
            Member::File("lode/cmd.sh".into(), 0o755, script.into_bytes()),
            Member::File("lode/net".into(), 0o644, net.into_bytes()),
            Member::File("lode/rw".into(), 0o644, Vec::new()),
        ])
    }

    /// The initramfs of this sandbox: `base` with [`SandboxLaunch::cpio`].
    pub fn initrd(&self, base: &[u8]) -> Vec<u8> {
        crate::qemu::append_initrd(base, &self.cpio())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_relay_command_survives_qemus_option_parser() {
        let n = Network {
            relay: vec![
                "/usr/bin/lode".into(),
                "runtime-relay".into(),
                "/tmp/a,b c.sock".into(),
            ],
        };
        let d = n.netdev("n0");
        assert!(d.starts_with("user,id=n0,restrict=on,"), "{d}");
        assert!(
            d.ends_with("guestfwd=tcp:10.0.2.100:9001-cmd:'/usr/bin/lode' 'runtime-relay' '/tmp/a,,b c.sock'"),
            "{d}"
        );
    }

    #[test]
    fn the_script_sets_exactly_the_environment_and_directory() {
        let l = SandboxLaunch {
            argv: vec!["/var/task/bootstrap".into(), "it's".into()],
            env: [("A".to_string(), "x y".to_string())].into(),
            working_dir: "/var/task".into(),
        };
        let c = l.cpio();
        let text = String::from_utf8_lossy(&c);
        assert!(
            text.contains("env -i 'A=x y' /proc/1/root/bin/busybox sh -c"),
            "{text}"
        );
        assert!(
            text.contains("'/var/task' '/var/task/bootstrap' 'it'\\''s'"),
            "{text}"
        );
        assert!(text.contains("LODE_GUEST_ADDR='10.0.2.15/24'"), "{text}");
        assert_eq!(l.initrd(&[1, 2, 3]).len() % crate::INITRD_ALIGN, 0);
    }
}
