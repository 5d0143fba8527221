//! The monolith's integration tests: one binary, several files.

mod basics;
mod delivery;
mod journey;
mod metrics;
mod shop;
