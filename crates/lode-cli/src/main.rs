//! `lode`: start VMs from container images loaded on demand.

mod cmd;
mod shutdown;
mod units;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// lode: flatten OCI images into deterministic ext4 block images and serve them on demand.
#[derive(Parser)]
#[command(name = "lode", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Flatten an OCI image into one deterministic, layer-stable ext4 image.
    Flatten(cmd::flatten::Args),
    /// Chunk, encrypt and upload an image to the chunk store (dedup: only new chunks).
    Push(cmd::push::Args),
    /// Rebuild an image from the chunk store, verifying every chunk.
    Pull(cmd::pull::Args),
    /// Show an image's manifest summary.
    Inspect(cmd::inspect::Args),
    /// Run the host agent: volumes served on demand over NBD or vhost-user-blk (host cache, copy-on-write).
    Agent(cmd::agent::Args),
    /// Attach an image as a volume of a running agent; prints {"id", "via", "socket", "export", "size"}.
    Attach(cmd::volumes::AttachArgs),
    /// Detach a volume of a running agent (its requests complete, its socket goes).
    Detach(cmd::volumes::DetachArgs),
    /// List a running agent's volumes with their counters.
    Volumes(cmd::volumes::VolumesArgs),
    /// List the images clients read on this host, with how much of it the host's caches still hold.
    Warm(cmd::volumes::WarmArgs),
    /// Show or change a running agent's cache-fleet membership.
    Fleet(cmd::fleet::Args),
    /// Write one file of an image to stdout, loading only the chunks it needs.
    Cat(cmd::cat::Args),
    /// Run an AZ cache-fleet node that stores erasure-coded stripes.
    CacheNode(cmd::cache_node::Args),
    /// Boot a micro-VM from an image served lazily and run a command in it.
    Run(cmd::run::Args),
    /// Prepare the micro-VM's guest kernel and initramfs.
    Vm(cmd::vm::Args),
    /// Manage chunk-store roots (generations with their own salt).
    Root(cmd::root::Args),
    /// Remove an image (its pointer and working set; `lode gc` frees its chunks).
    Rm(cmd::rm::Args),
    /// List a tenant's images with size, stored bytes, version and root.
    Images(cmd::images::Args),
    /// One garbage-collection pass: rotate, migrate live images, expire and delete old roots.
    Gc(cmd::gc::Args),
    /// Make or revoke a tenant's access keys for the Lambda API.
    Credentials(cmd::credentials::Args),
    /// Serve the Lambda API (functions in the store; invocations go to the managers).
    Frontend(cmd::frontend::Args),
    /// Run a worker manager: place invocations on warm sandboxes and workers with room.
    Manager(cmd::manager::Args),
    /// Run agent, manager, one worker and the Lambda API frontend in one process.
    Serve(cmd::serve::Args),
    /// Run function invocations in micro-VM sandboxes on this host (for a worker manager).
    Worker(cmd::worker::Args),
    /// Relay one guest connection to a sandbox's Runtime API (started by QEMU).
    #[command(hide = true)]
    RuntimeRelay(cmd::worker::RelayArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Servers log warnings by default; one-shot commands keep stderr to their
    // single result or error line unless LODE_LOG asks for more.
    let default = match cli.command {
        Command::Agent(_)
        | Command::CacheNode(_)
        | Command::Frontend(_)
        | Command::Manager(_)
        | Command::Worker(_)
        | Command::Serve(_) => "warn",
        _ => "off",
    };
    cmd::common::set_command(match &cli.command {
        Command::Flatten(_) => "flatten",
        Command::Push(_) => "push",
        Command::Pull(_) => "pull",
        Command::Inspect(_) => "inspect",
        Command::Agent(_) => "agent",
        Command::Cat(_) => "cat",
        Command::CacheNode(_) => "cache-node",
        Command::Run(_) => "run",
        Command::Vm(_) => "vm",
        Command::Root(_) => "root",
        Command::Rm(_) => "rm",
        Command::Images(_) => "images",
        Command::Gc(_) => "gc",
        Command::Attach(_) => "attach",
        Command::Detach(_) => "detach",
        Command::Volumes(_) => "volumes",
        Command::Warm(_) => "warm",
        Command::Fleet(_) => "fleet",
        Command::Credentials(_) => "credentials",
        Command::Frontend(_) => "frontend",
        Command::Manager(_) => "manager",
        Command::Serve(_) => "serve",
        Command::Worker(_) => "worker",
        Command::RuntimeRelay(_) => "runtime-relay",
    });
    let filter = tracing_subscriber::EnvFilter::try_from_env("LODE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = match cli.command {
        Command::Flatten(args) => cmd::flatten::run(args),
        Command::Push(args) => cmd::push::run(args),
        Command::Pull(args) => cmd::pull::run(args),
        Command::Inspect(args) => cmd::inspect::run(args),
        Command::Root(args) => cmd::root::run(args),
        Command::Rm(args) => cmd::rm::run(args),
        Command::Images(args) => cmd::images::run(args),
        Command::Gc(args) => cmd::gc::run(args),
        Command::Credentials(args) => cmd::credentials::run(args),
        Command::Frontend(args) => cmd::frontend::run(args),
        Command::Manager(args) => cmd::manager::run(args),
        Command::Serve(args) => cmd::serve::run(args),
        Command::Agent(args) => cmd::agent::run(args),
        Command::Cat(args) => cmd::cat::run(args),
        Command::Attach(args) => cmd::volumes::attach(args),
        Command::Detach(args) => cmd::volumes::detach(args),
        Command::Volumes(args) => cmd::volumes::volumes(args),
        Command::Warm(args) => cmd::volumes::warm(args),
        Command::Fleet(args) => cmd::fleet::run(args),
        Command::CacheNode(args) => cmd::cache_node::run(args),
        Command::Vm(args) => cmd::vm::run(args),
        Command::Worker(args) => cmd::worker::run(args),
        Command::RuntimeRelay(args) => cmd::worker::relay(args),
        Command::Run(args) => match cmd::run::run(args) {
            Ok(status) => return ExitCode::from(status.clamp(0, 255) as u8),
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // A command stopped by SIGTERM or SIGINT exits as the shell expects.
            let code = match e.downcast_ref::<shutdown::Interrupted>() {
                Some(i) => ExitCode::from((128 + i.signal).clamp(0, 255) as u8),
                None => ExitCode::FAILURE,
            };
            // One line: the error and those of its causes it does not already quote.
            let mut msg = String::new();
            for cause in e.chain() {
                let c = cause.to_string();
                if !msg.contains(&c) {
                    if !msg.is_empty() {
                        msg.push_str(": ");
                    }
                    msg.push_str(&c);
                }
            }
            // Parts that echo input are escaped where they are made; this is
            // the last line of defence: nothing a terminal acts on is printed.
            let msg = lode_common::escape_controls(&msg.replace('\n', " ")).into_owned();
            eprintln!("lode: error: {msg}");
            code
        }
    }
}
