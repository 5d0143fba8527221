//! Direct handover: the relay's publish hands an event straight to the subscription of
//! this process and waits until the consumer settled it, instead of writing it to the
//! consumer's queue for the subscription to claim and delete. The outbox row is the
//! durable copy meanwhile: the relay marks it published only once every consumer
//! committed the event (or its retry was queued), so a crash anywhere leaves it
//! unpublished and the relay publishes it again (the inbox skips what was done).
//!
//! An event goes directly only when nothing can come before it: it is the only event of
//! its key in the batch, no row of its key waits in the queue, and the subscription has
//! capacity. Everything else takes the queue, as do the deliveries that were not
//! acknowledged: a retry or a postponement becomes a queued row due after its delay; a
//! delivery the consumer dropped unsettled becomes a row counted as one delivery; one still
//! unsettled after `handover_wait_ms` (at most a quarter of the lease) becomes a row
//! claimed by this instance, renewed like every claim while the consumer works on, so the
//! relay goes on and a slow consumer holds back the producer's other consumers no longer
//! than that.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use super::{Release, State, lock};

/// How the consumer settled a delivery handed over directly.
pub(super) enum Settled {
    Acked,
    Released(Release),
}

/// Where a delivery handed over directly stands.
pub(super) enum Handed {
    /// With the consumer; the publisher waits for the settlement.
    Waiting(oneshot::Sender<Settled>),
    /// The publisher stopped waiting and is writing it to the queue as a claimed row; a
    /// settlement that comes meanwhile waits here.
    Queueing(Option<Settled>),
    /// A claimed row of the queue now: settled as any other.
    Row(i64),
    Settled,
}

/// One delivery handed over directly. It holds one unit of the subscription's capacity
/// until it is settled, becomes a row (whose claim holds it then), or is dropped
/// unsettled (the consumer let it go: the publisher queues it).
pub(super) struct Handover {
    n: u64,
    pub(super) handed: Mutex<Handed>,
    state: Arc<State>,
}

static NEXT: AtomicU64 = AtomicU64::new(1);

impl Handover {
    pub(super) fn new(state: Arc<State>, settled: oneshot::Sender<Settled>) -> Arc<Self> {
        Arc::new(Self {
            n: NEXT.fetch_add(1, Ordering::Relaxed),
            handed: Mutex::new(Handed::Waiting(settled)),
            state,
        })
    }

    /// Records the consumer's settlement: the queue row to settle, if the delivery has
    /// become one.
    pub(super) fn settle(&self, settled: Settled) -> Option<i64> {
        let mut handed = lock(&self.handed);
        match std::mem::replace(&mut *handed, Handed::Settled) {
            Handed::Waiting(publisher) => {
                // Sent under the lock: a publisher that finds it settled finds the value.
                let _ = publisher.send(settled);
                drop(handed);
                self.state.handover_settled();
                None
            }
            Handed::Queueing(_) => {
                *handed = Handed::Queueing(Some(settled));
                None
            }
            Handed::Row(id) => {
                *handed = Handed::Row(id);
                Some(id)
            }
            Handed::Settled => None,
        }
    }
}

impl Drop for Handover {
    fn drop(&mut self) {
        let handed = self.handed.get_mut().unwrap_or_else(|e| e.into_inner());
        if matches!(handed, Handed::Waiting(_) | Handed::Queueing(_)) {
            self.state.handover_settled();
        }
    }
}

/// What the tag of a delivery handed over directly holds.
#[derive(Clone)]
pub(super) struct HandoverTag(pub(super) Arc<Handover>);

impl fmt::Debug for HandoverTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Handover({})", self.0.n)
    }
}

impl PartialEq for HandoverTag {
    fn eq(&self, other: &Self) -> bool {
        self.0.n == other.0.n
    }
}

impl Eq for HandoverTag {}

impl Hash for HandoverTag {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.n.hash(state)
    }
}
