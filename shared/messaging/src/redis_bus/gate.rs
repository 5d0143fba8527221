//! The per-key gate of a subscription: an entry is handed out only while no earlier entry
//! of its key is in flight or waiting for a retry, and what waits behind a key's entry is
//! released when that entry settles. It does no IO and reads no clock: it is told of
//! entries, settlements and which partitions may be used, and answers with the entry to
//! hand out next; the subscription's lock is around it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use crate::bus::{Delivery, DeliveryTag};

/// What the tags of this bus hold: an entry of a stream.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct StreamEntry {
    pub(super) stream: Arc<str>,
    pub(super) id: Arc<str>,
}

/// One entry on its way to the consumer.
#[derive(Debug, Clone)]
pub(super) struct Entry {
    pub(super) stream: Arc<str>,
    pub(super) partition: u32,
    pub(super) id: Arc<str>,
    /// Producer-qualified ordering key (the stream names the producer).
    pub(super) key: String,
    pub(super) raw: Arc<[u8]>,
    pub(super) attempt: u32,
}

impl Entry {
    pub(super) fn tag(&self) -> DeliveryTag {
        DeliveryTag::new(StreamEntry {
            stream: self.stream.clone(),
            id: self.id.clone(),
        })
    }

    pub(super) fn delivery(&self) -> Delivery {
        Delivery {
            tag: self.tag(),
            raw: self.raw.clone(),
            attempt: self.attempt,
        }
    }
}

/// Whether the entries of a partition may be handed out now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Partition {
    /// Its lease is confirmed.
    Held,
    /// Its lease is not confirmed now; a renewal decides.
    Unconfirmed,
    /// No longer held here: its entries are dropped, and its next owner delivers them.
    Lost,
}

#[derive(Default)]
pub(super) struct Gate {
    /// Queued for the consumer, handed out, or waiting for a retry, by tag.
    outstanding: HashMap<DeliveryTag, Entry>,
    /// Keys with an entry outstanding, and what waits behind it.
    waiting: HashMap<String, VecDeque<Entry>>,
    waiting_count: usize,
    /// Outstanding entries not yet taken by the consumer, in the order to hand them out.
    ready: VecDeque<DeliveryTag>,
}

impl Gate {
    pub(super) fn in_flight(&self) -> usize {
        self.outstanding.len() + self.waiting_count
    }

    /// How many entries of `partition` are in flight here.
    pub(super) fn load(&self, partition: u32) -> usize {
        self.outstanding
            .values()
            .chain(self.waiting.values().flatten())
            .filter(|e| e.partition == partition)
            .count()
    }

    /// Ids of the entries of `stream` in flight here.
    pub(super) fn known(&self, stream: &str) -> HashSet<String> {
        self.outstanding
            .values()
            .chain(self.waiting.values().flatten())
            .filter(|e| &*e.stream == stream)
            .map(|e| e.id.to_string())
            .collect()
    }

    /// The outstanding entry of `tag`.
    pub(super) fn outstanding(&self, tag: &DeliveryTag) -> Option<&Entry> {
        self.outstanding.get(tag)
    }

    /// Queues an entry for the consumer, or behind the entry of its key in flight. True if
    /// it became ready.
    pub(super) fn offer(&mut self, entry: Entry) -> bool {
        let tag = entry.tag();
        if self.outstanding.contains_key(&tag) {
            return false;
        }
        if let Some(queue) = self.waiting.get_mut(&entry.key) {
            if !queue.iter().any(|e| e.id == entry.id) {
                queue.push_back(entry);
                self.waiting_count += 1;
            }
            return false;
        }
        self.waiting.insert(entry.key.clone(), VecDeque::new());
        self.outstanding.insert(tag.clone(), entry);
        self.ready.push_back(tag);
        true
    }

    /// A delivery is done: the next entry of its key becomes ready. True if one did.
    pub(super) fn settle(&mut self, tag: &DeliveryTag) -> bool {
        let Some(entry) = self.outstanding.remove(tag) else {
            return false;
        };
        self.ready.retain(|t| t != tag);
        match self
            .waiting
            .get_mut(&entry.key)
            .and_then(VecDeque::pop_front)
        {
            Some(next) => {
                self.waiting_count -= 1;
                let next_tag = next.tag();
                self.outstanding.insert(next_tag.clone(), next);
                self.ready.push_back(next_tag);
                true
            }
            None => {
                self.waiting.remove(&entry.key);
                false
            }
        }
    }

