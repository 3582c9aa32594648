//! `lode fleet show|set`: a running agent's cache-fleet membership, through
//! its control API (`GET`/`PUT /v1/fleet`).

use super::agent::control_path;
use super::common::runtime;
use anyhow::{Context, Result};
use lode_agent::control::{Client, FleetInfo};

/// Arguments of `lode fleet`.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(clap::Subcommand)]
enum What {
    /// Print the agent's cache nodes, one a line (`--json`: `{"nodes": [...]}`).
    Show {
        /// The agent's control socket (default `$LODE_HOME/agent.sock`).
        #[arg(long, value_name = "PATH")]
        agent: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Replace the agent's node list (as `--cache-nodes` takes it:
    /// `HOST:PORT,...` or `memcached://HOST:PORT,...`); prints the nodes added
    /// and removed. Rendezvous placement moves about 1/N of the stripes per
    /// node added or removed; read repair rewrites them on their new nodes.
    /// The agent's own user and root only.
    Set {
        /// The new node list.
        nodes: String,
        /// The agent's control socket (default `$LODE_HOME/agent.sock`).
        #[arg(long, value_name = "PATH")]
        agent: Option<String>,
        /// Print JSON (`{"nodes", "added", "removed"}`).
        #[arg(long)]
        json: bool,
    },
}

/// Runs `lode fleet`.
pub fn run(args: Args) -> Result<()> {
    let rt = runtime()?;
    let (info, json, set) = match args.what {
        What::Show { agent, json } => {
            let client = Client::new(control_path(agent.as_deref()));
            let info = rt
                .block_on(client.fleet())
                .context("reading the agent's fleet")?;
            (info, json, false)
        }
        What::Set { nodes, agent, json } => {
            let client = Client::new(control_path(agent.as_deref()));
            let info = rt
                .block_on(client.set_fleet(&nodes))
                .with_context(|| format!("setting the agent's fleet to '{nodes}'"))?;
            (info, json, true)
        }
    };
    if json {
        println!(
            "{}",
            serde_json::to_string(&info).context("printing the answer")?
        );
    } else {
        print_info(&info, set);
    }
    Ok(())
}

fn print_info(info: &FleetInfo, set: bool) {
    for n in &info.nodes {
        println!("{n}");
    }
    if set {
        eprintln!(
            "fleet now {} node(s); added: {}; removed: {}",
            info.nodes.len(),
            list(&info.added),
            list(&info.removed)
        );
    }
}

fn list(v: &[String]) -> String {
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}
