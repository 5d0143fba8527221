//! Checkout booted alone: its events against a recording bus, and its payments through the
//! HTTP provider adapter against a fake provider.

mod events;
mod payment;
