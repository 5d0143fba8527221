//! An order's state machine, as one table: [`transition`] says, for an order's status and
//! what happens to it (an answer of catalog or of the provider, a customer's cancel,
//! fulfillment's news), where the order goes. Every move the order journey allows is a
//! row; anything else is ignored (duplicates and late events change nothing) or, for a
//! customer's request, refused.
//!
//! ```text
//! pending ─stock held─▶ pending, payment due ─approved─▶ confirmed ─dispatched─▶ shipped ─delivered─▶ delivered
//! pending ─stock refused, or payment declined─▶ rejected
//! pending, confirmed ─cancel─▶ cancelled ─dispatched─▶ shipped, its stock held again
//! confirmed ─delivered─▶ delivered (delivered before the dispatch was heard of)
//! ```

use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum OrderStatus {
    /// Placed; stock and payment not settled yet.
    Pending,
    Confirmed,
    Rejected,
    Cancelled,
    Shipped,
    Delivered,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum StatusReason {
    OutOfStock,
    PaymentDeclined,
    CancelledByCustomer,
}

/// What happens to an order: the events and the request its status answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OrderEvent {
    /// Catalog held the order's stock (`stock_reserved`): its payment becomes due.
    StockHeld,
    /// Catalog refused the stock (`stock_rejected`).
    StockRefused,
    /// The provider authorized the payment.
    PaymentApproved,
    /// The provider declined the payment, or refused the request itself.
    PaymentDeclined,
    /// The customer asks to cancel.
    Cancel,
    /// Fulfillment dispatched the shipment (`shipment_dispatched`).
    Dispatched,
    /// Fulfillment delivered it (`shipment_delivered`).
    Delivered,
}

/// What an order is stored with: its status, and the reason for it.
pub(crate) type Target = (OrderStatus, Option<StatusReason>);

/// Where an event takes an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// The order becomes `to`, with `reason` as its status reason (none clears it), and
    /// the caller does the event's work (announces the change, opens the payment). `to`
    /// may be the status the order has: stock held leaves an order pending, its payment
    /// now due.
    Move {
        to: OrderStatus,
        reason: Option<StatusReason>,
    },
    /// A cancel crossed the dispatch: the goods left anyway, so the order becomes
    /// shipped and its stock must be held again (`order_reinstated`).
    ShipAndReinstate,
    /// Nothing changes: a late or repeated event, or a cancel of an order already
    /// cancelled (the request still succeeds).
    Ignore,
    /// A customer's request the order's status refuses (409).
    Refuse(Refusal),
}

/// Why a cancel is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The goods left.
    AlreadyShipped,
    /// The order was refused before (stock or payment).
    NotCancellable,
}

/// The order's state machine: where `event` takes an order in `from`.
pub(crate) fn transition(from: OrderStatus, event: OrderEvent) -> Step {
    use OrderEvent as E;
    use OrderStatus::*;
    use StatusReason as R;
    let to = |to: OrderStatus, reason: Option<StatusReason>| Step::Move { to, reason };
    match (from, event) {
        (Pending, E::StockHeld) => to(Pending, None),
        (Pending, E::StockRefused) => to(Rejected, Some(R::OutOfStock)),
        (Pending, E::PaymentApproved) => to(Confirmed, None),
        (Pending, E::PaymentDeclined) => to(Rejected, Some(R::PaymentDeclined)),
        (Pending | Confirmed, E::Cancel) => to(Cancelled, Some(R::CancelledByCustomer)),
        (Confirmed, E::Dispatched) => to(Shipped, None),
        (Cancelled, E::Dispatched) => Step::ShipAndReinstate,
        (Confirmed | Shipped, E::Delivered) => to(Delivered, None),
        (Shipped | Delivered, E::Cancel) => Step::Refuse(Refusal::AlreadyShipped),
        (Rejected, E::Cancel) => Step::Refuse(Refusal::NotCancellable),
        // Cancelling a cancelled order, and every event the order no longer waits for.
        _ => Step::Ignore,
    }
}

impl Step {
    /// The status and reason the order is stored with after this step, if it moves.
    pub(crate) fn target(self) -> Option<Target> {
        match self {
            Step::Move { to, reason } => Some((to, reason)),
            Step::ShipAndReinstate => Some((OrderStatus::Shipped, None)),
            Step::Ignore | Step::Refuse(_) => None,
        }
    }
}

impl OrderStatus {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Pending => "pending",
            OrderStatus::Confirmed => "confirmed",
            OrderStatus::Rejected => "rejected",
            OrderStatus::Cancelled => "cancelled",
            OrderStatus::Shipped => "shipped",
            OrderStatus::Delivered => "delivered",
        }
    }

    pub(crate) fn parse(raw: &str) -> Option<Self> {
        [
            OrderStatus::Pending,
            OrderStatus::Confirmed,
            OrderStatus::Rejected,
            OrderStatus::Cancelled,
            OrderStatus::Shipped,
            OrderStatus::Delivered,
        ]
        .into_iter()
        .find(|s| s.as_str() == raw)
    }

    /// Whether the order still waits for its payment: an approval would move it.
    pub(crate) fn awaits_payment(self) -> bool {
        transition(self, OrderEvent::PaymentApproved) != Step::Ignore
    }
}

