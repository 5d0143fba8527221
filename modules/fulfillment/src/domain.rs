//! Fulfillment's rules, with no IO: a shipment's statuses and the transitions between
//! them (ready → dispatched → delivered; ready → cancelled), as pure functions of a
//! shipment and what the caller brings (the time, the tracking number's randomness).

use std::fmt;

use chrono::{DateTime, Utc};
use kernel::{OrderId, ShipmentId};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ShipmentStatus {
    Ready,
    Dispatched,
    Delivered,
    Cancelled,
}

/// A shipment: at most one per order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Shipment {
    pub(crate) id: ShipmentId,
    pub(crate) order_id: OrderId,
    pub(crate) status: ShipmentStatus,
    /// Set when it is dispatched.
    pub(crate) tracking_number: Option<String>,
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) updated_at: DateTime<Utc>,
}

/// A transition a shipment's status does not allow; it names that status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NotAllowed(pub(crate) ShipmentStatus);

/// What an order's cancellation does to its shipment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum OnCancel {
    /// It had not left: it is cancelled.
    Cancel(Shipment),
    /// Already on its way: a dispatch cannot be undone (checkout reinstates the order).
    TooLate(ShipmentStatus),
    /// It was cancelled before: nothing changes.
    Nothing,
}

impl Shipment {
    /// A new shipment of a confirmed order, ready to be dispatched.
    pub(crate) fn ready(id: ShipmentId, order_id: OrderId, now: DateTime<Utc>) -> Shipment {
        Shipment {
            id,
            order_id,
            status: ShipmentStatus::Ready,
            tracking_number: None,
            created_at: now,
            updated_at: now,
        }
    }

    /// Hands a ready shipment to the carrier under the number `tracking` makes (called
    /// only when the dispatch is allowed).
    pub(crate) fn dispatch(
        self,
        tracking: impl FnOnce() -> String,
        now: DateTime<Utc>,
    ) -> Result<Shipment, NotAllowed> {
        match self.status {
            ShipmentStatus::Ready => Ok(Shipment {
                status: ShipmentStatus::Dispatched,
                tracking_number: Some(tracking()),
                updated_at: now,
                ..self
            }),
            other => Err(NotAllowed(other)),
        }
    }

    /// A dispatched shipment arrived.
    pub(crate) fn deliver(self, now: DateTime<Utc>) -> Result<Shipment, NotAllowed> {
        match self.status {
            ShipmentStatus::Dispatched => Ok(Shipment {
                status: ShipmentStatus::Delivered,
                updated_at: now,
                ..self
            }),
            other => Err(NotAllowed(other)),
        }
    }

    /// Its order was cancelled.
    pub(crate) fn cancel(self, now: DateTime<Utc>) -> OnCancel {
        match self.status {
            ShipmentStatus::Ready => OnCancel::Cancel(Shipment {
                status: ShipmentStatus::Cancelled,
                updated_at: now,
                ..self
            }),
            ShipmentStatus::Dispatched | ShipmentStatus::Delivered => {
                OnCancel::TooLate(self.status)
            }
            ShipmentStatus::Cancelled => OnCancel::Nothing,
        }
    }
}

impl ShipmentStatus {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ShipmentStatus::Ready => "ready",
            ShipmentStatus::Dispatched => "dispatched",
            ShipmentStatus::Delivered => "delivered",
            ShipmentStatus::Cancelled => "cancelled",
        }
    }

    pub(crate) fn parse(raw: &str) -> Option<Self> {
        [
            ShipmentStatus::Ready,
            ShipmentStatus::Dispatched,
            ShipmentStatus::Delivered,
            ShipmentStatus::Cancelled,
        ]
        .into_iter()
        .find(|s| s.as_str() == raw)
    }
}

