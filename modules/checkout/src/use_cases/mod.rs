//! Checkout's use cases, one per file, each with its own error type.

pub(crate) mod authorize_payments;
pub(crate) mod cancel_order;
pub(crate) mod get_order;
pub(crate) mod place_order;
pub(crate) mod price_list;
pub(crate) mod shipment_progress;
pub(crate) mod stock_outcome;
pub(crate) mod watch_orders;
