//! Alarms: reads from roots that are not readable.
//!
//! Reads may come only from *active* or *retired* roots. Every chunk read
//! (`Store::get_chunk`, under the agent's store tier, `lode pull` and
//! `lode cat`) asks the [`RootWatch`] for the root's state (cached for
//! [`WATCH_TTL_MS`]); opening an image reads its root's state afresh. A read from an *expired* root,
//! a deleted one, or one with no root document still returns the data if it
//! is there, and records an alarm object:
//!
//! ```text
//! alarms/<root>/<at ms, 13 digits>-<id>.json
//!   {"version":1,"root":..,"state":"expired|deleted","reader":"agent",
//!    "host":..,"pid":..,"at_ms":..,"tenant":..,"image":..,"chunk":..}
//! ```
//! While any alarm is open, `lode gc` deletes nothing. `lode gc --ack-alarm
//! ROOT` acknowledges a root's alarms by moving them to
//! `alarms-acked/<root>/` (kept until the root is deleted). One alarm per
//! root per process per [`WATCH_TTL_MS`] at most; every such read is counted
//! in [`metrics`].

use crate::bounded::ObjectKind;
use crate::error::{Result, StoreError};
use crate::roots::RootState;
use crate::store::Store;
use lode_chunk::ChunkName;
use lode_common::prom;
use object_store::path::Path;
use object_store::ObjectStoreExt;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// How long a root's state is trusted before it is read again.
pub const WATCH_TTL_MS: u64 = 5_000;

/// Process-wide alarm counters (Prometheus: [`render_metrics`]).
#[derive(Debug, Default)]
pub struct AlarmMetrics {
    /// Reads from a root that was not readable.
    pub unreadable_reads: AtomicU64,
    /// Alarm objects written.
    pub alarms_recorded: AtomicU64,
    /// Alarm objects that could not be written.
    pub alarm_failures: AtomicU64,
}

static METRICS: AlarmMetrics = AlarmMetrics {
    unreadable_reads: AtomicU64::new(0),
    alarms_recorded: AtomicU64::new(0),
    alarm_failures: AtomicU64::new(0),
};

/// This process's alarm counters.
pub fn metrics() -> &'static AlarmMetrics {
    &METRICS
}

/// Appends the alarm counters in Prometheus text format.
pub fn render_metrics(out: &mut String) {
    let m = metrics();
    for (name, help, v) in [
        (
            "lode_unreadable_root_reads_total",
            "Reads from an expired or deleted root (each is an alarm condition)",
            &m.unreadable_reads,
        ),
        (
            "lode_root_alarms_recorded_total",
            "Alarm objects written to the store",
            &m.alarms_recorded,
        ),
        (
            "lode_root_alarm_failures_total",
            "Alarm objects that could not be written",
            &m.alarm_failures,
        ),
    ] {
        prom::single(out, name, prom::Kind::Counter, help, prom::load(v));
    }
}

/// What was read from a root.
#[derive(Clone, Copy, Debug)]
pub enum ReadOf<'a> {
    /// A chunk.
    Chunk(&'a ChunkName),
    /// An image's manifest (opening the image).
    Image {
        /// Tenant.
        tenant: &'a str,
        /// Image name.
        name: &'a str,
    },
}

/// An alarm document.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Alarm {
    /// Document version (1).
    pub version: u32,
    /// The root read from.
    pub root: String,
    /// Its state as the reader saw it: `expired`, `deleted` (no root document).
    pub state: String,
    /// Who read (`agent`, `pull`, `cat`, `gc`, ...).
    pub reader: String,
    /// Host name of the reader.
    pub host: String,
    /// Process id of the reader.
    pub pid: u32,
    /// When, Unix milliseconds.
    pub at_ms: u64,
    /// Tenant of the image read, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Image read, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Chunk read, when it was a chunk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk: Option<String>,
}

#[derive(Clone, Copy, Debug)]
struct Seen {
    state: Option<RootState>,
    fetched_ms: u64,
    alarmed_ms: Option<u64>,
}

/// Cached root states of one process's reads.
#[derive(Debug, Default)]
pub struct RootWatch {
    // std Mutex: map operations only, never held across an await.
    roots: Mutex<HashMap<String, Seen>>,
}

/// This host's name (for alarms and lease holders).
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// Open (unacknowledged) alarms, counted per root.
pub type OpenAlarms = BTreeMap<String, usize>;

