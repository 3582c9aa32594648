//! One garbage-collection pass: advances the root life cycle one step.
//!
//! ```text
//! lease    take gc/lease.json (fencing token N) — or, for a dry run, nothing
//! alarms   acknowledge the roots asked for; note open alarms
//! rotate   a new active root when the newest is older than rotate_after
//!          (or none takes pushes); retire older active roots (closing,
//!          fence their intents, retired); fence leftover intents of
//!          retired and expired roots
//! scan     every pointer, every live manifest, then every pin: live
//!          images and pinned versions per root
//! migrate  every live image outside the active root into it
//! expire   retired roots with no live image, retired for ≥ retire_after
//! delete   (no open alarm anywhere) expired roots with no live image,
//!          expired for ≥ expire_after: objects, then the document;
//!          document-less root prefixes; unreferenced manifests of roots
//!          that take no pushes; orphaned working sets
//! release  the lease
//! ```
//! Each step is idempotent and each pass moves a root at most one state, so
//! a killed pass is finished by the next, and repeated passes on a quiet
//! store converge to the live set (see `docs/format.md`, section 4).

use crate::counting::{Counting, RequestCounter, RequestCounts};
use crate::error::Result;
use crate::lease::Lease;
use crate::migrate::{MigrationStats, Migrator};
use crate::publish::Outcome;
use crate::roots::{RootInfo, RootState};
use crate::scan::ImageProblem;
use crate::store::Store;
use crate::sweep::{DeletedRoot, SweptMetadata};
use lode_chunk::KeyProvider;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Options of a pass.
#[derive(Clone, Debug)]
pub struct GcOptions {
    /// Rotate when the active root is older than this (`None`: only when no
    /// root takes pushes).
    pub rotate_after: Option<Duration>,
    /// Grace of a retired root with no live image before it expires: covers
    /// agents still serving manifests of the root.
    pub retire_after: Duration,
    /// Grace of an expired root before it is deleted: reads from it raise
    /// alarms, which halt deletion.
    pub expire_after: Duration,
    /// Change nothing; report what a pass would do.
    pub dry_run: bool,
    /// Roots whose open alarms to acknowledge first.
    pub ack_alarms: Vec<String>,
    /// Length of the lease (renewed as the pass goes).
    pub lease: Duration,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// Name of this collector in the lease (default: host, pid, id).
    pub holder: Option<String>,
}

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions {
            rotate_after: None,
            retire_after: Duration::from_secs(24 * 3600),
            expire_after: Duration::from_secs(24 * 3600),
            dry_run: false,
            ack_alarms: Vec::new(),
            lease: Duration::from_secs(60),
            concurrency: 16,
            holder: None,
        }
    }
}

/// A root's state after the pass.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct RootSummary {
    /// Root id.
    pub id: String,
    /// State.
    pub state: RootState,
    /// Live images with chunks in it.
    pub live_images: usize,
}

/// What a pass did (or, dry, would do).
#[derive(Clone, Debug, Default, Serialize)]
pub struct GcReport {
    /// Nothing was changed.
    pub dry_run: bool,
    /// Fencing token of the lease held.
    pub lease_token: Option<u64>,
    /// Alarms acknowledged.
    pub acknowledged_alarms: usize,
    /// Root created by a rotation.
    pub created_root: Option<String>,
    /// Roots retired.
    pub retired_roots: Vec<String>,
    /// Pushes in flight fenced in roots that take no pushes.
    pub fenced_intents: usize,
    /// Live images found.
    pub live_images: usize,
    /// Pins found.
    pub pins: usize,
    /// Versions kept only by pins (they keep their root; not migrated).
    pub pinned_versions: usize,
    /// Live images whose manifest is missing or unreadable.
    pub broken_images: Vec<ImageProblem>,
    /// Images that need migrating (outside the active root).
    pub to_migrate: usize,
    /// Migration counts.
    pub migration: MigrationStats,
    /// Images not migrated this pass, and why.
    pub not_migrated: Vec<ImageProblem>,
    /// Roots expired.
    pub expired_roots: Vec<String>,
    /// Roots (and orphaned prefixes) deleted.
    pub deleted_roots: Vec<DeletedRoot>,
    /// Unreferenced manifests and working sets deleted.
    pub swept: SweptMetadata,
    /// Stale staging files of killed writers removed (local store only).
    pub staging_files: usize,
    /// Open alarms per root (after acknowledgement).
    pub open_alarms: BTreeMap<String, usize>,
    /// True if open alarms stopped every deletion.
    pub deletion_halted: bool,
    /// Roots after the pass.
    pub roots: Vec<RootSummary>,
    /// Requests the pass made.
    pub requests: RequestCounts,
    /// Wall time.
    pub seconds: f64,
}

