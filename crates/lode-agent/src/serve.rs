//! The accept loop every listener of the agent runs: `run(listener, bound,
//! shutdown, handler)`.
//!
//! * At most `bound` connections are served at once; a connection past the
//!   bound is accepted and closed at once (shed), so its client learns at
//!   once instead of waiting in the backlog.
//! * Accept errors never end the loop. When the process is out of file
//!   descriptors (`EMFILE`, `ENFILE`) the loop frees a descriptor it keeps
//!   in reserve, accepts the newest pending connection and closes it (shed),
//!   takes the reserve again and backs off (10 ms doubling to 1 s); other
//!   errors (an aborted connection) are logged and the loop goes on.
//! * When `shutdown` turns true the loop stops accepting and waits for its
//!   connections, which watch the same signal and end after draining.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

/// A listening socket the loop accepts from.
pub trait Listener: Send + 'static {
    /// An accepted connection.
    type Conn: Send + 'static;
    /// Accepts one connection.
    fn accept(&mut self) -> impl Future<Output = std::io::Result<Self::Conn>> + Send;
}

impl Listener for tokio::net::UnixListener {
    type Conn = tokio::net::UnixStream;
    async fn accept(&mut self) -> std::io::Result<Self::Conn> {
        tokio::net::UnixListener::accept(self).await.map(|(s, _)| s)
    }
}

impl Listener for tokio::net::TcpListener {
    type Conn = tokio::net::TcpStream;
    async fn accept(&mut self) -> std::io::Result<Self::Conn> {
        let (s, _) = tokio::net::TcpListener::accept(self).await?;
        let _ = s.set_nodelay(true);
        Ok(s)
    }
}

/// What happens to a connection past the bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overflow {
    /// Accepted and closed at once (NBD, control API, metrics).
    Shed,
    /// Left in the listen backlog until a slot frees (a vhost-user socket:
    /// one VM at a time, a reconnecting frontend waits for its previous
    /// session to finish).
    Wait,
}

/// Counters of one accept loop (also summed into the agent's).
#[derive(Debug, Default)]
pub struct LoopStats {
    /// Connections accepted and served.
    pub accepted: AtomicU64,
    /// Connections closed at once: past the bound, or to survive fd exhaustion.
    pub shed: AtomicU64,
    /// Accept errors survived.
    pub errors: AtomicU64,
}

/// Whether `e` means the process or the system is out of descriptors (or memory).
fn out_of_descriptors(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE) | Some(libc::ENFILE) | Some(libc::ENOBUFS) | Some(libc::ENOMEM)
    )
}

/// A descriptor held in reserve, freed to accept-and-close one connection
/// when the process has no other.
struct Reserve(Option<std::fs::File>);

impl Reserve {
    fn take() -> Reserve {
        Reserve(std::fs::File::open("/dev/null").ok())
    }

    fn release(&mut self) {
        self.0 = None;
    }

    fn retake(&mut self) {
        if self.0.is_none() {
            self.0 = std::fs::File::open("/dev/null").ok();
        }
    }
}

/// Waits until `shutdown` is true (or its sender is gone).
pub async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

/// Accepts connections from `listener` until `shutdown` turns true, serving
/// at most `bound` at once, each with `handle(conn, shutdown)`; then waits
/// for the connections to end.
pub async fn run<L, H, F>(
    listener: L,
    bound: usize,
    shutdown: watch::Receiver<bool>,
    stats: Arc<LoopStats>,
    handle: H,
) where
    L: Listener,
    H: Fn(L::Conn, watch::Receiver<bool>) -> F + Send + Sync + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    run_with(listener, bound, Overflow::Shed, shutdown, stats, handle).await
}