impl Store {
    /// Checks the state of `root` before a read of `what` from it, and
    /// records an alarm if the root is not readable. Never fails the read.
    pub(crate) async fn watch_read(&self, root: &str, what: ReadOf<'_>) {
        let now = self.env().now_ms();
        let cached = {
            let m = self.watch.roots.lock().unwrap_or_else(|p| p.into_inner());
            m.get(root).copied()
        };
        // Chunk reads use the cached state; opening an image (rare) reads it afresh.
        let fresh = matches!(what, ReadOf::Chunk(_));
        let mut seen = match cached {
            Some(s) if fresh && now.saturating_sub(s.fetched_ms) < WATCH_TTL_MS => s,
            _ => {
                let state = match self.root_versioned(root).await {
                    Ok(r) => r.map(|(r, _)| r.state),
                    // Unknown (store unreachable): no alarm; the read itself reports.
                    Err(_) => return,
                };
                Seen {
                    state,
                    fetched_ms: now,
                    alarmed_ms: cached.and_then(|c| c.alarmed_ms),
                }
            }
        };
        let readable = seen.state.is_some_and(RootState::readable);
        // One alarm per root per window; a failed write is retried on the next read.
        let alarm = !readable
            && seen
                .alarmed_ms
                .is_none_or(|t| now.saturating_sub(t) >= WATCH_TTL_MS);
        self.watch
            .roots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(root.to_string(), seen);
        if readable {
            return;
        }
        metrics().unreadable_reads.fetch_add(1, Ordering::Relaxed);
        let state = match seen.state {
            Some(s) => format!("{s:?}").to_lowercase(),
            None => "deleted".into(),
        };
        tracing::error!(
            root,
            state,
            reader = self.reader(),
            "read from a root that is not readable"
        );
        if !alarm {
            return;
        }
        match self.record_alarm(root, &state, what).await {
            Ok(_) => {
                metrics().alarms_recorded.fetch_add(1, Ordering::Relaxed);
                seen.alarmed_ms = Some(now);
                self.watch
                    .roots
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(root.to_string(), seen);
            }
            Err(e) => {
                metrics().alarm_failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(root, error = %e, "could not record the alarm");
            }
        }
    }

    /// Roots this store (and its clones) read from while they were not
    /// readable, with their state as seen (`expired`, `deleted`).
    pub fn unreadable_roots_read(&self) -> Vec<(String, String)> {
        let m = self.watch.roots.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<(String, String)> = m
            .iter()
            .filter(|(_, s)| !s.state.is_some_and(RootState::readable))
            .map(|(id, s)| {
                let state = s
                    .state
                    .map_or("deleted".into(), |s| format!("{s:?}").to_lowercase());
                (id.clone(), state)
            })
            .collect();
        out.sort();
        out
    }

    /// Writes an alarm for a read of `what` from `root` (seen in `state`).
    pub async fn record_alarm(&self, root: &str, state: &str, what: ReadOf<'_>) -> Result<Path> {
        let at_ms = self.env().now_ms();
        let (tenant, image, chunk) = match what {
            ReadOf::Chunk(c) => (None, None, Some(c.to_hex())),
            ReadOf::Image { tenant, name } => (Some(tenant.into()), Some(name.into()), None),
        };
        let a = Alarm {
            version: 1,
            root: root.into(),
            state: state.into(),
            reader: self.reader().into(),
            host: host_name(),
            pid: std::process::id(),
            at_ms,
            tenant,
            image,
            chunk,
        };
        let path = Path::from(format!(
            "alarms/{root}/{at_ms:013}-{}.json",
            self.env().unique_id()
        ));
        let doc = serde_json::to_vec(&a).map_err(|e| StoreError::Task(e.to_string()))?;
        self.put(&path, doc.into()).await?;
        Ok(path)
    }

    /// Open alarms, per root.
    pub async fn open_alarms(&self) -> Result<OpenAlarms> {
        let mut out = OpenAlarms::new();
        for m in self.list_all("alarms").await? {
            let parts: Vec<&str> = m.location.as_ref().split('/').collect();
            if let [_, root, _] = parts.as_slice() {
                *out.entry(root.to_string()).or_default() += 1;
            }
        }
        Ok(out)
    }

    /// The open alarms of `root`, parsed (unparsable ones are skipped).
    pub async fn alarms_of(&self, root: &str) -> Result<Vec<Alarm>> {
        let mut out = Vec::new();
        for m in self.list_all(&format!("alarms/{root}")).await? {
            if let Some(b) = self.get_opt(&m.location, ObjectKind::Document).await? {
                if let Ok(a) = serde_json::from_slice::<Alarm>(&b) {
                    out.push(a);
                }
            }
        }
        Ok(out)
    }

    /// Acknowledges every open alarm of `root` (moves them to
    /// `alarms-acked/<root>/`). Returns how many.
    pub async fn ack_alarms(&self, root: &str) -> Result<usize> {
        crate::roots::check_root_id(root)?;
        let open = self.list_all(&format!("alarms/{root}")).await?;
        for m in &open {
            let Some(file) = m.location.filename() else {
                continue;
            };
            let to = Path::from(format!("alarms-acked/{root}/{file}"));
            self.object_store()
                .copy(&m.location, &to)
                .await
                .map_err(|source| StoreError::Backend {
                    op: "copy",
                    path: m.location.to_string(),
                    source,
                })?;
            self.delete(&m.location).await?;
        }
        Ok(open.len())
    }
}
