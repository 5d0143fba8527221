//! Checkout's business counters, in one place so their names and labels are written once.
//! Each is counted after the transaction that made the change committed: a rolled-back
//! change counts nothing.

use crate::domain::StatusReason;

/// Gives each family its help text, and each label value its series at zero, so a rate
/// over a reason that never happened yet reads 0 rather than nothing.
pub(crate) fn describe() {
    metrics::describe_counter!("checkout_orders_placed_total", "Orders placed");
    metrics::describe_counter!(
        "checkout_orders_confirmed_total",
        "Orders confirmed (stock held, payment approved)"
    );
    metrics::describe_counter!(
        "checkout_orders_rejected_total",
        "Orders rejected, by reason (out_of_stock, payment_declined)"
    );
    metrics::describe_counter!(
        "checkout_orders_cancelled_total",
        "Orders cancelled by their customer"
    );
    metrics::describe_gauge!(
        "checkout_orders_overdue",
        "Orders still pending past their deadline"
    );
    orders_placed(0);
    orders_confirmed(0);
    orders_cancelled(0);
    for reason in [StatusReason::OutOfStock, StatusReason::PaymentDeclined] {
        orders_rejected(reason, 0);
    }
}

pub(crate) fn orders_placed(n: u64) {
    metrics::counter!("checkout_orders_placed_total").increment(n);
}

pub(crate) fn orders_confirmed(n: u64) {
    metrics::counter!("checkout_orders_confirmed_total").increment(n);
}

pub(crate) fn orders_rejected(reason: StatusReason, n: u64) {
    metrics::counter!("checkout_orders_rejected_total", "reason" => reason.as_str()).increment(n);
}

pub(crate) fn orders_cancelled(n: u64) {
    metrics::counter!("checkout_orders_cancelled_total").increment(n);
}
