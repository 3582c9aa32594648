//! A TCP proxy on loopback that injects network conditions into one link:
//! a one-way delay in each direction (a wide-area or cross-rack link; the
//! kernel's `netem` is not available on every test machine), and faults once
//! a number of bytes went from the upstream to the client (cut the
//! connection, kill the upstream, stop answering).
//!
//! Threads, std only: one accept loop per proxy, two pumps per connection
//! (one more per direction with a delay). A delayed pump stamps what it read
//! and a writer sends it when due, so the delay does not cap throughput; at
//! most [`DELAY_QUEUE`] reads are in flight per direction (then reading
//! stops, as a full socket buffer would).

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Reads of up to 64 KiB queued per delayed direction.
pub const DELAY_QUEUE: usize = 256;

/// What the proxy does once `after` bytes went from the upstream to the
/// client on one connection carrying more than that.
#[derive(Clone, Copy, Debug)]
pub enum Fault {
    /// Close that connection (once); later connections pass.
    CutOnce,
    /// Call the kill hook (stop the upstream) and close every connection.
    KillRegistry,
    /// Stop forwarding on that connection and every later one (the
    /// connections stay open: the upstream "stops answering").
    Stall,
    /// Slow that connection to a drip of [`DRIP`] bytes a second for this
    /// many seconds (once), then pass at full speed. TLS passes through, so
    /// a drip must carry a whole TLS record for the client to see a byte.
    Slow(u64),
}

/// Bytes a [`Fault::Slow`] connection forwards per second: more than one
/// TLS record (16 KiB of data and its framing).
pub const DRIP: usize = 20 << 10;

/// What a connection does with the bytes just read.
enum Step {
    /// Forward them.
    Pass,
    /// End the connection.
    Cut,
    /// Drip from now until then.
    SlowUntil(Instant),
}

/// How a [`Proxy`] treats its link.
#[derive(Clone, Default)]
pub struct LinkOptions {
    /// One-way delay added to the bytes of each direction (a request and
    /// its answer take twice this more). Connection set-up is not delayed.
    pub delay: Duration,
    /// A fault after this many bytes from the upstream, if any.
    pub fault: Option<(u64, Fault)>,
    /// What [`Fault::KillRegistry`] calls.
    pub kill: Option<Arc<dyn Fn() + Send + Sync>>,
}

/// A running proxy; it stops accepting when dropped (open connections run
/// until either side closes them).
pub struct Proxy {
    /// The address it listens on (`HOST:PORT`).
    pub addr: String,
    stop: Arc<AtomicBool>,
    /// Whether the fault happened.
    pub fired: Arc<AtomicBool>,
}

