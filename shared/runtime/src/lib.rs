//! The runtime the monolith and every extracted service share: configuration, telemetry,
//! per-module databases, the HTTP host with probes and graceful shutdown. A service's
//! `main` is a few lines on top of this crate.

/// Every binary built on this crate allocates with mimalloc. glibc's allocator kept what a
/// burst of load had freed (a process that peaked at 100 MiB stayed there when idle);
/// mimalloc gives emptied pages back to the system, and costs fewer instructions per
/// allocation (`tests/allocator.rs`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod admin;
pub mod auth;
pub mod cli;
pub mod config;
pub mod db;
mod dead_letters_cli;
pub mod host;
pub mod http;
pub mod module;
pub mod openapi;
pub mod probes;
pub mod prometheus;
pub mod telemetry;
mod validation;

pub use config::Settings;
pub use db::ModuleDb;
pub use host::{Application, Hooks};
pub use module::{BackgroundTask, Module, ModuleContext, StartedModule};
pub use validation::flatten_validation_errors;
