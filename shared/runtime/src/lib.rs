//! The runtime the monolith and every extracted service share: configuration, telemetry,
//! per-module databases, the HTTP host with probes and graceful shutdown. A service's
//! `main` is a few lines on top of this crate.

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
pub mod scram;
pub mod telemetry;
pub mod tls;
mod validation;

/// Every binary built on the runtime (the monolith, an extracted service) and every test
/// allocates with jemalloc, whose background thread purges what is no longer used: glibc's
/// allocator keeps what a burst of requests allocated long after it ended.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

pub use config::Settings;
pub use db::ModuleDb;
pub use host::{Application, Hooks};
pub use module::{BackgroundTask, Module, ModuleContext, StartedModule};
pub use validation::flatten_validation_errors;