impl Proxy {
    /// Listens on `listen` (`HOST:PORT`, port 0 for any) and forwards every
    /// connection to `upstream` under `opts`.
    pub fn start(listen: &str, upstream: &str, opts: LinkOptions) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind(listen)?;
        let addr = listener.local_addr()?.to_string();
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let fired = Arc::new(AtomicBool::new(false));
        let upstream = upstream.to_owned();
        let (s, f) = (stop.clone(), fired.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let Ok((down, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                let (opts, f, upstream) = (opts.clone(), f.clone(), upstream.clone());
                std::thread::spawn(move || connect(down, &upstream, opts, f));
            }
        });
        Ok(Proxy { addr, stop, fired })
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Joins one client connection to a new upstream connection.
fn connect(down: TcpStream, upstream: &str, opts: LinkOptions, fired: Arc<AtomicBool>) {
    if down.set_nonblocking(false).is_err() {
        return;
    }
    let _ = down.set_nodelay(true);
    let Ok(up) = TcpStream::connect(upstream) else {
        let _ = down.shutdown(Shutdown::Both);
        return;
    };
    let _ = up.set_nodelay(true);
    let stalled = matches!(opts.fault, Some((_, Fault::Stall))) && fired.load(Ordering::Relaxed);
    if stalled {
        // Hold the connection open, answer nothing.
        let _keep = (down, up);
        std::thread::sleep(Duration::from_secs(600));
        return;
    }
    let (Ok(d2), Ok(u2)) = (down.try_clone(), up.try_clone()) else {
        return;
    };
    let delay = opts.delay;
    std::thread::spawn(move || pump(d2, u2, delay, None));
    let counted = opts.fault.map(|(after, fault)| Counted {
        after,
        fault,
        fired,
        kill: opts.kill.clone(),
        seen: AtomicU64::new(0),
    });
    pump(up, down, delay, counted);
}

struct Counted {
    after: u64,
    fault: Fault,
    fired: Arc<AtomicBool>,
    kill: Option<Arc<dyn Fn() + Send + Sync>>,
    seen: AtomicU64,
}

impl Counted {
    /// Counts `n` bytes and says what the connection does with them.
    fn step(&self, n: usize) -> Step {
        let seen = self.seen.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
        let first = !self.fired.load(Ordering::Relaxed);
        if seen <= self.after || !(first || matches!(self.fault, Fault::Stall)) {
            return Step::Pass;
        }
        self.fired.store(true, Ordering::Relaxed);
        match self.fault {
            Fault::CutOnce => {}
            Fault::KillRegistry => {
                if let Some(k) = &self.kill {
                    k();
                }
            }
            Fault::Stall => std::thread::sleep(Duration::from_secs(600)),
            Fault::Slow(secs) => {
                return Step::SlowUntil(Instant::now() + Duration::from_secs(secs))
            }
        }
        Step::Cut
    }
}

/// Copies `from` to `to` until EOF, each read `delay` late; with
/// `counted`, injects its fault.
fn pump(mut from: TcpStream, mut to: TcpStream, delay: Duration, counted: Option<Counted>) {
    let (tx, writer) = if delay.is_zero() {
        (None, None)
    } else {
        let (tx, rx) = std::sync::mpsc::sync_channel::<(Instant, Vec<u8>)>(DELAY_QUEUE);
        let Ok(mut out) = to.try_clone() else {
            return;
        };
        let w = std::thread::spawn(move || {
            for (due, b) in rx {
                std::thread::sleep(due.saturating_duration_since(Instant::now()));
                if out.write_all(&b).is_err() {
                    break;
                }
            }
        });
        (Some(tx), Some(w))
    };
    let mut buf = vec![0u8; 64 << 10];
    let mut slow_until: Option<Instant> = None;
    let mut send = |bytes: &[u8]| match &tx {
        Some(tx) => tx.send((Instant::now() + delay, bytes.to_vec())).is_ok(),
        None => to.write_all(bytes).is_ok(),
    };
    'copy: loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        match counted.as_ref().map_or(Step::Pass, |c| c.step(n)) {
            Step::Pass => {}
            Step::Cut => break,
            Step::SlowUntil(t) => slow_until = Some(t),
        }
        let mut rest = &buf[..n];
        while let Some(until) = slow_until.filter(|u| Instant::now() < *u && !rest.is_empty()) {
            let k = rest.len().min(DRIP);
            if !send(&rest[..k]) {
                break 'copy;
            }
            rest = &rest[k..];
            std::thread::sleep(
                Duration::from_secs(1).min(until.saturating_duration_since(Instant::now())),
            );
        }
        if !send(rest) {
            break;
        }
    }
    // What was read before the end still arrives, late.
    drop(tx);
    if let Some(w) = writer {
        let _ = w.join();
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server behind a delaying proxy: each round trip takes at
    /// least twice the one-way delay, and the bytes come back unchanged.
    #[test]
    fn delays_each_direction() {
        let echo = TcpListener::bind("127.0.0.1:0").unwrap();
        let up = echo.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            let (mut s, _) = echo.accept().unwrap();
            let mut b = [0u8; 1024];
            while let Ok(n) = s.read(&mut b) {
                if n == 0 || s.write_all(&b[..n]).is_err() {
                    break;
                }
            }
        });
        let opts = LinkOptions {
            delay: Duration::from_millis(30),
            ..LinkOptions::default()
        };
        let p = Proxy::start("127.0.0.1:0", &up, opts).unwrap();
        let mut c = TcpStream::connect(&p.addr).unwrap();
        for i in 0..3u8 {
            let t = Instant::now();
            c.write_all(&[i; 100]).unwrap();
            let mut got = [0u8; 100];
            c.read_exact(&mut got).unwrap();
            assert_eq!(got, [i; 100]);
            assert!(
                t.elapsed() >= Duration::from_millis(60),
                "{:?}",
                t.elapsed()
            );
        }
    }
}
