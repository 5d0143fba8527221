//! The two state machines of checkout: an order's status and which event or request may
//! move it where (every transition the order journey allows is in [`OrderStatus`];
//! anything else is refused or ignored, so duplicates and late events change nothing),
//! and a payment attempt's status and how an answer of the provider settles it.

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

/// A payment attempt's status: pending until one answer settles it, once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PaymentStatus {
    /// Due, or claimed by a worker and being asked.
    Pending,
    /// Authorized, and the order confirmed by it.
    Approved,
    /// Refused by the provider; the order is rejected if it still waited.
    Declined,
    /// Not needed (the order stopped waiting); an authorization it got is released.
    Voided,
}

/// What the provider answered for an attempt, or that it was not asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PaymentAnswer {
    Approved,
    /// Declined, or the request itself refused: the payment counts as declined.
    Declined,
    /// The order no longer waited when the attempt was claimed: nothing was asked.
    NotAsked,
}

/// How one answer settles a pending attempt and its order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Settlement {
    pub(crate) payment: PaymentStatus,
    /// The order's new status and reason, when the answer moves it.
    pub(crate) order: Option<(OrderStatus, Option<StatusReason>)>,
    /// An authorization the order no longer needs: the money is released.
    pub(crate) void: bool,
}

impl PaymentStatus {
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            PaymentStatus::Pending => "pending",
            PaymentStatus::Approved => "approved",
            PaymentStatus::Declined => "declined",
            PaymentStatus::Voided => "voided",
        }
    }

    /// Only a pending attempt settles, and into a final status: an attempt settles once.
    pub(crate) fn may_become(self, to: PaymentStatus) -> bool {
        self == PaymentStatus::Pending && to != PaymentStatus::Pending
    }
}

/// How `answer` settles a pending attempt of an order now in `order`. An approval for an
/// order that stopped waiting (cancelled meanwhile) is voided and leaves the order as it
/// is; a refusal rejects the order only if it still waits.
pub(crate) fn settle(order: OrderStatus, answer: PaymentAnswer) -> Settlement {
    match answer {
        PaymentAnswer::Approved => match order.on_payment(true) {
            Some(moved) => Settlement {
                payment: PaymentStatus::Approved,
                order: Some((moved.0, moved.1)),
                void: false,
            },
            None => Settlement {
                payment: PaymentStatus::Voided,
                order: None,
                void: true,
            },
        },
        PaymentAnswer::Declined => Settlement {
            payment: PaymentStatus::Declined,
            order: order.on_payment(false),
            void: false,
        },
        PaymentAnswer::NotAsked => Settlement {
            payment: PaymentStatus::Voided,
            order: None,
            void: false,
        },
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
    fn reasons_round_trip_through_their_names() {
        for r in [
            StatusReason::OutOfStock,
            StatusReason::PaymentDeclined,
            StatusReason::CancelledByCustomer,
        ] {
            assert_eq!(StatusReason::parse(r.as_str()), Some(r));
        }
        assert_eq!(StatusReason::parse("bored"), None);
    }

    #[test]
    fn a_payment_attempt_settles_once_into_a_final_status() {
        use PaymentStatus as P;
        let all = [P::Pending, P::Approved, P::Declined, P::Voided];
        for from in all {
            for to in all {
                let allowed = from == P::Pending && to != P::Pending;
                assert_eq!(from.may_become(to), allowed, "{from:?} -> {to:?}");
            }
        }
    }

    #[test]
    fn an_answer_settles_the_attempt_and_moves_only_a_waiting_order() {
        use PaymentAnswer::*;
        use PaymentStatus as P;
        for order in ALL {
            let waiting = order == Pending;
            let approved = settle(order, Approved);
            if waiting {
                assert_eq!(
                    approved,
                    Settlement {
                        payment: P::Approved,
                        order: Some((Confirmed, None)),
                        void: false
                    }
                );
            } else {
                assert_eq!(
                    approved,
                    Settlement {
                        payment: P::Voided,
                        order: None,
                        void: true
                    },
                    "an approval for a {order} order is released"
                );
            }
            let declined = settle(order, Declined);
            assert_eq!(declined.payment, P::Declined, "{order}");
            assert!(!declined.void, "{order}");
            assert_eq!(
                declined.order,
                waiting.then_some((Rejected, Some(StatusReason::PaymentDeclined))),
                "{order}"
            );
            assert_eq!(
                settle(order, NotAsked),
                Settlement {
                    payment: P::Voided,
                    order: None,
                    void: false
                },
                "{order}"
            );
            for answer in [Approved, Declined, NotAsked] {
                let s = settle(order, answer);
                assert!(P::Pending.may_become(s.payment), "{order} {answer:?}");
            }
        }
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