/// [`run`] with a choice of what happens past the bound.
pub async fn run_with<L, H, F>(
    mut listener: L,
    bound: usize,
    overflow: Overflow,
    shutdown: watch::Receiver<bool>,
    stats: Arc<LoopStats>,
    handle: H,
) where
    L: Listener,
    H: Fn(L::Conn, watch::Receiver<bool>) -> F + Send + Sync + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(bound.max(1)));
    let mut tasks = JoinSet::new();
    let mut reserve = Reserve::take();
    let mut backoff = Duration::from_millis(10);
    let mut stop = shutdown.clone();
    loop {
        while tasks.try_join_next().is_some() {}
        let mut waited = None;
        if overflow == Overflow::Wait {
            tokio::select! {
                biased;
                _ = stopped(&mut stop) => break,
                p = slots.clone().acquire_owned() => waited = p.ok(),
            }
        }
        let accepted = tokio::select! {
            biased;
            _ = stopped(&mut stop) => break,
            a = listener.accept() => a,
        };
        match accepted {
            Ok(conn) => {
                backoff = Duration::from_millis(10);
                let slot = match waited.take() {
                    Some(p) => Ok(p),
                    None => slots.clone().try_acquire_owned(),
                };
                match slot {
                    Ok(permit) => {
                        stats.accepted.fetch_add(1, Ordering::Relaxed);
                        let fut = handle(conn, shutdown.clone());
                        tasks.spawn(async move {
                            fut.await;
                            drop(permit);
                        });
                    }
                    Err(_) => {
                        let n = stats.shed.fetch_add(1, Ordering::Relaxed);
                        if n.is_power_of_two() {
                            tracing::warn!(
                                bound,
                                shed = n + 1,
                                "connection bound reached: closing new connections"
                            );
                        }
                        drop(conn);
                    }
                }
            }
            Err(e) if out_of_descriptors(&e) => {
                let n = stats.errors.fetch_add(1, Ordering::Relaxed);
                if n.is_power_of_two() {
                    tracing::warn!(error = %e, errors = n + 1, "accept: out of file descriptors; shedding the newest connection");
                }
                // Free the reserve, close the newest connection, take it back.
                reserve.release();
                if let Some(Ok(conn)) = futures::FutureExt::now_or_never(listener.accept()) {
                    stats.shed.fetch_add(1, Ordering::Relaxed);
                    drop(conn);
                }
                reserve.retake();
                tokio::select! {
                    _ = stopped(&mut stop) => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
            Err(e) => {
                stats.errors.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
    drop(listener);
    while tasks.join_next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// A listener that fails with EMFILE a few times, then yields connections.
    struct Flaky {
        fails: usize,
        conns: usize,
    }

    impl Listener for Flaky {
        type Conn = usize;
        async fn accept(&mut self) -> std::io::Result<usize> {
            if self.fails > 0 {
                self.fails -= 1;
                return Err(std::io::Error::from_raw_os_error(libc::EMFILE));
            }
            if self.conns == 0 {
                std::future::pending::<()>().await;
            }
            self.conns -= 1;
            Ok(self.conns)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn survives_fd_exhaustion_bounds_and_shuts_down() {
        let (tx, rx) = watch::channel(false);
        let stats = Arc::new(LoopStats::default());
        let served = Arc::new(AtomicUsize::new(0));
        let s = served.clone();
        let loop_task = tokio::spawn(run(
            Flaky {
                fails: 5,
                conns: 10,
            },
            3,
            rx,
            stats.clone(),
            move |_c, mut stop| {
                let s = s.clone();
                async move {
                    s.fetch_add(1, Ordering::SeqCst);
                    // Hold the slot until shutdown.
                    stopped(&mut stop).await;
                }
            },
        ));
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(served.load(Ordering::SeqCst), 3, "the bound");
        assert!(stats.errors.load(Ordering::SeqCst) >= 1, "EMFILE survived");
        assert_eq!(
            stats.shed.load(Ordering::SeqCst) + 3,
            10,
            "every other connection was shed"
        );
        tx.send(true).unwrap_or_default();
        tokio::time::timeout(Duration::from_secs(5), loop_task)
            .await
            .expect("the loop ends at shutdown")
            .expect("no panic");
    }
}
