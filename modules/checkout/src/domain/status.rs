//! Checkout's rules, with no IO: an order's statuses and which event or request may move
//! it where. Every transition the order journey allows is in [`OrderStatus`]; anything
//! else is refused or ignored, so duplicates and late events change nothing.

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

/// What a customer's cancel does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cancel {
    /// The order becomes cancelled and `order_cancelled` is published.
    Proceed,
    /// It already was: nothing changes, the request still succeeds.
    AlreadyCancelled,
    /// The goods left: 409.
    AlreadyShipped,
    /// It was refused before: 409.
    NotCancellable,
}

/// What `shipment_dispatched` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dispatch {
    Ship,
    /// A cancel crossed the dispatch: the goods left anyway, so the order ships and its
    /// stock must be held again (`order_reinstated`).
    ShipAndReinstate,
    Ignore,
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

    pub(crate) fn cancel(self) -> Cancel {
        match self {
            OrderStatus::Pending | OrderStatus::Confirmed => Cancel::Proceed,
            OrderStatus::Cancelled => Cancel::AlreadyCancelled,
            OrderStatus::Shipped | OrderStatus::Delivered => Cancel::AlreadyShipped,
            OrderStatus::Rejected => Cancel::NotCancellable,
        }
    }

    /// Stock was held: a pending order goes on to payment; any other ignores it (a
    /// cancelled order's stock is released by catalog on `order_cancelled`).
    pub(crate) fn takes_payment(self) -> bool {
        self == OrderStatus::Pending
    }

    /// Stock was refused: only a pending order is rejected by it.
    pub(crate) fn on_stock_rejected(self) -> Option<(OrderStatus, StatusReason)> {
        (self == OrderStatus::Pending).then_some((OrderStatus::Rejected, StatusReason::OutOfStock))
    }

    /// A payment outcome only settles a pending order; a cancelled one keeps its status
    /// (and an approved payment is voided).
    pub(crate) fn on_payment(self, approved: bool) -> Option<(OrderStatus, Option<StatusReason>)> {
        match (self, approved) {
            (OrderStatus::Pending, true) => Some((OrderStatus::Confirmed, None)),
            (OrderStatus::Pending, false) => {
                Some((OrderStatus::Rejected, Some(StatusReason::PaymentDeclined)))
            }
            _ => None,
        }
    }

    pub(crate) fn on_dispatched(self) -> Dispatch {
        match self {
            OrderStatus::Confirmed => Dispatch::Ship,
            OrderStatus::Cancelled => Dispatch::ShipAndReinstate,
            _ => Dispatch::Ignore,
        }
    }

    pub(crate) fn on_delivered(self) -> Option<OrderStatus> {
        matches!(self, OrderStatus::Shipped | OrderStatus::Confirmed)
            .then_some(OrderStatus::Delivered)
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
}

#[cfg(test)]
mod tests {
    use super::OrderStatus::*;
    use super::*;

    const ALL: [OrderStatus; 6] = [Pending, Confirmed, Rejected, Cancelled, Shipped, Delivered];

    #[test]
    fn statuses_round_trip_through_their_names() {
        for s in ALL {
            assert_eq!(OrderStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(OrderStatus::parse("lost"), None);
    }

    #[test]
    fn cancelling() {
        let expected = [
            (Pending, Cancel::Proceed),
            (Confirmed, Cancel::Proceed),
            (Rejected, Cancel::NotCancellable),
            (Cancelled, Cancel::AlreadyCancelled),
            (Shipped, Cancel::AlreadyShipped),
            (Delivered, Cancel::AlreadyShipped),
        ];
        for (from, outcome) in expected {
            assert_eq!(from.cancel(), outcome, "{from}");
        }
    }

    #[test]
    fn stock_and_payment_settle_only_pending_orders() {
        for s in ALL {
            assert_eq!(s.takes_payment(), s == Pending, "{s}");
            let rejected = s.on_stock_rejected();
            assert_eq!(rejected.is_some(), s == Pending, "{s}");
            assert_eq!(s.on_payment(true).is_some(), s == Pending, "{s}");
            assert_eq!(s.on_payment(false).is_some(), s == Pending, "{s}");
        }
        assert_eq!(Pending.on_payment(true), Some((Confirmed, None)));
        assert_eq!(
            Pending.on_payment(false),
            Some((Rejected, Some(StatusReason::PaymentDeclined)))
        );
    }

    #[test]
    fn dispatch_and_delivery() {
        let dispatch = [
            (Pending, Dispatch::Ignore),
            (Confirmed, Dispatch::Ship),
            (Rejected, Dispatch::Ignore),
            (Cancelled, Dispatch::ShipAndReinstate),
            (Shipped, Dispatch::Ignore),
            (Delivered, Dispatch::Ignore),
        ];
        for (from, outcome) in dispatch {
            assert_eq!(from.on_dispatched(), outcome, "{from}");
        }
        for s in ALL {
            assert_eq!(
                s.on_delivered().is_some(),
                matches!(s, Shipped | Confirmed),
                "{s}"
            );
        }
    }
}

/// Where an order ships.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub(crate) struct Address {
    pub(crate) name: String,
    pub(crate) line1: String,
    pub(crate) line2: Option<String>,
    pub(crate) city: String,
    pub(crate) postal_code: String,
    /// ISO 3166-1 alpha-2, upper case.
    pub(crate) country: String,
}

/// One priced line of an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Line {
    pub(crate) sku: String,
    pub(crate) quantity: i64,
    pub(crate) unit_price_minor: i64,
}

/// An order as stored.
#[derive(Debug, Clone)]
pub(crate) struct Order {
    pub(crate) id: uuid::Uuid,
    pub(crate) status: OrderStatus,
    pub(crate) status_reason: Option<String>,
    /// Who placed it (the `sub` of their token); only they, and staff, may see it.
    pub(crate) customer_id: String,
    pub(crate) customer_email: String,
    pub(crate) shipping_address: Address,
    pub(crate) payment_token: String,
    pub(crate) currency: String,
    pub(crate) total_minor: i64,
    pub(crate) lines: Vec<Line>,
    pub(crate) created_at: chrono::DateTime<chrono::Utc>,
    pub(crate) updated_at: chrono::DateTime<chrono::Utc>,
}