impl fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl StatusReason {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            StatusReason::OutOfStock => "out_of_stock",
            StatusReason::PaymentDeclined => "payment_declined",
            StatusReason::CancelledByCustomer => "cancelled_by_customer",
        }
    }

    pub(crate) fn parse(raw: &str) -> Option<Self> {
        [
            StatusReason::OutOfStock,
            StatusReason::PaymentDeclined,
            StatusReason::CancelledByCustomer,
        ]
        .into_iter()
        .find(|r| r.as_str() == raw)
    }
}

#[cfg(test)]
mod tests {
    use super::OrderEvent as E;
    use super::OrderStatus::*;
    use super::StatusReason as R;
    use super::*;

    const ALL: [OrderStatus; 6] = [Pending, Confirmed, Rejected, Cancelled, Shipped, Delivered];
    const EVENTS: [OrderEvent; 7] = [
        E::StockHeld,
        E::StockRefused,
        E::PaymentApproved,
        E::PaymentDeclined,
        E::Cancel,
        E::Dispatched,
        E::Delivered,
    ];

    fn to(to: OrderStatus, reason: Option<StatusReason>) -> Step {
        Step::Move { to, reason }
    }

    /// Every move and refusal the state machine has; every other pair is ignored.
    #[rustfmt::skip]
    const MACHINE: &[(OrderStatus, OrderEvent, Step)] = &[
        (Pending, E::StockHeld, Step::Move { to: Pending, reason: None }),
        (Pending, E::StockRefused, Step::Move { to: Rejected, reason: Some(R::OutOfStock) }),
        (Pending, E::PaymentApproved, Step::Move { to: Confirmed, reason: None }),
        (Pending, E::PaymentDeclined, Step::Move { to: Rejected, reason: Some(R::PaymentDeclined) }),
        (Pending, E::Cancel, Step::Move { to: Cancelled, reason: Some(R::CancelledByCustomer) }),
        (Confirmed, E::Cancel, Step::Move { to: Cancelled, reason: Some(R::CancelledByCustomer) }),
        (Confirmed, E::Dispatched, Step::Move { to: Shipped, reason: None }),
        (Confirmed, E::Delivered, Step::Move { to: Delivered, reason: None }),
        (Cancelled, E::Dispatched, Step::ShipAndReinstate),
        (Shipped, E::Delivered, Step::Move { to: Delivered, reason: None }),
        (Rejected, E::Cancel, Step::Refuse(Refusal::NotCancellable)),
        (Shipped, E::Cancel, Step::Refuse(Refusal::AlreadyShipped)),
        (Delivered, E::Cancel, Step::Refuse(Refusal::AlreadyShipped)),
    ];

    #[test]
    fn every_status_and_event_goes_where_the_table_says_and_nowhere_else() {
        for from in ALL {
            for event in EVENTS {
                let expected = MACHINE
                    .iter()
                    .find(|(f, e, _)| *f == from && *e == event)
                    .map_or(Step::Ignore, |(_, _, step)| *step);
                assert_eq!(transition(from, event), expected, "{from} on {event:?}");
            }
        }
    }

    /// A sample of what the machine ignores, written out: late, repeated and crossed
    /// events change nothing.
    #[test]
    fn late_and_repeated_events_change_nothing() {
        let ignored = [
            (Cancelled, E::Cancel),
            (Cancelled, E::StockHeld),
            (Cancelled, E::PaymentApproved),
            (Cancelled, E::PaymentDeclined),
            (Cancelled, E::Delivered),
            (Confirmed, E::StockHeld),
            (Confirmed, E::StockRefused),
            (Confirmed, E::PaymentApproved),
            (Rejected, E::PaymentApproved),
            (Rejected, E::Dispatched),
            (Pending, E::Dispatched),
            (Pending, E::Delivered),
            (Shipped, E::Dispatched),
            (Delivered, E::Delivered),
        ];
        for (from, event) in ignored {
            assert_eq!(transition(from, event), Step::Ignore, "{from} on {event:?}");
        }
    }

    #[test]
    fn only_a_customer_s_cancel_is_refused() {
        for from in ALL {
            for event in EVENTS {
                if let Step::Refuse(_) = transition(from, event) {
                    assert_eq!(event, E::Cancel, "{from} refuses {event:?}");
                }
            }
        }
    }

    #[test]
    fn a_move_is_stored_as_its_target() {
        assert_eq!(
            to(Rejected, Some(R::OutOfStock)).target(),
            Some((Rejected, Some(R::OutOfStock)))
        );
        assert_eq!(Step::ShipAndReinstate.target(), Some((Shipped, None)));
        assert_eq!(Step::Ignore.target(), None);
        assert_eq!(Step::Refuse(Refusal::AlreadyShipped).target(), None);
    }

    #[test]
    fn only_a_pending_order_awaits_its_payment() {
        for s in ALL {
            assert_eq!(s.awaits_payment(), s == Pending, "{s}");
        }
    }

    #[test]
    fn statuses_round_trip_through_their_names() {
        for s in ALL {
            assert_eq!(OrderStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(OrderStatus::parse("lost"), None);
    }

    #[test]
    fn reasons_round_trip_through_their_names() {
        for r in [R::OutOfStock, R::PaymentDeclined, R::CancelledByCustomer] {
            assert_eq!(StatusReason::parse(r.as_str()), Some(r));
        }
        assert_eq!(StatusReason::parse("bored"), None);
    }
}