/// Age after which a local store's staging file belongs to a dead writer
/// (a live write takes seconds at most).
const STAGING_AGE: Duration = Duration::from_secs(15 * 60);

fn holder_name(store: &Store) -> String {
    format!(
        "{}:{}:{}",
        crate::alarm::host_name(),
        std::process::id(),
        store.env().unique_id()
    )
}

fn ms(d: Duration) -> u64 {
    d.as_millis().min(u128::from(u64::MAX)) as u64
}

/// Runs one pass over `store`. Tenant keys (`keys`) are needed to migrate;
/// without a tenant's key its images stay where they are (reported) and
/// their roots are kept.
pub async fn gc_pass(
    store: &Store,
    keys: Arc<dyn KeyProvider>,
    opts: &GcOptions,
) -> Result<GcReport> {
    let start = Instant::now();
    let counter = Arc::new(RequestCounter::default());
    let s = store
        .with_object_store(Arc::new(Counting::new(
            store.object_store().clone(),
            counter.clone(),
        )))
        .with_reader("gc");
    let mut report = GcReport {
        dry_run: opts.dry_run,
        ..GcReport::default()
    };
    let mut lease = if opts.dry_run {
        None
    } else {
        let holder = opts.holder.clone().unwrap_or_else(|| holder_name(&s));
        Some(s.acquire_lease(&holder, ms(opts.lease)).await?)
    };
    report.lease_token = lease.as_ref().map(Lease::token);
    let result = run(&s, keys, opts, &mut lease, &mut report).await;
    if let Some(l) = lease {
        // A pass that failed may have lost the lease; releasing is best effort then.
        let released = l.release().await;
        if result.is_ok() {
            released?;
        }
    }
    result?;
    report.requests = counter.snapshot();
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

async fn keep(lease: &mut Option<Lease>) -> Result<u64> {
    match lease {
        Some(l) => {
            l.keep().await?;
            Ok(l.token())
        }
        None => Ok(0),
    }
}

async fn run(
    s: &Store,
    keys: Arc<dyn KeyProvider>,
    opts: &GcOptions,
    lease: &mut Option<Lease>,
    report: &mut GcReport,
) -> Result<()> {
    let dry = opts.dry_run;
    for root in &opts.ack_alarms {
        report.acknowledged_alarms += if dry {
            s.open_alarms().await?.get(root).copied().unwrap_or(0)
        } else {
            keep(lease).await?;
            s.ack_alarms(root).await?
        };
    }

    // Rotate, retire, fence.
    let roots = s.roots().await?;
    let now = s.env().now_ms();
    let newest = roots.iter().rev().find(|r| r.takes_pushes()).cloned();
    let rotate = match &newest {
        None => true,
        Some(r) => opts
            .rotate_after
            .is_some_and(|d| now.saturating_sub(r.since_ms()) >= ms(d)),
    };
    let target: Option<RootInfo> = if rotate {
        if dry {
            report.created_root = Some("(new root)".into());
            None
        } else {
            keep(lease).await?;
            let r = s.new_root(keys.as_ref()).await?;
            report.created_root = Some(r.id.clone());
            Some(r)
        }
    } else {
        newest
    };
    let keep_id = target.as_ref().map_or(String::from("~"), |r| r.id.clone());
    for r in &roots {
        // Older active roots, and any root whose retirement a crash interrupted.
        if r.state == RootState::Active && r.id != keep_id && (r.id < keep_id || r.closing) {
            if dry {
                report.retired_roots.push(r.id.clone());
            } else {
                let token = keep(lease).await?;
                if let Some(r) = s.retire_root(&r.id, token).await? {
                    report.retired_roots.push(r.id);
                }
            }
        }
    }
    if !dry {
        for r in &roots {
            if matches!(r.state, RootState::Retired | RootState::Expired) {
                keep(lease).await?;
                report.fenced_intents += s.fence_intents(&r.id).await?;
            }
        }
    }

    // Every decision below about a root uses its state from before the scan:
    // a root retired by then can have received no publish the scan missed
    // (retirement fences publishes in flight), which a root retired later
    // (by a concurrent `lode root rotate`) may have.
    let before = s.list_roots().await?;

    // Scan and migrate.
    let live = s.scan_live(&keep_id, opts.concurrency).await?;
    report.live_images = live.images.len();
    report.pins = live.pins;
    report.pinned_versions = live.pinned.len();
    report.broken_images = live.broken.clone();
    let mut by_root = live.by_root();
    report.to_migrate = live.images.iter().filter(|i| i.root != keep_id).count();
    if let (Some(target), false) = (target, dry) {
        let mut m = Migrator::new(s, keys.clone(), target, opts.concurrency)?;
        for img in live.images.iter().filter(|i| i.root != keep_id) {
            keep(lease).await?;
            let problem = |p: String| ImageProblem {
                tenant: img.tenant.clone(),
                name: img.name.clone(),
                problem: p,
            };
            match m.migrate(img).await {
                Ok(Outcome::Published { .. }) => {
                    if let Some(n) = by_root.get_mut(&img.root) {
                        *n -= 1;
                    }
                }
                Ok(Outcome::Superseded) => report
                    .not_migrated
                    .push(problem("changed while it was migrated; next pass".into())),
                Ok(Outcome::Retarget) => report
                    .not_migrated
                    .push(problem("the active root closed; next pass".into())),
                Err(
                    e @ (crate::StoreError::LeaseLost { .. } | crate::StoreError::Backend { .. }),
                ) => return Err(e),
                Err(e) => report.not_migrated.push(problem(e.to_string())),
            }
        }
        report.migration = m.stats;
    }
    by_root.retain(|_, n| *n > 0);
    // A root holding a broken image's manifest is unknown: nothing is known
    // to hold it, so it does not keep a root alive.

    // Expire and delete.
    let alarms = s.open_alarms().await?;
    report.deletion_halted = !alarms.is_empty() && !crate::rule_broken("ignore-alarms");
    report.open_alarms = alarms;
    let now = s.env().now_ms();
    for (r, _) in &before.roots {
        let holds_live = by_root.contains_key(&r.id) && !crate::rule_broken("expire-live-roots");
        let age = now.saturating_sub(r.since_ms());
        match r.state {
            RootState::Retired if !holds_live && age >= ms(opts.retire_after) => {
                if dry {
                    report.expired_roots.push(r.id.clone());
                    continue;
                }
                let token = keep(lease).await?;
                let moved = s
                    .update_root(&r.id, token, |cur| {
                        (cur.state == RootState::Retired).then(|| RootInfo {
                            state: RootState::Expired,
                            changed_ms: now,
                            ..cur.clone()
                        })
                    })
                    .await?;
                if moved.is_some() {
                    report.expired_roots.push(r.id.clone());
                }
            }
            RootState::Expired
                if !holds_live && !report.deletion_halted && age >= ms(opts.expire_after) =>
            {
                keep(lease).await?;
                report
                    .deleted_roots
                    .push(s.delete_root(&r.id, lease, false).await?);
            }
            RootState::Expired if holds_live => tracing::warn!(
                root = %r.id,
                "an expired root holds live images or pinned versions: it is kept"
            ),
            _ => {}
        }
    }
    if !report.deletion_halted {
        for o in &before.orphans {
            let d = s.delete_root(o, lease, true).await?;
            if d.objects > 0 {
                report.deleted_roots.push(d);
            }
        }
        // Manifests of roots retired before the scan, or deleted, can no
        // longer be published: those the scan found unreferenced are garbage.
        let now_ids: BTreeSet<String> = s.roots().await?.into_iter().map(|r| r.id).collect();
        let before_ids: BTreeSet<&str> = before.roots.iter().map(|(r, _)| r.id.as_str()).collect();
        let closed: BTreeSet<String> = before
            .roots
            .iter()
            .filter(|(r, _)| matches!(r.state, RootState::Retired | RootState::Expired))
            .map(|(r, _)| r.id.clone())
            .collect();
        let closed = |root: &str| {
            closed.contains(root) || (!before_ids.contains(root) && !now_ids.contains(root))
        };
        report.swept = s
            .sweep_metadata(&live, closed, now, ms(opts.retire_after), lease)
            .await?;
        if let (Some(dir), false) = (crate::open::local_dir(s.url()), dry) {
            report.staging_files =
                tokio::task::spawn_blocking(move || crate::local::sweep_staging(&dir, STAGING_AGE))
                    .await
                    .map_err(|e| crate::StoreError::Task(e.to_string()))?;
        }
    }
    report.roots = s
        .roots()
        .await?
        .into_iter()
        .map(|r| RootSummary {
            live_images: by_root.get(&r.id).copied().unwrap_or(0),
            id: r.id,
            state: r.state,
        })
        .collect();
    Ok(())
}
