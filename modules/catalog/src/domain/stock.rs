//! Holding stock for orders. An order holds every one of its lines or none of them,
//! against the units free when it comes (after the orders before it in its batch). Each
//! order's decision is kept ([`Hold`]), so a duplicate or late event cannot decide twice:
//! a cancel releases what a reserved order holds, and a cancel that lost to a dispatch
//! (the goods left) holds the stock again, taking what is still free and reporting the
//! rest as oversold.

use std::collections::{BTreeMap, HashMap};

/// An order's lines, one per sku, in sku order (so concurrent orders lock stock rows in
/// the same order and cannot deadlock).
pub(crate) type Lines = Vec<(String, i64)>;

/// What catalog decided for an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hold {
    /// Its units are held.
    Reserved,
    /// Refused for want of stock; nothing is held.
    Rejected,
    /// Cancelled: its units were given back (or it was cancelled before catalog heard of
    /// it, and will hold nothing).
    Released,
}

impl Hold {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Hold::Reserved => "reserved",
            Hold::Rejected => "rejected",
            Hold::Released => "released",
        }
    }

    pub(crate) fn parse(raw: &str) -> Option<Self> {
        [Hold::Reserved, Hold::Rejected, Hold::Released]
            .into_iter()
            .find(|h| h.as_str() == raw)
    }
}

/// Merges an order's lines per sku, in sku order.
pub(crate) fn merged<'a>(lines: impl Iterator<Item = (&'a str, i64)>) -> Lines {
    let mut by_sku: BTreeMap<&str, i64> = BTreeMap::new();
    for (sku, quantity) in lines {
        *by_sku.entry(sku).or_default() += quantity;
    }
    by_sku.into_iter().map(|(s, q)| (s.to_owned(), q)).collect()
}

/// A line that could not be held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Shortage {
    pub(crate) sku: String,
    pub(crate) requested: i64,
    /// What was free (never below 0).
    pub(crate) available: i64,
}

/// What a placed order gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Every line is held.
    Reserved(Lines),
    /// Nothing is held; these lines were short.
    Rejected(Vec<Shortage>),
}

/// Decides one order against `free` (units free per sku; an unknown sku has none): all
/// its lines are held, and taken from `free`, or none is. Called for each order of a
/// batch in turn, each order sees what the orders before it left.
pub(crate) fn decide(free: &mut HashMap<String, i64>, lines: &Lines) -> Decision {
    let shortages: Vec<Shortage> = lines
        .iter()
        .filter_map(|(sku, quantity)| {
            let available = free.get(sku).copied().unwrap_or(0);
            (available < *quantity).then(|| Shortage {
                sku: sku.clone(),
                requested: *quantity,
                available: available.max(0),
            })
        })
        .collect();
    if !shortages.is_empty() {
        return Decision::Rejected(shortages);
    }
    for (sku, quantity) in lines {
        *free.entry(sku.clone()).or_default() -= quantity;
    }
    Decision::Reserved(lines.clone())
}

/// What an order's cancellation does, given the decision taken for it so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OnCancel {
    /// It holds units: give them back, and it is released.
    Release,
    /// Catalog has not heard of the order yet: remember it as released, so that the order,
    /// if it ever arrives, holds nothing.
    Remember,
    /// Rejected or released before: nothing to do.
    Nothing,
}

pub(crate) fn on_cancelled(hold: Option<Hold>) -> OnCancel {
    match hold {
        Some(Hold::Reserved) => OnCancel::Release,
        None => OnCancel::Remember,
        Some(Hold::Rejected | Hold::Released) => OnCancel::Nothing,
    }
}

/// Whether an order reinstated after a dispatch holds its stock again: only one whose
/// units were released by its cancel (a duplicate finds it reserved again).
pub(crate) fn on_reinstated(hold: Option<Hold>) -> bool {
    hold == Some(Hold::Released)
}

/// A line of a reinstated order: what it wanted, and what is held again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rehold {
    pub(crate) sku: String,
    pub(crate) wanted: i64,
    pub(crate) held: i64,
}

impl Rehold {
    /// Units the dispatched goods took that were no longer free.
    pub(crate) fn oversold(&self) -> i64 {
        self.wanted - self.held
    }
}