    /// A retried entry is back (its delay is over and it was claimed again): it is ready
    /// once more, with `attempt`, still its key's head. False if it was settled or dropped
    /// meanwhile.
    pub(super) fn again(&mut self, tag: &DeliveryTag, attempt: u32) -> bool {
        match self.outstanding.get_mut(tag) {
            Some(again) => {
                again.attempt = attempt;
                self.ready.push_back(tag.clone());
                true
            }
            None => false,
        }
    }

    /// Drops a handed-out entry whose partition this instance no longer holds: its new
    /// owner delivers it.
    pub(super) fn forget(&mut self, tag: &DeliveryTag) {
        if let Some(entry) = self.outstanding.remove(tag) {
            self.ready.retain(|t| t != tag);
            if let Some(queue) = self.waiting.remove(&entry.key) {
                self.waiting_count -= queue.len();
            }
        }
    }

    /// The next entry for the consumer whose partition is [`Partition::Held`]. Entries of
    /// a partition [`Partition::Unconfirmed`] wait; those of a partition
    /// [`Partition::Lost`] are dropped with it ([`Gate::drop_partition`]). Returns the
    /// entry, and the partitions found lost.
    pub(super) fn hand_out(
        &mut self,
        partition: impl Fn(u32) -> Partition,
    ) -> (Option<Entry>, Vec<u32>) {
        let mut lost = Vec::new();
        let mut index = 0;
        while let Some(tag) = self.ready.get(index).cloned() {
            let Some(entry) = self.outstanding.get(&tag) else {
                self.ready.remove(index);
                continue;
            };
            match partition(entry.partition) {
                Partition::Held => {
                    let entry = entry.clone();
                    self.ready.remove(index);
                    return (Some(entry), lost);
                }
                Partition::Unconfirmed => index += 1,
                Partition::Lost => {
                    let gone = entry.partition;
                    self.drop_partition(gone);
                    lost.push(gone);
                }
            }
        }
        (None, lost)
    }

