//! `cargo xtask <command>`: the project's developer commands, in Rust so they run wherever
//! cargo does. The binary is `main.rs`; this library also serves the tests.

mod bench;
mod boundaries;
mod extract;
mod harness;
mod hot_code;
mod move_data;
pub mod mutants;
mod progress;
pub mod scratch;
mod soak;
mod templates;
mod tidy;

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
    /// Check the module boundaries (crates, source, migrations) and print the module map.
    Boundaries,
    /// Turn a module into a service of its own (code, configuration, deploy files).
    Extract(extract::Args),
    /// Bring an extracted module back into the monolith.
    Inline(extract::Args),
    /// Move a module's data between the monolith's database and its service's.
    MoveData(move_data::Args),
    /// Measure our service beside its peers under the same load: reads, placements, the
    /// whole journey; CPU and memory (loopback only; bounded in time).
    Bench(bench::BenchArgs),
    /// Run the order journey under sustained load and injected faults, then audit every
    /// module's data (loopback only; bounded; exits non-zero naming each failed check).
    Soak(Box<soak::SoakArgs>),
    /// Apply each named mutation of xtask/mutations.toml to a scratch copy and check that
    /// its tests fail (exits non-zero naming every mutation that survived).
    Mutants(mutants::Args),
    /// Profile the release binary through the order journey (valgrind's callgrind) and
    /// write app/hot-code.ld, which lays the code it runs out together (less of it
    /// resident).
    HotCode(hot_code::Args),
}

/// The root of the workspace the command runs in: the nearest folder, from the current
/// one up, whose `Cargo.toml` declares `[workspace]`. (Not where this binary was built:
/// it may run in a copy of the workspace.)
pub(crate) fn workspace_root() -> PathBuf {
    let start = std::env::current_dir().unwrap_or_default();
    start
        .ancestors()
        .find(|dir| {
            std::fs::read_to_string(dir.join("Cargo.toml"))
                .is_ok_and(|text| text.lines().any(|l| l.trim() == "[workspace]"))
        })
        .map(PathBuf::from)
        .unwrap_or(start)
}

/// Parses the command line and runs the command.
pub fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Boundaries => boundaries::run(&workspace_root()),
        Command::Extract(args) => extract::extract(&workspace_root(), &args),
        Command::Inline(args) => extract::inline(&workspace_root(), &args),
        Command::MoveData(args) => move_data::run(&workspace_root(), &args),
        Command::Bench(args) => {
            // The idle connections it holds and the load's, each a descriptor here; the
            // servers it starts inherit the raised limit too.
            runtime::host::raise_open_file_limit();
            bench::run(args)
        }
        Command::Soak(args) => soak::run(*args),
        Command::Mutants(args) => mutants::run(&workspace_root(), &args),
        Command::HotCode(args) => hot_code::run(&workspace_root(), &args),
    }
}
