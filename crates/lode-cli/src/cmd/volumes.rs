//! `lode attach`, `lode detach`, `lode volumes`, `lode warm`: a running
//! agent's volumes and the images its caches hold, through its control API.

use super::agent::control_path;
use super::common::runtime;
use crate::units::human;
use anyhow::{bail, Context, Result};
use lode_agent::control::{AttachRequest, Client};

/// Arguments of `lode attach`.
#[derive(clap::Args)]
pub struct AttachArgs {
    /// The image: `TENANT/NAME[@sha256:HEX]` (with a digest: exactly that
    /// manifest of the image, whatever was pushed since).
    image: String,
    /// Keep the volume's writes in the named overlay `ID` (it outlives the
    /// volume; attach it again to see them). Without it, writes are the
    /// volume's own and go with it at detach.
    #[arg(long, value_name = "ID")]
    overlay: Option<String>,
    /// Writable (copy-on-write); default read-only.
    #[arg(long)]
    rw: bool,
    /// How the VM reaches the disk: `nbd` or `vhost-user`.
    #[arg(long, default_value = "nbd", value_parser = ["nbd", "vhost-user"])]
    via: String,
    /// Give the volume's socket (mode 0600) to `UID[:GID]`: the user the VMM
    /// runs as (default: the caller's).
    #[arg(long, value_name = "UID[:GID]")]
    owner: Option<String>,
    /// The agent's control socket (default `$LODE_HOME/agent.sock`).
    #[arg(long, value_name = "PATH")]
    agent: Option<String>,
}

/// Arguments of `lode detach`.
#[derive(clap::Args)]
pub struct DetachArgs {
    /// Volume id (from `lode attach` or `lode volumes`).
    id: String,
    /// The agent's control socket (default `$LODE_HOME/agent.sock`).
    #[arg(long, value_name = "PATH")]
    agent: Option<String>,
}

/// Arguments of `lode volumes`.
#[derive(clap::Args)]
pub struct VolumesArgs {
    /// The agent's control socket (default `$LODE_HOME/agent.sock`).
    #[arg(long, value_name = "PATH")]
    agent: Option<String>,
    /// Print JSON (one array of volumes with their counters).
    #[arg(long)]
    json: bool,
}

/// Arguments of `lode warm`.
#[derive(clap::Args)]
pub struct WarmArgs {
    /// The agent's control socket (default `$LODE_HOME/agent.sock`).
    #[arg(long, value_name = "PATH")]
    agent: Option<String>,
    /// Print JSON (`GET /v1/images`'s list).
    #[arg(long)]
    json: bool,
}

/// Splits `TENANT/NAME`.
pub fn split_image(s: &str) -> Result<(String, String)> {
    match s.split_once('/') {
        Some((t, n)) if !t.is_empty() && !n.is_empty() && !n.contains('/') => {
            Ok((t.into(), n.into()))
        }
        _ => bail!("expected TENANT/NAME, got '{s}'"),
    }
}

/// Runs `lode attach`: prints `{"id", "via", "socket", "export", "size"}`.
pub fn attach(args: AttachArgs) -> Result<()> {
    let (name, digest) = match args.image.split_once('@') {
        Some((n, d)) => (n, Some(d.to_string())),
        None => (args.image.as_str(), None),
    };
    let (tenant, image) = split_image(name)?;
    let client = Client::new(control_path(args.agent.as_deref()));
    let req = AttachRequest {
        tenant,
        image,
        digest,
        overlay: args.overlay,
        rw: args.rw,
        via: Some(args.via),
        owner: args.owner,
    };
    let a = runtime()?
        .block_on(client.attach(&req))
        .with_context(|| format!("attaching {}", args.image))?;
    println!(
        "{}",
        serde_json::to_string(&a).context("printing the answer")?
    );
    Ok(())
}

/// Runs `lode detach`.
pub fn detach(args: DetachArgs) -> Result<()> {
    let client = Client::new(control_path(args.agent.as_deref()));
    let v = runtime()?
        .block_on(client.detach(&args.id))
        .with_context(|| format!("detaching {}", args.id))?;
    let c = v.counters.unwrap_or_default();
    eprintln!(
        "detached {} ({} {}): {} reads, {} writes, {} flushes, {} errors",
        v.id, v.via, v.export, c.reads, c.writes, c.flushes, c.errors
    );
    Ok(())
}

/// Runs `lode volumes`.
pub fn volumes(args: VolumesArgs) -> Result<()> {
    let client = Client::new(control_path(args.agent.as_deref()));
    let vols = runtime()?
        .block_on(client.volumes())
        .context("listing volumes")?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&vols).context("printing the list")?
        );
        return Ok(());
    }
    println!(
        "{:<17}  {:<10}  {:<3}  {:<28}  {:>9}  {:>8}  {:>8}  {:>6}  {:<9}  SOCKET",
        "ID", "VIA", "RW", "EXPORT", "SIZE", "READS", "WRITES", "ERRORS", "STATE"
    );
    for v in vols {
        let c = v.counters.clone().unwrap_or_default();
        println!(
            "{:<17}  {:<10}  {:<3}  {:<28}  {:>9}  {:>8}  {:>8}  {:>6}  {:<9}  {}",
            v.id,
            v.via,
            if v.rw { "rw" } else { "ro" },
            v.export,
            human(v.size),
            c.reads,
            c.writes,
            c.errors,
            v.state,
            v.socket.display()
        );
        if let Some(e) = &v.error {
            println!("    {e}");
        }
    }
    Ok(())
}

/// Runs `lode warm`: the images clients read on this host, most recently
/// used first, with how much of what they read the host's caches hold now.
pub fn warm(args: WarmArgs) -> Result<()> {
    let client = Client::new(control_path(args.agent.as_deref()));
    let images = runtime()?
        .block_on(client.images())
        .context("listing the images read on this host")?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&images).context("printing the list")?
        );
        return Ok(());
    }
    println!(
        "{:<28}  {:<19}  {:>8}  {:>8}  {:>9}",
        "EXPORT", "DIGEST", "READ", "RESIDENT", "RESIDENT%"
    );
    for i in images {
        let short = i.digest.get(..19).unwrap_or(&i.digest);
        let pct = if i.read_chunks == 0 {
            0.0
        } else {
            i.resident_chunks as f64 * 100.0 / i.read_chunks as f64
        };
        println!(
            "{:<28}  {:<19}  {:>8}  {:>8}  {:>8.1}%",
            format!("{}/{}", i.tenant, i.image),
            short,
            i.read_chunks,
            i.resident_chunks,
            pct
        );
    }
    Ok(())
}
