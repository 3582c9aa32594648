//! `lode`: start VMs from container images loaded on demand.

mod cmd;
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Servers log warnings by default; one-shot commands keep stderr to their
    // single result or error line unless LODE_LOG asks for more.
    let default = match cli.command {
        Command::Agent(_) | Command::CacheNode(_) => "warn",
        _ => "off",
    };
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
        Command::Agent(args) => cmd::agent::run(args),
        Command::Cat(args) => cmd::cat::run(args),
        Command::Attach(args) => cmd::volumes::attach(args),
        Command::Detach(args) => cmd::volumes::detach(args),
        Command::Volumes(args) => cmd::volumes::volumes(args),
        Command::CacheNode(args) => cmd::cache_node::run(args),
        Command::Vm(args) => cmd::vm::run(args),
        Command::Run(args) => match cmd::run::run(args) {
            Ok(status) => return ExitCode::from(status.clamp(0, 255) as u8),
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
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
            let msg = msg.replace('\n', " ");
            eprintln!("lode: error: {msg}");
            ExitCode::FAILURE
        }
    }
}
