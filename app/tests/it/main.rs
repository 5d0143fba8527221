//! The monolith's integration tests: one binary, several files.

mod basics;
mod dead_letters_cli;
mod delivery;
mod journey;
mod metrics;
mod shop;
mod startup;
