//! The only place in fulfillment that touches sea-orm.

pub(crate) mod cancelled_orders;
pub(crate) mod shipments;