impl fmt::Display for ShipmentStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A tracking number: `TRK-` and ten characters of Crockford base32, each chosen by
/// `pick(n)`, which answers an index below `n` (the caller brings the randomness; the
/// domain has none of its own).
pub(crate) fn tracking_number(mut pick: impl FnMut(usize) -> usize) -> String {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    let code: String = (0..10)
        .map(|_| ALPHABET[pick(ALPHABET.len()) % ALPHABET.len()] as char)
        .collect();
    format!("TRK-{code}")
}

#[cfg(test)]
mod tests {
    use super::ShipmentStatus::*;
    use super::*;

    const ALL: [ShipmentStatus; 4] = [Ready, Dispatched, Delivered, Cancelled];

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(secs, 0).expect("a time")
    }

    fn shipment(status: ShipmentStatus) -> Shipment {
        Shipment {
            status,
            ..Shipment::ready(ShipmentId::new(), OrderId::new(), at(0))
        }
    }

    #[test]
    fn statuses_round_trip_through_their_names() {
        for s in ALL {
            assert_eq!(ShipmentStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(ShipmentStatus::parse("lost"), None);
    }

    #[test]
    fn a_new_shipment_is_ready_without_a_tracking_number() {
        let new = Shipment::ready(ShipmentId::new(), OrderId::new(), at(5));
        assert_eq!(new.status, Ready);
        assert_eq!(new.tracking_number, None);
        assert_eq!((new.created_at, new.updated_at), (at(5), at(5)));
    }

    #[test]
    fn only_a_ready_shipment_is_dispatched_and_only_it_draws_a_tracking_number() {
        for from in ALL {
            let mut drawn = 0;
            let result = shipment(from).dispatch(
                || {
                    drawn += 1;
                    "TRK-0000000001".into()
                },
                at(9),
            );
            match from {
                Ready => {
                    let s = result.expect("dispatched");
                    assert_eq!(s.status, Dispatched);
                    assert_eq!(s.tracking_number.as_deref(), Some("TRK-0000000001"));
                    assert_eq!((s.created_at, s.updated_at), (at(0), at(9)));
                    assert_eq!(drawn, 1);
                }
                _ => {
                    assert_eq!(result, Err(NotAllowed(from)), "{from}");
                    assert_eq!(drawn, 0, "{from}");
                }
            }
        }
    }

    #[test]
    fn only_a_dispatched_shipment_is_delivered_and_keeps_its_tracking_number() {
        for from in ALL {
            let before = Shipment {
                tracking_number: Some("TRK-X".into()),
                ..shipment(from)
            };
            let result = before.deliver(at(9));
            if from == Dispatched {
                let s = result.expect("delivered");
                assert_eq!(s.status, Delivered);
                assert_eq!(s.tracking_number.as_deref(), Some("TRK-X"));
                assert_eq!(s.updated_at, at(9));
            } else {
                assert_eq!(result, Err(NotAllowed(from)), "{from}");
            }
        }
    }

    #[test]
    fn a_cancelled_order_cancels_its_shipment_only_before_dispatch() {
        let table = [
            (Ready, Some(Cancelled)),
            (Dispatched, None),
            (Delivered, None),
            (Cancelled, None),
        ];
        for (from, to) in table {
            let outcome = shipment(from).cancel(at(9));
            match (from, to, outcome) {
                (_, Some(to), OnCancel::Cancel(s)) => {
                    assert_eq!(s.status, to);
                    assert_eq!(s.updated_at, at(9));
                }
                (Dispatched | Delivered, None, OnCancel::TooLate(status)) => {
                    assert_eq!(status, from)
                }
                (Cancelled, None, OnCancel::Nothing) => {}
                (from, _, outcome) => panic!("{from}: {outcome:?}"),
            }
        }
    }

    #[test]
    fn a_tracking_number_is_trk_and_ten_base32_characters_chosen_by_the_caller() {
        let mut next = 0;
        let number = tracking_number(|n| {
            next += 7;
            next % n
        });
        assert_eq!(number, "TRK-7ENW3AHRZ6");
        assert_eq!(tracking_number(|_| 31), "TRK-ZZZZZZZZZZ");
    }
}
