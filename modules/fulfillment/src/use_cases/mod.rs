//! Fulfillment's use cases.

pub(crate) mod orders;
pub(crate) mod shipments;
