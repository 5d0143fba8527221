//! What the parts of one subscription share: the per-key gate, the partitions held, the
//! acknowledgements to send again, under one lock; and the signals between the reader,
//! the consumer's side of the stream and the acker.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::connection::{Inner, partition_of_stream};
use super::gate::{Entry, Gate, Partition};
use super::leases::Owned;
use crate::bus::DeliveryTag;

/// A subscription's state under its lock.
#[derive(Default)]
pub(super) struct Flow {
    /// What is in flight, and in what order it may be handed out.
    pub(super) gate: Gate,
    /// Partitions this instance holds.
    pub(super) owned: HashMap<u32, Owned>,
    /// Acknowledgements Redis did not take (it was away); sent again by the reader.
    pub(super) unacked: Vec<(Arc<str>, String)>,
    /// This process holds the instance name; only then does it take partitions.
    pub(super) active: bool,
}

impl Flow {
    /// The partition's lease is confirmed now: its entries may be handed out.
    pub(super) fn holds(&self, partition: u32, now: Instant) -> bool {
        self.active
            && self
                .owned
                .get(&partition)
                .is_some_and(|o| o.confirmed_until > now)
    }

    /// Entries of `stream` this instance is already dealing with.
    pub(super) fn known(&self, stream: &str) -> HashSet<String> {
        let mut known = self.gate.known(stream);
        known.extend(
            self.unacked
                .iter()
                .filter(|(s, _)| &**s == stream)
                .map(|(_, id)| id.clone()),
        );
        known
    }

    /// The next entry for the consumer whose partition's lease is confirmed. Entries of a
    /// partition whose lease ran out wait (the next renewal decides); those of a partition
    /// no longer held are dropped with it.
    pub(super) fn hand_out(&mut self, now: Instant) -> Option<Entry> {
        let (active, owned) = (self.active, &self.owned);
        let (entry, lost) = self.gate.hand_out(|partition| match owned.get(&partition) {
            Some(o) if active && o.confirmed_until > now => Partition::Held,
            Some(_) if active => Partition::Unconfirmed,
            _ => Partition::Lost,
        });
        for partition in lost {
            self.owned.remove(&partition);
        }
        entry
    }

    /// Stops using a partition: nothing more of it is read or handed out. Entries of it
    /// the consumer holds stay counted (and their keys held) until it settles them; what
    /// waited behind them is left pending in Redis for the partition's next owner.
    pub(super) fn lose(&mut self, partition: u32) {
        self.owned.remove(&partition);
        self.gate.drop_partition(partition);
    }

    /// Looks through the pending entries of every owned partition again.
    pub(super) fn sweep(&mut self) {
        for owned in self.owned.values_mut().filter(|o| !o.draining) {
            for stream in &owned.streams {
                owned.recovering.entry(stream.clone()).or_insert(None);
            }
        }
    }

    /// A read of these streams may have been lost on its way back: look through their
    /// pending entries before reading anything newer from them.
    pub(super) fn recover_streams(&mut self, streams: &[String]) {
        for stream in streams {
            let Some(partition) = partition_of_stream(stream) else {
                continue;
            };
            if let Some(owned) = self.owned.get_mut(&partition)
                && let Some(s) = owned.streams.iter().find(|s| &***s == stream.as_str())
            {
                owned.recovering.insert(s.clone(), None);
            }
        }
    }
}

pub(super) struct SubState {
    pub(super) inner: Arc<Inner>,
    pub(super) group: &'static str,
    /// This subscription's value in lease keys: the instance name and a nonce of this
    /// process, so two processes under one name never renew or release each other's
    /// leases.
    pub(super) token: String,
    /// Cancelled once the consumer dropped the deliveries stream.
    pub(super) closed: CancellationToken,
    /// An entry became ready for the consumer.
    pub(super) ready: Notify,
    /// Room freed up, or a partition changed hands: the reader may read.
    pub(super) freed: Notify,
    pub(super) max_in_flight: usize,
    pub(super) flow: Mutex<Flow>,
}

