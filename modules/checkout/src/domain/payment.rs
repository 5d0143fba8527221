//! A payment attempt's state machine: pending until one answer of the provider settles it,
//! once, and what that answer does to its order (through the order's own table,
//! [`transition`]). The payment worker asks; this decides.

use super::status::{OrderEvent, OrderStatus, Step, Target, transition};

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

/// What came of asking the provider for an attempt, or that it was not asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PaymentAnswer {
    Approved,
    /// Declined, or the request itself refused: the payment counts as declined.
    Declined,
    /// The order no longer waited when the attempt was claimed: nothing was asked.
    NotAsked,
    /// No answer (no answer in time, the provider unavailable): asked again later. An
    /// outage never declines an order by itself.
    Unavailable,
    /// The circuit breaker opened between the claim and the call: nothing was asked.
    Held,
}

/// What the worker records for one answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Resolution {
    /// The attempt stays pending and is due again after the backoff; the order waits.
    Retry,
    /// The attempt is released as it was: claimable again at once.
    Release,
    /// The answer settles the attempt, and the order if it still waited.
    Settle(Settlement),
}

/// How one answer settles a pending attempt and its order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Settlement {
    pub(crate) payment: PaymentStatus,
    /// The order's new status and reason, when the answer moves it.
    pub(crate) order: Option<Target>,
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

/// What `answer` does to a pending attempt of an order now in `order`. An approval for an
/// order that stopped waiting (cancelled meanwhile) is voided and leaves the order as it
/// is; a refusal rejects the order only if it still waits; no answer settles nothing.
pub(crate) fn resolve(order: OrderStatus, answer: PaymentAnswer) -> Resolution {
    let settled = match answer {
        PaymentAnswer::Unavailable => return Resolution::Retry,
        PaymentAnswer::Held => return Resolution::Release,
        PaymentAnswer::Approved => match transition(order, OrderEvent::PaymentApproved) {
            step @ Step::Move { .. } => Settlement {
                payment: PaymentStatus::Approved,
                order: step.target(),
                void: false,
            },
            _ => Settlement {
                payment: PaymentStatus::Voided,
                order: None,
                void: true,
            },
        },
        PaymentAnswer::Declined => Settlement {
            payment: PaymentStatus::Declined,
            order: transition(order, OrderEvent::PaymentDeclined).target(),
            void: false,
        },
        PaymentAnswer::NotAsked => Settlement {
            payment: PaymentStatus::Voided,
            order: None,
            void: false,
        },
    };
    Resolution::Settle(settled)
}

#[cfg(test)]
mod tests {
    use super::OrderStatus::*;
    use super::PaymentAnswer as A;
    use super::PaymentStatus as P;
    use super::*;
    use crate::domain::StatusReason;

    const ALL: [OrderStatus; 6] = [Pending, Confirmed, Rejected, Cancelled, Shipped, Delivered];

    #[test]
    fn a_payment_attempt_settles_once_into_a_final_status() {
        let all = [P::Pending, P::Approved, P::Declined, P::Voided];
        for from in all {
            for to in all {
                let allowed = from == P::Pending && to != P::Pending;
                assert_eq!(from.may_become(to), allowed, "{from:?} -> {to:?}");
            }
        }
    }

    fn settles(payment: PaymentStatus, order: Option<Target>, void: bool) -> Resolution {
        Resolution::Settle(Settlement {
            payment,
            order,
            void,
        })
    }

    /// Every answer for an order still waiting, and for one that stopped waiting.
    #[test]
    fn an_answer_settles_the_attempt_and_moves_only_a_waiting_order() {
        let declined = Some((Rejected, Some(StatusReason::PaymentDeclined)));
        #[rustfmt::skip]
        let rows = [
            (Pending, A::Approved, settles(P::Approved, Some((Confirmed, None)), false)),
            (Pending, A::Declined, settles(P::Declined, declined, false)),
            (Pending, A::NotAsked, settles(P::Voided, None, false)),
            (Pending, A::Unavailable, Resolution::Retry),
            (Pending, A::Held, Resolution::Release),
            (Cancelled, A::Approved, settles(P::Voided, None, true)),
            (Cancelled, A::Declined, settles(P::Declined, None, false)),
            (Cancelled, A::NotAsked, settles(P::Voided, None, false)),
            (Cancelled, A::Unavailable, Resolution::Retry),
            (Cancelled, A::Held, Resolution::Release),
        ];
        for (order, answer, expected) in rows {
            assert_eq!(resolve(order, answer), expected, "{order} {answer:?}");
        }
    }

    #[test]
    fn an_approval_for_an_order_that_stopped_waiting_is_voided() {
        for order in ALL.into_iter().filter(|o| !o.awaits_payment()) {
            assert_eq!(
                resolve(order, A::Approved),
                settles(P::Voided, None, true),
                "an approval for a {order} order is released"
            );
            assert_eq!(
                resolve(order, A::Declined),
                settles(P::Declined, None, false)
            );
        }
    }

    #[test]
    fn every_settlement_is_one_a_pending_attempt_may_make() {
        for order in ALL {
            for answer in [
                A::Approved,
                A::Declined,
                A::NotAsked,
                A::Unavailable,
                A::Held,
            ] {
                if let Resolution::Settle(s) = resolve(order, answer) {
                    assert!(P::Pending.may_become(s.payment), "{order} {answer:?}");
                    if let Some((to, _)) = s.order {
                        assert!(order.awaits_payment(), "{order} {answer:?} moved to {to}");
                    }
                }
            }
        }
    }
}
