//! Fulfillment booted alone: its events against a recording bus, its shipments over HTTP.

mod events;