impl SubState {
    pub(super) fn flow(&self) -> std::sync::MutexGuard<'_, Flow> {
        self.flow.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn free(&self) -> usize {
        self.max_in_flight
            .saturating_sub(self.flow().gate.in_flight())
    }

    pub(super) fn hand_out(&self) -> Option<Entry> {
        let (entry, lost) = {
            let mut flow = self.flow();
            let before = flow.owned.len();
            let entry = flow.hand_out(Instant::now());
            (entry, flow.owned.len() != before)
        };
        if lost {
            self.freed.notify_one();
        }
        entry
    }

    /// Takes an entry just read or claimed into the flow, if its partition is still held;
    /// one that is not stays pending for the partition's next owner.
    pub(super) fn offer(&self, entry: Entry) {
        let ready = {
            let mut flow = self.flow();
            flow.holds(entry.partition, Instant::now()) && flow.gate.offer(entry)
        };
        if ready {
            self.ready.notify_one();
        }
    }

    /// A delivery is done: release the next entry of its key, if any. Never waits.
    pub(super) fn settle(&self, tag: &DeliveryTag) {
        if self.flow().gate.settle(tag) {
            self.ready.notify_one();
        }
        self.freed.notify_one();
    }

    pub(super) fn forget(&self, tag: &DeliveryTag) {
        self.flow().gate.forget(tag);
        self.freed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use super::super::gate::tests::entry;
    use super::*;

    fn flow_owning(partitions: &[u32], until: Instant) -> Flow {
        let mut flow = Flow {
            active: true,
            ..Flow::default()
        };
        for p in partitions {
            flow.owned.insert(
                *p,
                Owned {
                    confirmed_until: until,
                    streams: Vec::new(),
                    recovering: BTreeMap::new(),
                    draining: false,
                    paused: false,
                },
            );
        }
        flow
    }

    #[test]
    fn a_lost_partition_drops_what_waits_and_keeps_the_key_held_by_what_is_handed_out() {
        let now = Instant::now();
        let mut flow = flow_owning(&[0, 1], now + Duration::from_secs(60));
        flow.gate.offer(entry(0, "k", "1-0"));
        flow.gate.offer(entry(0, "k", "2-0"));
        flow.gate.offer(entry(0, "j", "3-0"));
        flow.gate.offer(entry(1, "m", "4-0"));
        let handed = flow.hand_out(now).expect("k's head");
        flow.lose(0);
        assert_eq!(
            flow.gate.in_flight(),
            2,
            "k's handed-out head and m stay counted; k's second and j are dropped"
        );
        assert_eq!(&*flow.hand_out(now).expect("m").id, "4-0");
        // The partition comes back and k's second entry is found again: it still waits
        // behind the head the consumer holds.
        flow.owned
            .extend(flow_owning(&[0], now + Duration::from_secs(60)).owned);
        assert!(!flow.gate.offer(entry(0, "k", "2-0")));
        assert!(flow.gate.settle(&handed.tag()));
        assert_eq!(&*flow.hand_out(now).expect("k's second").id, "2-0");
    }

    #[test]
    fn entries_of_a_partition_whose_lease_ran_out_wait_and_others_go_on() {
        let now = Instant::now();
        let mut flow = flow_owning(&[0], now);
        flow.owned
            .extend(flow_owning(&[1], now + Duration::from_secs(60)).owned);
        flow.gate.offer(entry(0, "k", "1-0"));
        flow.gate.offer(entry(1, "m", "2-0"));
        assert_eq!(&*flow.hand_out(now).expect("m").id, "2-0");
        assert!(flow.hand_out(now).is_none(), "k waits for a renewal");
        assert_eq!(flow.gate.in_flight(), 2, "k is not dropped");
        flow.owned.get_mut(&0).expect("owned").confirmed_until = now + Duration::from_secs(60);
        assert_eq!(&*flow.hand_out(now).expect("k").id, "1-0");
    }
}