    /// Nothing more of a partition is handed out. Entries of it the consumer holds stay
    /// counted (and their keys held) until it settles them; what waited behind them, or
    /// was not handed out yet, is dropped, left pending in Redis for the partition's next
    /// owner.
    pub(super) fn drop_partition(&mut self, partition: u32) {
        let mut dropped_heads = Vec::new();
        let outstanding = &mut self.outstanding;
        self.ready.retain(|tag| match outstanding.get(tag) {
            Some(e) if e.partition == partition => {
                dropped_heads.push(e.key.clone());
                outstanding.remove(tag);
                false
            }
            Some(_) => true,
            None => false,
        });
        let mut dropped = 0;
        for queue in self.waiting.values_mut() {
            let before = queue.len();
            queue.retain(|e| e.partition != partition);
            dropped += before - queue.len();
        }
        self.waiting_count -= dropped;
        for key in dropped_heads {
            self.waiting.remove(&key);
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// An entry of `partition`'s stream of checkout, for tests.
    pub(in super::super) fn entry(partition: u32, key: &str, id: &str) -> Entry {
        let stream: Arc<str> = Arc::from(format!("ns:stream:checkout:{partition}"));
        Entry {
            key: format!("{stream}/{key}"),
            stream,
            partition,
            id: Arc::from(id),
            raw: Arc::from(Vec::new()),
            attempt: 1,
        }
    }

    fn held(_: u32) -> Partition {
        Partition::Held
    }

    fn next(gate: &mut Gate) -> Option<Entry> {
        let (entry, lost) = gate.hand_out(held);
        assert!(lost.is_empty());
        entry
    }

    #[test]
    fn a_key_s_next_entry_is_ready_only_once_the_one_before_settled() {
        let mut gate = Gate::default();
        assert!(gate.offer(entry(0, "k", "1-0")));
        assert!(!gate.offer(entry(0, "k", "2-0")));
        assert!(
            !gate.offer(entry(0, "k", "2-0")),
            "offered twice, queued once"
        );
        assert_eq!(gate.in_flight(), 2);
        let first = next(&mut gate).expect("the first entry");
        assert!(next(&mut gate).is_none(), "the second waits");
        assert!(gate.settle(&first.tag()));
        assert_eq!(&*next(&mut gate).expect("the second").id, "2-0");
    }

    #[test]
    fn an_entry_handed_out_again_is_not_queued_twice() {
        let mut gate = Gate::default();
        assert!(gate.offer(entry(0, "k", "1-0")));
        let first = next(&mut gate).expect("the first entry");
        assert!(
            !gate.offer(entry(0, "k", "1-0")),
            "read again while in flight"
        );
        assert_eq!(gate.in_flight(), 1);
        assert!(!gate.settle(&first.tag()), "nothing waited behind it");
        assert_eq!(gate.in_flight(), 0);
        assert!(!gate.settle(&first.tag()), "settling twice does nothing");
    }

    #[test]
    fn keys_do_not_hold_each_other_up() {
        let mut gate = Gate::default();
        gate.offer(entry(0, "k", "1-0"));
        gate.offer(entry(0, "k", "2-0"));
        gate.offer(entry(0, "j", "3-0"));
        assert_eq!(&*next(&mut gate).expect("k's head").id, "1-0");
        assert_eq!(&*next(&mut gate).expect("j, beside k's head").id, "3-0");
        assert!(next(&mut gate).is_none());
    }

    #[test]
    fn a_retried_entry_comes_back_as_its_key_s_head_with_its_attempt() {
        let mut gate = Gate::default();
        gate.offer(entry(0, "k", "1-0"));
        gate.offer(entry(0, "k", "2-0"));
        let first = next(&mut gate).expect("k's head");
        assert!(next(&mut gate).is_none(), "a retry is pending: k waits");
        assert!(gate.again(&first.tag(), 2));
        let again = next(&mut gate).expect("the retried head");
        assert_eq!((&*again.id, again.attempt), ("1-0", 2));
        assert!(gate.settle(&again.tag()));
        assert_eq!(&*next(&mut gate).expect("k's second").id, "2-0");
        assert!(!gate.again(&again.tag(), 3), "settled: nothing comes back");
    }

    #[test]
    fn a_forgotten_entry_takes_what_waits_behind_it_along() {
        let mut gate = Gate::default();
        gate.offer(entry(0, "k", "1-0"));
        gate.offer(entry(0, "k", "2-0"));
        let first = next(&mut gate).expect("k's head");
        gate.forget(&first.tag());
        assert_eq!(gate.in_flight(), 0);
        assert!(next(&mut gate).is_none());
        assert!(
            gate.offer(entry(0, "k", "2-0")),
            "found again, it is k's head now"
        );
    }

    #[test]
    fn an_unconfirmed_partition_waits_and_a_lost_one_is_dropped_and_reported() {
        let mut gate = Gate::default();
        gate.offer(entry(0, "k", "1-0"));
        gate.offer(entry(1, "m", "2-0"));
        gate.offer(entry(2, "n", "3-0"));
        let (none, lost) = gate.hand_out(|p| match p {
            0 => Partition::Unconfirmed,
            _ => Partition::Lost,
        });
        assert!(none.is_none());
        assert_eq!(lost, vec![1, 2]);
        assert_eq!(
            gate.in_flight(),
            1,
            "only the unconfirmed partition's entry stays"
        );
        let (k, lost) = gate.hand_out(held);
        assert_eq!(&*k.expect("k, once confirmed").id, "1-0");
        assert!(lost.is_empty());
    }

    #[test]
    fn what_is_known_of_a_stream_is_what_is_in_flight_of_it() {
        let mut gate = Gate::default();
        gate.offer(entry(0, "k", "1-0"));
        gate.offer(entry(0, "k", "2-0"));
        gate.offer(entry(1, "m", "3-0"));
        let known = gate.known("ns:stream:checkout:0");
        assert_eq!(known, HashSet::from(["1-0".to_owned(), "2-0".to_owned()]));
        assert_eq!(gate.load(0), 2);
        assert_eq!(gate.load(1), 1);
    }

    #[test]
    fn a_tag_names_its_stream_entry_and_matches_only_tags_of_this_bus() {
        let tag = entry(0, "k", "1-0").tag();
        let named = tag.get::<StreamEntry>().expect("a stream entry");
        assert_eq!(
            (&*named.stream, &*named.id),
            ("ns:stream:checkout:0", "1-0")
        );
        assert_eq!(tag, entry(0, "k", "1-0").tag());
        #[derive(Debug, PartialEq, Eq, Hash)]
        struct Other(Arc<str>, Arc<str>);
        assert_ne!(
            tag,
            DeliveryTag::new(Other(named.stream.clone(), named.id.clone()))
        );
    }
}
