//! The host the monolith and every extracted service run on: configuration, telemetry,
//! per-module databases, buses and relays, the HTTP host with probes and graceful shutdown.
//! Only binaries and the test kit depend on it (a service's `main` is a few lines on top of this crate);
//! modules see the platform through `module_api` alone.

mod admin;
pub mod auth;
mod c_heap;
pub mod cli;
pub mod config;
pub mod db;
mod dead_letters_cli;
pub mod host;
pub mod http;
pub mod openapi;
pub mod probes;
pub mod prometheus;
pub mod scram;
pub mod statistics;
pub mod telemetry;
mod validation;

/// Every binary built on the runtime (the monolith, an extracted service) and every test
/// allocates with jemalloc (a module crate's own unit tests, which do not link the host, do not), whose background thread purges what is no longer used: glibc's
/// allocator keeps what a burst of requests allocated long after it ended.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
