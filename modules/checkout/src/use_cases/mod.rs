//! Checkout's use cases, one per file, each with its own error type.

pub(crate) mod cancel_order;
pub(crate) mod get_order;
pub(crate) mod place_order;
pub(crate) mod price_list;
pub(crate) mod shipment_progress;
pub(crate) mod stock_outcome;
pub(crate) mod watch_orders;

/// An order's lines as its events carry them (`order_placed`, `order_confirmed`).
pub(crate) fn event_lines(order: &crate::domain::Order) -> Vec<contracts::checkout::OrderLineV1> {
    order
        .lines
        .iter()
        .map(|l| contracts::checkout::OrderLineV1 {
            sku: l.sku.to_string(),
            quantity: l.quantity.get(),
            unit_price_minor: l.unit_price.minor(),
        })
        .collect()
}
