//! Event contracts: the envelope every event travels in, the versioned payloads, and who
//! consumes what. The monolith and every extracted service compile against this crate, so
//! both ends of a stream agree on the wire format.
//!
//! Rules: a wire name `<module>.<fact>.v<N>` never changes meaning and does
//! not depend on a Rust path; a breaking change is a new version published beside the old
//! one; every version has a JSON Schema and a golden sample under this crate, checked by
//! its tests, so a release can read every event the previous release wrote.

mod envelope;
mod registry;
mod traceparent;

pub mod catalog;
pub mod checkout;
pub mod fulfillment;

pub use envelope::{Cause, ContractError, Envelope};
pub use registry::{
    EVENT_TYPES, EventType, SUBSCRIPTIONS, Subscription, consumers_of, event_type_named,
    subscribers_of, subscriptions_of,
};
pub use traceparent::Traceparent;

/// A versioned event payload.
pub trait Event:
    serde::Serialize + serde::de::DeserializeOwned + schemars::JsonSchema + Send + Sync + 'static
{
    /// The wire name, `<module>.<fact>.v<N>`.
    const TYPE: &'static str;

    /// The ordering key: the aggregate whose events must stay in order.
    fn key(&self) -> String;

    /// Rules the types cannot express, checked when published and when consumed.
    fn validate(&self) -> Result<(), String> {
        Ok(())
    }
}

/// The module that publishes an event type: the part of its name before the first dot.
pub fn source_of(event_type: &str) -> &str {
    event_type.split('.').next().unwrap_or(event_type)
}

pub(crate) fn check_sku(field: &str, sku: &str) -> Result<(), String> {
    kernel::Sku::parse(sku)
        .map(|_| ())
        .map_err(|e| format!("{field}: {e}"))
}

pub(crate) fn check_currency(field: &str, currency: &str) -> Result<(), String> {
    kernel::Currency::parse(currency)
        .map(|_| ())
        .map_err(|e| format!("{field}: {e}"))
}

pub(crate) fn check_quantity(field: &str, quantity: i64) -> Result<(), String> {
    kernel::Quantity::new(quantity)
        .map(|_| ())
        .map_err(|e| format!("{field}: {e}"))
}

pub(crate) fn check_amount(field: &str, minor: i64) -> Result<(), String> {
    if (0..=kernel::Money::MAX_MINOR).contains(&minor) {
        Ok(())
    } else {
        Err(format!("{field}: {minor} is out of range"))
    }
}

pub(crate) fn check_not_empty<T>(field: &str, items: &[T]) -> Result<(), String> {
    if items.is_empty() {
        Err(format!("{field}: must not be empty"))
    } else {
        Ok(())
    }
}