/// A reinstated order's goods have left: each line holds what it wanted, or as much as is
/// still free; the shortfall is oversold, never retried.
pub(crate) fn rehold(free: &HashMap<String, i64>, lines: &Lines) -> Vec<Rehold> {
    lines
        .iter()
        .map(|(sku, wanted)| Rehold {
            sku: sku.clone(),
            wanted: *wanted,
            held: (*wanted).min(free.get(sku).copied().unwrap_or(0).max(0)),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(l: &[(&str, i64)]) -> Lines {
        l.iter().map(|(s, q)| (s.to_string(), *q)).collect()
    }

    fn free(f: &[(&str, i64)]) -> HashMap<String, i64> {
        f.iter().map(|(s, q)| (s.to_string(), *q)).collect()
    }

    #[test]
    fn lines_are_merged_per_sku_in_sku_order() {
        let merged = merged([("B", 1), ("A", 2), ("B", 3)].into_iter());
        assert_eq!(merged, lines(&[("A", 2), ("B", 4)]));
    }

    #[test]
    fn holds_round_trip_through_their_names() {
        for h in [Hold::Reserved, Hold::Rejected, Hold::Released] {
            assert_eq!(Hold::parse(h.as_str()), Some(h));
        }
        assert_eq!(Hold::parse("lost"), None);
    }

    #[test]
    fn an_order_holds_all_its_lines_or_none() {
        type Row<'a> = (
            &'a str,
            &'a [(&'a str, i64)],
            &'a [(&'a str, i64)],
            Decision,
            &'a [(&'a str, i64)],
        );
        let short = |sku: &str, requested, available| Shortage {
            sku: sku.into(),
            requested,
            available,
        };
        let table: &[Row<'_>] = &[
            (
                "enough of everything",
                &[("A", 5), ("B", 1)],
                &[("A", 2), ("B", 1)],
                Decision::Reserved(lines(&[("A", 2), ("B", 1)])),
                &[("A", 3), ("B", 0)],
            ),
            (
                "exactly what is free",
                &[("A", 2)],
                &[("A", 2)],
                Decision::Reserved(lines(&[("A", 2)])),
                &[("A", 0)],
            ),
            (
                "one line short: nothing is held, not even the lines that fit",
                &[("A", 5), ("B", 1)],
                &[("A", 2), ("B", 2)],
                Decision::Rejected(vec![short("B", 2, 1)]),
                &[("A", 5), ("B", 1)],
            ),
            (
                "an unknown sku has nothing free",
                &[("A", 5)],
                &[("A", 1), ("X", 1)],
                Decision::Rejected(vec![short("X", 1, 0)]),
                &[("A", 5)],
            ),
            (
                "stock already oversold shows as none available",
                &[("A", -3)],
                &[("A", 1)],
                Decision::Rejected(vec![short("A", 1, 0)]),
                &[("A", -3)],
            ),
        ];
        for (what, before, asked, decision, after) in table {
            let mut units = free(before);
            assert_eq!(&decide(&mut units, &lines(asked)), decision, "{what}");
            assert_eq!(units, free(after), "{what}");
        }
    }

    #[test]
    fn orders_of_a_batch_are_decided_in_turn_against_what_the_earlier_ones_left() {
        let mut units = free(&[("A", 3)]);
        let first = decide(&mut units, &lines(&[("A", 2)]));
        let second = decide(&mut units, &lines(&[("A", 2)]));
        let third = decide(&mut units, &lines(&[("A", 1)]));
        assert_eq!(first, Decision::Reserved(lines(&[("A", 2)])));
        assert_eq!(
            second,
            Decision::Rejected(vec![Shortage {
                sku: "A".into(),
                requested: 2,
                available: 1
            }])
        );
        assert_eq!(third, Decision::Reserved(lines(&[("A", 1)])));
        assert_eq!(units, free(&[("A", 0)]));
    }

    #[test]
    fn a_cancel_releases_only_what_is_held_and_a_reinstatement_holds_only_what_was_released() {
        let table = [
            (None, OnCancel::Remember, false),
            (Some(Hold::Reserved), OnCancel::Release, false),
            (Some(Hold::Rejected), OnCancel::Nothing, false),
            (Some(Hold::Released), OnCancel::Nothing, true),
        ];
        for (hold, cancel, reinstate) in table {
            assert_eq!(on_cancelled(hold), cancel, "{hold:?}");
            assert_eq!(on_reinstated(hold), reinstate, "{hold:?}");
        }
    }

    #[test]
    fn a_reinstated_order_holds_what_is_free_and_the_rest_is_oversold() {
        let held = rehold(
            &free(&[("A", 10), ("B", 1), ("C", 0), ("D", -2)]),
            &lines(&[("A", 3), ("B", 4), ("C", 2), ("D", 1), ("X", 1)]),
        );
        let got: Vec<(&str, i64, i64, i64)> = held
            .iter()
            .map(|r| (r.sku.as_str(), r.wanted, r.held, r.oversold()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("A", 3, 3, 0),
                ("B", 4, 1, 3),
                ("C", 2, 0, 2),
                ("D", 1, 0, 1),
                ("X", 1, 0, 1),
            ]
        );
    }
}
