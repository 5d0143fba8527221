//! Catalog booted alone: its HTTP API, and its events against a recording bus.

mod api;
mod events;
