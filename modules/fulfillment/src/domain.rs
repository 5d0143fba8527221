//! Fulfillment's rules, with no IO: a shipment's statuses and what may move it.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ShipmentStatus {
    Ready,
    Dispatched,
    Delivered,
    Cancelled,
}

/// What `order_cancelled` does to an order's shipment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OnCancel {
    Cancel,
    /// Already on its way: a dispatch cannot be undone (checkout reinstates the order).
    TooLate,
    Nothing,
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

    pub(crate) fn can_dispatch(self) -> bool {
        self == ShipmentStatus::Ready
    }

    pub(crate) fn can_deliver(self) -> bool {
        self == ShipmentStatus::Dispatched
    }

    pub(crate) fn on_order_cancelled(self) -> OnCancel {
        match self {
            ShipmentStatus::Ready => OnCancel::Cancel,
            ShipmentStatus::Dispatched | ShipmentStatus::Delivered => OnCancel::TooLate,
            ShipmentStatus::Cancelled => OnCancel::Nothing,
        }
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

    #[test]
    fn transitions() {
        let table = [
            (Ready, true, false, OnCancel::Cancel),
            (Dispatched, false, true, OnCancel::TooLate),
            (Delivered, false, false, OnCancel::TooLate),
            (Cancelled, false, false, OnCancel::Nothing),
        ];
        for (status, dispatch, deliver, cancel) in table {
            assert_eq!(status.can_dispatch(), dispatch, "{status}");
            assert_eq!(status.can_deliver(), deliver, "{status}");
            assert_eq!(status.on_order_cancelled(), cancel, "{status}");
            assert_eq!(ShipmentStatus::parse(status.as_str()), Some(status));
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
