//! The monolith's integration tests: one binary, several files.

mod access;
mod basics;
mod connections;
mod dead_letters_cli;
mod delivery;
mod fuzz;
mod hardening;
mod journey;
mod jwks;
mod layout;
mod metrics;
mod openapi;
mod pg_passwords;
mod shop;
mod startup;
mod statistics;
