//! Fulfillment's use cases, one per file, each with its own error type (the handlers of
//! checkout's events answer with the consumer's `HandlerError`).

pub(crate) mod cancel_shipment;
pub(crate) mod create_shipments;
pub(crate) mod deliver_shipment;
pub(crate) mod dispatch_shipment;
pub(crate) mod get_shipment;
pub(crate) mod list_shipments;
