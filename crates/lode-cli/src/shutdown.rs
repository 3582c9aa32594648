//! Clean exits on SIGTERM and SIGINT.
//!
//! `flatten`, `push`, `pull` and `cache-node` install [`Shutdown`] first. The
//! first SIGTERM or SIGINT only raises a flag: the command notices it (a
//! flatten between entries and while waiting for data, an async command
//! through [`Shutdown::wait`]), unwinds, and so removes its temp files
//! (every output temp file is removed when dropped, see
//! [`lode_common::temp`]); it then exits with 128 + the signal number and
//! one line saying so. A second signal while it unwinds exits at once (a
//! killed run's temp file is then swept by the next run). Nothing else is
//! done in the signal handler itself.

use anyhow::{Context, Result};
use signal_hook::consts::{SIGINT, SIGTERM};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How often [`Shutdown::wait`] looks at the flag.
const POLL: Duration = Duration::from_millis(50);

/// The stop request of one command.
#[derive(Clone, Debug)]
pub struct Shutdown {
    flag: Arc<AtomicBool>,
    signal: Arc<AtomicUsize>,
}

/// The error a command returns when it stopped because of a signal: `main`
/// exits with 128 + the signal number.
#[derive(Debug, thiserror::Error)]
#[error("interrupted by {}: stopped cleanly, temp files removed", signal_name(*.signal))]
pub struct Interrupted {
    /// The signal.
    pub signal: i32,
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        SIGTERM => "SIGTERM",
        SIGINT => "SIGINT",
        _ => "a signal",
    }
}

impl Shutdown {
    /// Installs the handlers for SIGTERM and SIGINT.
    pub fn install() -> Result<Shutdown> {
        let flag = Arc::new(AtomicBool::new(false));
        let signal = Arc::new(AtomicUsize::new(0));
        for sig in [SIGTERM, SIGINT] {
            // Armed by the first signal: a second one exits at once.
            signal_hook::flag::register_conditional_shutdown(sig, 128 + sig, flag.clone())
                .context("installing a signal handler")?;
            signal_hook::flag::register_usize(sig, signal.clone(), sig as usize)
                .context("installing a signal handler")?;
            signal_hook::flag::register(sig, flag.clone())
                .context("installing a signal handler")?;
        }
        Ok(Shutdown { flag, signal })
    }

    /// The flag a signal raises (what `lode_flatten` polls).
    pub fn flag(&self) -> &AtomicBool {
        &self.flag
    }

    /// Raises the flag without a signal: the command's other work stops as
    /// if interrupted (when one half of a command failed, the other half
    /// has no reason to go on).
    pub fn stop(&self) {
        self.flag.store(true, Ordering::Relaxed);
    }

    /// True once a signal arrived.
    pub fn requested(&self) -> bool {
        self.flag.load(Ordering::Relaxed)
    }

    /// The error to return once a signal arrived.
    pub fn interrupted(&self) -> Interrupted {
        Interrupted {
            signal: self.signal.load(Ordering::Relaxed) as i32,
        }
    }

    /// Resolves when a signal arrives.
    pub async fn wait(&self) -> Interrupted {
        while !self.requested() {
            tokio::time::sleep(POLL).await;
        }
        self.interrupted()
    }

    /// Runs `work` until it ends or a signal arrives; on a signal `work` is
    /// dropped (and with it whatever temp files it holds).
    pub async fn run<T>(&self, work: impl std::future::Future<Output = Result<T>>) -> Result<T> {
        tokio::select! {
            r = work => r,
            i = self.wait() => Err(i.into()),
        }
    }
}
