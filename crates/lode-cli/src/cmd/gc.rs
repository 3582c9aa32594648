//! `lode gc [--store URL] [--rotate-after DUR] [--retire-after DUR]
//! [--expire-after DUR] [--dry-run] [--json] [--ack-alarm ROOT]`

use super::common::{key_provider, open_store, runtime, StoreArgs};
use crate::units::{human, parse_duration};
use anyhow::Result;
use lode_store::{gc_pass, GcOptions, GcReport};
use std::time::Duration;

/// Arguments of `lode gc`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    store: StoreArgs,
    /// Rotate the active root when it is older than this; a new root starts
    /// the migration that frees what the old one holds (`never`: only
    /// `lode root rotate` rotates).
    #[arg(long, value_parser = parse_rotate, default_value = "7d")]
    rotate_after: RotateAfter,
    /// Keep a retired root with no live image this long before it expires
    /// (covers agents still serving its manifests).
    #[arg(long, value_parser = parse_duration, default_value = "1d")]
    retire_after: Duration,
    /// Keep an expired root this long before its chunks are deleted (reads
    /// from it raise alarms, which halt deletion).
    #[arg(long, value_parser = parse_duration, default_value = "1d")]
    expire_after: Duration,
    /// Report what a pass would do; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Acknowledge the open alarms of ROOT first (repeatable), which lets
    /// deletion resume once no alarm is open.
    #[arg(long, value_name = "ROOT")]
    ack_alarm: Vec<String>,
    /// Length of the GC lease (renewed while the pass runs).
    #[arg(long, value_parser = parse_duration, default_value = "60s")]
    lease: Duration,
    /// Store requests in flight at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
}

/// `--rotate-after`: a duration, or `never`.
#[derive(Clone, Copy, Debug)]
struct RotateAfter(Option<Duration>);

fn parse_rotate(s: &str) -> Result<RotateAfter, String> {
    match s {
        "never" => Ok(RotateAfter(None)),
        _ => parse_duration(s).map(|d| RotateAfter(Some(d))),
    }
}

/// Runs one `lode gc` pass.
pub fn run(args: Args) -> Result<()> {
    let store = open_store(args.store.store.as_deref())?;
    let opts = GcOptions {
        rotate_after: args.rotate_after.0,
        retire_after: args.retire_after,
        expire_after: args.expire_after,
        dry_run: args.dry_run,
        ack_alarms: args.ack_alarm.clone(),
        lease: args.lease,
        concurrency: args.concurrency,
        holder: None,
    };
    let report = runtime()?.block_on(gc_pass(&store, key_provider(), &opts))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    Ok(())
}

fn print_report(r: &GcReport) {
    let would = if r.dry_run { "would " } else { "" };
    if r.dry_run {
        println!("dry run: nothing changed");
    } else if let Some(t) = r.lease_token {
        println!("lease: held with fencing token {t}");
    }
    if r.acknowledged_alarms > 0 {
        println!("alarms: {would}acknowledge {}", r.acknowledged_alarms);
    }
    if let Some(root) = &r.created_root {
        println!("rotate: {would}create active root {root}");
    }
    for root in &r.retired_roots {
        println!("retire: {would}retire {root}");
    }
    if r.fenced_intents > 0 {
        println!(
            "fence: {} pushes in flight into retired roots",
            r.fenced_intents
        );
    }
    println!(
        "live: {} images ({} outside the active root); {} pins, {} pinned versions kept in place",
        r.live_images, r.to_migrate, r.pins, r.pinned_versions
    );
    for b in &r.broken_images {
        println!("broken: {}/{}: {}", b.tenant, b.name, b.problem);
    }
    let m = &r.migration;
    if !r.dry_run && r.to_migrate > 0 {
        println!(
            "migrate: {} images moved, {} chunks re-encrypted ({}), {} chunk references shared",
            m.images,
            m.chunks_reencrypted,
            human(m.bytes_reencrypted),
            m.chunks_shared
        );
    }
    for p in &r.not_migrated {
        println!("not migrated: {}/{}: {}", p.tenant, p.name, p.problem);
    }
    for root in &r.expired_roots {
        println!("expire: {would}expire {root}");
    }
    for d in &r.deleted_roots {
        println!(
            "delete: {would}delete {}{}: {} objects, {}",
            if d.orphan {
                "orphaned prefix "
            } else {
                "root "
            },
            d.root,
            d.objects,
            human(d.bytes)
        );
    }
    if r.swept.manifests + r.swept.working_sets > 0 {
        println!(
            "sweep: {} unreferenced manifests, {} working sets deleted ({})",
            r.swept.manifests,
            r.swept.working_sets,
            human(r.swept.bytes)
        );
    }
    for (root, n) in &r.open_alarms {
        println!("ALARM: {n} unacknowledged read(s) from root {root}; acknowledge with `lode gc --ack-alarm {root}`");
    }
    if r.deletion_halted {
        println!("deletion halted while alarms are open");
    }
    for root in &r.roots {
        println!(
            "root {} {:?}: {} live images",
            root.id, root.state, root.live_images
        );
    }
    println!(
        "requests: {} ({} GET, {} HEAD, {} PUT, {} LIST calls / {} listed, {} deleted), {:.2} s",
        r.requests.requests(),
        r.requests.gets,
        r.requests.heads,
        r.requests.puts,
        r.requests.lists,
        r.requests.listed,
        r.requests.deletes,
        r.seconds
    );
}
