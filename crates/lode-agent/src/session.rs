//! One client of a volume (an NBD connection, a vhost-user frontend): the
//! lifecycle and the request operations both transports share.
//!
//! ```text
//! Volume::open      open image → claim named overlay → open overlay
//! Session::start    activate (first client: prefetch, recording)
//!   admit           a request slot and its bytes of the memory budget
//!   read/write/…    through the volume's order (reads share, writes alone)
//! Session::end      drain (every request done) → drop the volume if this
//!                   session owned it (overlay saved or deleted, then the
//!                   claim released) → save the working set
//! ```
//!
//! Memory per session is bounded: at most [`SESSION_REQUESTS`] requests and
//! [`SESSION_BUDGET`] bytes of request payloads and unsent replies are held
//! at once; a client that stops reading its replies stops being read.

use crate::overlay::OverlayError;
use crate::range::{BlockRange, RangeError};
use crate::reader::ReadError;
use crate::volume::{Counters, Volume};
use bytes::Bytes;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Requests of one session in flight at once.
pub const SESSION_REQUESTS: usize = 16;
/// Bytes of request payloads and replies one session may hold at once
/// (twice the largest request, so one always fits).
pub const SESSION_BUDGET: u64 = 64 << 20;
/// Unit of the memory budget.
const BUDGET_UNIT: u64 = 4096;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// Offset or length outside the image, empty, too large, misaligned.
    #[error(transparent)]
    Range(#[from] RangeError),
    /// A write to a read-only volume.
    #[error("volume {0} is read-only")]
    ReadOnly(String),
    /// Reading the image failed (no tier had the chunk, verification).
    #[error(transparent)]
    Read(#[from] ReadError),
    /// The overlay failed.
    #[error(transparent)]
    Overlay(#[from] OverlayError),
}

/// A request's share of a session: a slot and bytes of the budget,
/// returned when dropped (after its reply was sent).
#[derive(Debug)]
pub struct Ticket {
    _budget: OwnedSemaphorePermit,
    _slot: OwnedSemaphorePermit,
}

/// One client of a volume.
#[derive(Debug)]
pub struct Session {
    volume: Arc<Volume>,
    slots: Arc<Semaphore>,
    budget: Arc<Semaphore>,
}

impl Session {
    /// Starts a session: activates the image (prefetch and recording start
    /// with the first client).
    pub async fn start(volume: Arc<Volume>) -> Session {
        volume.exports.activate(&volume.image).await;
        Counters::add(&volume.counters.sessions, 1);
        Counters::add(&volume.counters.active_sessions, 1);
        Session {
            volume,
            slots: Arc::new(Semaphore::new(SESSION_REQUESTS)),
            budget: Arc::new(Semaphore::new((SESSION_BUDGET / BUDGET_UNIT) as usize)),
        }
    }

    /// The volume.
    pub fn volume(&self) -> &Arc<Volume> {
        &self.volume
    }

    /// Waits for a request slot and `bytes` of the memory budget.
    pub async fn admit(&self, bytes: u64) -> Ticket {
        let units = bytes
            .div_ceil(BUDGET_UNIT)
            .clamp(1, SESSION_BUDGET / BUDGET_UNIT) as u32;
        // Never closed: the semaphores live as long as the session.
        let budget = self
            .budget
            .clone()
            .acquire_many_owned(units)
            .await
            .expect("session budget is never closed");
        let slot = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .expect("session slots are never closed");
        Ticket {
            _budget: budget,
            _slot: slot,
        }
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> usize {
        SESSION_REQUESTS - self.slots.available_permits()
    }

    /// Waits until every admitted request has finished.
    pub async fn drain(&self) {
        let _all = self
            .slots
            .acquire_many(SESSION_REQUESTS as u32)
            .await
            .expect("session slots are never closed");
    }

    /// Ends the session: drains, drops the volume if this session was its
    /// only user (its overlay is saved or deleted, then its claim released,
    /// off the async workers), and stores the working set when recording.
    pub async fn end(self) {
        self.drain().await;
        let image = self.volume.image.clone();
        let exports = self.volume.exports.clone();
        self.volume
            .counters
            .active_sessions
            .fetch_sub(1, Ordering::Relaxed);
        if let Ok(volume) = Arc::try_unwrap(self.volume) {
            if let Err(e) = volume.flush().await {
                tracing::warn!(error = %e, volume = %volume.id, "overlay not flushed at the end of its session");
            }
            let _ = tokio::task::spawn_blocking(move || drop(volume)).await;
        }
        if let Err(e) = exports.save_working_set(&image).await {
            tracing::warn!(error = %e, export = %image.export, "cannot store the working set");
        }
    }
}

impl Volume {
    /// Reads `range` through the overlay (the image when read-only).
    pub async fn read(&self, range: BlockRange) -> Result<Bytes, RequestError> {
        self.exports
            .stats
            .first_read
            .get_or_init(std::time::Instant::now);
        let r = match self.overlay() {
            Some(o) => o.read(&self.image, range).await.map_err(RequestError::from),
            None => self.image.read(range).await.map_err(RequestError::from),
        };
        self.count(
            &self.counters.reads,
            range.len(),
            &self.counters.read_bytes,
            r.is_ok(),
        );
        r
    }

    /// Writes `data` over `range` (into the overlay).
    pub async fn write(&self, range: BlockRange, data: Bytes) -> Result<(), RequestError> {
        let r = match self.overlay() {
            Some(o) => o
                .write(&self.image, range, data)
                .await
                .map_err(RequestError::from),
            None => Err(RequestError::ReadOnly(self.id.clone())),
        };
        self.count(
            &self.counters.writes,
            range.len(),
            &self.counters.write_bytes,
            r.is_ok(),
        );
        r
    }

    /// Writes zeros over `range`, 1 MiB at a time.
    pub async fn write_zeroes(&self, range: BlockRange) -> Result<(), RequestError> {
        const PIECE: u64 = 1 << 20;
        let zeros = Bytes::from(vec![0u8; PIECE.min(range.len()) as usize]);
        for (_, piece) in range.split(PIECE) {
            self.write(piece, zeros.slice(..piece.len() as usize))
                .await?;
        }
        Ok(())
    }

    /// Makes every completed write durable.
    pub async fn flush_request(&self) -> Result<(), RequestError> {
        let r = self.flush().await.map_err(RequestError::from);
        Counters::add(&self.counters.flushes, 1);
        if r.is_err() {
            Counters::add(&self.counters.errors, 1);
        }
        r
    }

    fn count(
        &self,
        ops: &std::sync::atomic::AtomicU64,
        n: u64,
        bytes: &std::sync::atomic::AtomicU64,
        ok: bool,
    ) {
        if ok {
            ops.fetch_add(1, Ordering::Relaxed);
            bytes.fetch_add(n, Ordering::Relaxed);
        } else {
            Counters::add(&self.counters.errors, 1);
        }
    }
}
