//! `cargo xtask <command>`: the project's developer commands, in Rust so they run wherever
//! cargo does.

mod bench;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Developer commands for the shop workspace")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the workspace's crates and what each one depends on inside the workspace.
    Crates,
    /// Measure the order journey under load on PostgreSQL (loopback only).
    Bench(bench::BenchArgs),
}

/// The workspace's root folder (where the top `Cargo.toml` is).
pub(crate) fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Crates => crates(),
        Command::Bench(args) => {
            if !args.no_build {
                bench::build_release(&["app"])?;
            }
            let runtime = tokio::runtime::Runtime::new()?;
            let report = runtime.block_on(bench::monolith(&args))?;
            bench::print(&[report]);
            Ok(())
        }
    }
}

fn crates() -> anyhow::Result<()> {
    let output =
        std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["metadata", "--format-version", "1", "--no-deps"])
            .output()?;
    anyhow::ensure!(output.status.success(), "cargo metadata failed");
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let packages = metadata["packages"].as_array().cloned().unwrap_or_default();
    let names: Vec<&str> = packages.iter().filter_map(|p| p["name"].as_str()).collect();
    for package in &packages {
        let deps: Vec<&str> = package["dependencies"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|d| d["kind"].is_null())
            .filter_map(|d| d["name"].as_str())
            .filter(|d| names.contains(d))
            .collect();
        eprintln!(
            "{} -> {}",
            package["name"].as_str().unwrap_or("?"),
            deps.join(", ")
        );
    }
    Ok(())
}
