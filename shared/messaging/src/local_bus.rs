//! The in-process bus: for modules that run in the same process. It is still durable
//! (an in-memory transport would lose messages on a crash). Publishing hands each event
//! that nothing can come before to the consuming module's subscription in this process and
//! returns once the consumer settled it ([`handover`]), so the outbox row, marked only
//! then, is its durable copy; every other event is written into the `bus_queue` table of
//! the subscribed module, in that module's own database, before the relay marks the
//! outbox row published; a subscription claims queued rows under a lease, and only an
//! acknowledgement deletes them. A crash at any point leaves every event either in an
//! outbox or in a queue.
//!
//! Per-key order: a row is not handed out while an earlier row with the same ordering key
//! is still in the queue (in flight, or waiting for its retry). Several instances of a
//! module (replicas sharing a PostgreSQL database) share a queue: claims skip rows another
//! instance holds, and a lease that is not renewed lets another instance take the rows of
//! a dead one.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering, fence};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use sea_orm::sea_query::ArrayType;
use sea_orm::{ConnectionTrait, DbBackend, Value};
use tokio::sync::{Notify, Semaphore, mpsc, oneshot};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;

mod handover;

use handover::{Handed, Handover, HandoverTag, Settled};

use crate::bus::{
    Acker, BusError, Delivery, DeliveryTag, EventBus, Outgoing, SubscriberSpec, Subscription,
};
use crate::instance_name::{InstanceName, NameState};
use crate::settings::MessagingSettings;
use store::{ModuleDb, Rows, execute, insert_rows, now_ms, placeholders, query};

struct Queue {
    db: ModuleDb,
    wake: Arc<Notify>,
    /// This process's open subscription of the module, where `publish` hands events over
    /// directly (see [`handover`]).
    live: Mutex<Option<Live>>,
}

/// Weak: the subscription's state (its instance name among it) lives as long as the
/// subscription, not as long as the bus.
#[derive(Clone)]
struct Live {
    state: Weak<State>,
    deliveries: mpsc::WeakSender<Delivery>,
}

impl Queue {
    /// The subscription to hand events to: open, and under a name this process holds.
    fn live(&self) -> Option<(Arc<State>, mpsc::Sender<Delivery>)> {
        let live = lock(&self.live).clone()?;
        let state = live.state.upgrade()?;
        let sender = live.deliveries.upgrade()?;
        (state.name.state.owned() && !sender.is_closed()).then_some((state, sender))
    }
}

/// A queue row to write for an event that was handed over and came back.
struct Later<'a> {
    event: &'a Outgoing,
    visible_at: i64,
    deliveries: i32,
    error: Option<String>,
}

pub struct LocalBus {
    queues: HashMap<&'static str, Queue>,
    instance: String,
    settings: MessagingSettings,
    /// Whether this process holds its instance name, per subscribed module.
    names: Mutex<Vec<(&'static str, Arc<NameState>)>>,
}

impl LocalBus {
    /// `instance` names this process: it holds the claims of its subscriptions. A restarted
    /// process with the same name takes its claims back at once.
    pub fn new(instance: impl Into<String>, settings: MessagingSettings) -> Self {
        Self {
            queues: HashMap::new(),
            instance: instance.into(),
            settings,
            names: Mutex::new(Vec::new()),
        }
    }

    /// Registers a module that consumes events in this process.
    pub fn add_consumer(&mut self, db: ModuleDb) {
        self.queues.insert(
            db.module(),
            Queue {
                db,
                wake: Arc::new(Notify::new()),
                live: Mutex::new(None),
            },
        );
    }

    /// Checks that every module consuming what `producers` publish runs in this process.
    pub fn check_routes(&self, producers: &[&str]) -> Result<(), BusError> {
        for s in contracts::SUBSCRIPTIONS {
            if producers.contains(&contracts::source_of(s.event_type))
                && !self.queues.contains_key(s.consumer)
            {
                return Err(BusError::NoRoute {
                    event_type: s.event_type.to_owned(),
                    consumer: s.consumer.to_owned(),
                });
            }
        }
        Ok(())
    }

    /// Hands `events` (one consumer's share of a batch, in batch order) to the
    /// subscription of this process where nothing can come before them, and queues the
    /// rest; returns once every one is settled or queued.
    async fn deliver(&self, queue: &Queue, events: Vec<&Outgoing>) -> Result<(), BusError> {
        let live = if self.settings.direct_delivery {
            queue.live()
        } else {
            None
        };
        let Some((state, sender)) = live else {
            return self.enqueue(queue, &events).await;
        };
        let keys: Vec<String> = events.iter().map(|e| ordering_key(e)).collect();
        let mut per_key: HashMap<&str, usize> = HashMap::new();
        for key in &keys {
            *per_key.entry(key).or_default() += 1;
        }
        // Keys with one event here: those may go directly unless their key already waits
        // in the queue.
        let candidates: Vec<String> = keys
            .iter()
            .filter(|key| per_key[key.as_str()] == 1)
            .cloned()
            .collect();
        let queued = if candidates.is_empty() {
            HashSet::new()
        } else {
            keys_in_queue(&queue.db, &candidates).await?
        };
        let mut direct = Vec::new();
        let mut rest = Vec::new();
        for (e, key) in events.into_iter().zip(&keys) {
            let free = !e.handed_before
                && per_key[key.as_str()] == 1
                && !queued.contains(key)
                && state.permits.try_acquire().map(|p| p.forget()).is_ok();
            if free {
                direct.push(e);
            } else {
                rest.push(e);
            }
        }
        if !rest.is_empty() {
            self.enqueue(queue, &rest).await?;
        }
        if direct.is_empty() {
            return Ok(());
        }
        self.hand_over(queue, &state, sender, direct).await
    }

    /// Hands `events` to the subscription (their capacity already taken) and waits for
    /// the consumer, at most `handover_wait_ms`; see [`handover`] for what becomes of
    /// the ones that come back.
    async fn hand_over(
        &self,
        queue: &Queue,
        state: &Arc<State>,
        sender: mpsc::Sender<Delivery>,
        events: Vec<&Outgoing>,
    ) -> Result<(), BusError> {
        let deadline = Instant::now() + self.settings.handover_wait();
        let now = now_ms();
        let mut later = Vec::new();
        let mut waiting = Vec::with_capacity(events.len());
        for e in events {
            let (settled, settlement) = oneshot::channel();
            state.handovers.fetch_add(1, Ordering::Relaxed);
            let handover = Handover::new(state.clone(), settled);
            let weak = Arc::downgrade(&handover);
            let delivery = Delivery {
                tag: DeliveryTag::new(HandoverTag(handover)),
                raw: Arc::from(e.envelope.as_bytes()),
                attempt: 1,
            };
            // The subscription holds no more than its capacity, which was taken for this
            // one: the send fails only if the subscription just closed (its handover,
            // dropped, gave the capacity back).
            if sender.try_send(delivery).is_err() {
                later.push(Later {
                    event: e,
                    visible_at: now,
                    deliveries: 0,
                    error: None,
                });
                continue;
            }
            waiting.push((e, weak, settlement));
        }
        drop(sender);
        let mut late: Vec<(&Outgoing, Weak<Handover>, oneshot::Receiver<Settled>)> = Vec::new();
        for (e, weak, mut settlement) in waiting {
            match tokio::time::timeout_at(deadline, &mut settlement).await {
                Ok(outcome) => later.extend(came_back(e, outcome.ok())),
                Err(_) => late.push((e, weak, settlement)),
            }
        }
        let mut claimed = Vec::new();
        for (e, weak, mut settlement) in late {
            if let Some(handover) = weak.upgrade() {
                let mut handed = lock(&handover.handed);
                if matches!(*handed, Handed::Waiting(_)) {
                    *handed = Handed::Queueing(None);
                    drop(handed);
                    claimed.push((e, handover));
                    continue;
                }
            }
            // Settled (or dropped) since the deadline.
            later.extend(came_back(e, settlement.try_recv().ok()));
        }
        if !claimed.is_empty() {
            self.queue_claimed(queue, state, claimed).await?;
        }
        if !later.is_empty() {
            write_later(&queue.db, &later, None).await?;
            queue.wake.notify_one();
        }
        Ok(())
    }

    /// Writes deliveries the consumer is still working on to the queue as rows claimed by
    /// this instance (renewed while it works), so that the relay can go on.
    async fn queue_claimed(
        &self,
        queue: &Queue,
        state: &Arc<State>,
        claimed: Vec<(&Outgoing, Arc<Handover>)>,
    ) -> Result<(), BusError> {
        let now = now_ms();
        // Counted as delivered once, as a claim of this instance would be.
        let rows: Vec<Later<'_>> = claimed
            .iter()
            .map(|(event, _)| Later {
                event,
                visible_at: now,
                deliveries: 1,
                error: None,
            })
            .collect();
        let claim = (self.instance.as_str(), self.settings.lease_ms);
        let written = write_later(&queue.db, &rows, Some(claim)).await;
        let ids = match written {
            Ok(ids) => ids,
            Err(e) => {
                // The relay publishes the batch again; a settlement that comes meanwhile
                // is not needed.
                for (_, handover) in &claimed {
                    *lock(&handover.handed) = Handed::Settled;
                    state.handover_settled();
                }
                return Err(e.into());
            }
        };
        let mut settled_rows = Vec::new();
        for ((_, handover), id) in claimed.iter().zip(ids) {
            let mut handed = lock(&handover.handed);
            let Handed::Queueing(settled) = std::mem::replace(&mut *handed, Handed::Settled) else {
                continue;
            };
            match (id, settled) {
                (Some(id), None) => {
                    *handed = Handed::Row(id);
                    drop(handed);
                    // Its capacity now held by the claim, renewed like every other.
                    lock(&state.in_flight).insert(id);
                    state.handovers.fetch_sub(1, Ordering::Relaxed);
                }
                (Some(id), Some(settled)) => {
                    drop(handed);
                    settled_rows.push((id, settled));
                    state.handover_settled();
                }
                // Already queued under its event id: that row delivers it.
                (None, _) => {
                    drop(handed);
                    state.handover_settled();
                }
            }
        }
        for (id, settled) in settled_rows {
            match settled {
                Settled::Acked => delete_rows(&queue.db, &[id]).await?,
                Settled::Released(release) => release.apply(state, id).await?,
            }
        }
        Ok(())
    }

    /// Publishes `batch` to the consumers `route(producer, consumer)` picks (the hybrid
    /// bus carries the others over Redis).
    pub(crate) async fn publish_where(
        &self,
        batch: &[Outgoing],
        route: impl Fn(&str, &str) -> bool,
    ) -> Result<(), BusError> {
        // Events keep their order within each consumer's queue: rows are inserted in batch
        // order and queue ids increase.
        let mut routes: BTreeMap<&str, Vec<&Outgoing>> = BTreeMap::new();
        for event in batch {
            for consumer in contracts::consumers_of(&event.event_type) {
                if route(&event.source, consumer) {
                    routes.entry(consumer).or_default().push(event);
                }
            }
        }
        let mut deliveries = Vec::with_capacity(routes.len());
        for (consumer, events) in routes {
            let queue = self.queues.get(consumer).ok_or_else(|| BusError::NoRoute {
                event_type: events[0].event_type.clone(),
                consumer: consumer.to_owned(),
            })?;
            deliveries.push(async move {
                self.deliver(queue, events).await.map_err(|e| {
                    BusError::Other(
                        anyhow::anyhow!("{e}").context(format!("delivering to {consumer}")),
                    )
                })
            });
        }
        // Every consumer at once: each waits for its own subscription.
        for delivered in futures::future::join_all(deliveries).await {
            delivered?;
        }
        Ok(())
    }

    async fn enqueue(&self, queue: &Queue, events: &[&Outgoing]) -> Result<(), BusError> {
        let now = now_ms();
        // Rows in batch order, so queue ids follow it (`store::insert_rows`: one statement
        // of one shape on PostgreSQL); an event queued already is skipped as the conflict
        // it is.
        let rows = Rows::new()
            .column(
                "event_id",
                ArrayType::Uuid,
                events.iter().map(|e| Value::from(e.event_id)),
            )
            .column(
                "event_type",
                ArrayType::String,
                events.iter().map(|e| Value::from(e.event_type.clone())),
            )
            .column(
                "ordering_key",
                ArrayType::String,
                events.iter().map(|e| Value::from(ordering_key(e))),
            )
            .column(
                "envelope",
                ArrayType::String,
                events.iter().map(|e| Value::from(e.envelope.to_string())),
            )
            .column(
                "visible_at",
                ArrayType::BigInt,
                events.iter().map(|_| Value::from(now)),
            )
            .column(
                "enqueued_at",
                ArrayType::BigInt,
                events.iter().map(|_| Value::from(now)),
            )
            // A delivery an earlier, cut-short publish may have made counts.
            .column(
                "deliveries",
                ArrayType::Int,
                events
                    .iter()
                    .map(|e| Value::from(i32::from(e.handed_before))),
            );
        // One transaction, however many statements SQLite takes for the rows.
        let tx = queue.db.begin().await?;
        insert_rows(&tx, "bus_queue", rows, "ON CONFLICT (event_id) DO NOTHING").await?;
        tx.commit().await?;
        queue.wake.notify_one();
        Ok(())
    }
}

#[async_trait]
impl EventBus for LocalBus {
    fn kind(&self) -> &'static str {
        "local"
    }

    async fn publish(&self, batch: &[Outgoing]) -> Result<(), BusError> {
        self.publish_where(batch, |_, _| true).await
    }

    fn hands_over_directly(&self) -> bool {
        self.settings.direct_delivery
    }

    async fn subscribe(&self, spec: SubscriberSpec) -> Result<Subscription, BusError> {
        let queue = self.queues.get(spec.module).ok_or_else(|| {
            BusError::Other(anyhow::anyhow!(
                "module {} has no queue on this bus",
                spec.module
            ))
        })?;
        let every = Duration::from_millis(self.settings.lease_ms / 3);
        let name = InstanceName::take(
            &queue.db,
            &self.instance,
            every,
            every.min(Duration::from_millis(500)),
        )
        .await?;
        lock(&self.names).push((spec.module, name.state.clone()));
        let state = Arc::new(State {
            name,
            db: queue.db.clone(),
            instance: self.instance.clone(),
            wake: queue.wake.clone(),
            in_flight: Mutex::new(HashSet::new()),
            unacked: Mutex::new(HashSet::new()),
            unreleased: Mutex::new(HashMap::new()),
            handovers: AtomicU64::new(0),
            starved: AtomicBool::new(false),
            permits: Semaphore::new(spec.max_in_flight),
            settings: self.settings.clone(),
        });
        let (tx, rx) = mpsc::channel(spec.max_in_flight.max(1));
        *lock(&queue.live) = Some(Live {
            state: Arc::downgrade(&state),
            deliveries: tx.downgrade(),
        });
        let reader = tokio::spawn(read_queue(state.clone(), tx));
        Ok(Subscription {
            deliveries: Box::pin(ReceiverStream::new(rx)),
            acker: Arc::new(LocalAcker(state)),
            reader: Some(tokio_util::task::AbortOnDropHandle::new(reader)),
        })
    }

    /// The in-process bus has no dependency of its own (its queues live in the module
    /// databases, which readiness checks already); it is not ready while another live
    /// process holds its instance name.
    async fn check(&self) -> Result<(), BusError> {
        let names = lock(&self.names);
        match names.iter().find(|(_, name)| name.duplicate()) {
            Some((module, _)) => Err(BusError::Other(anyhow::anyhow!(
                "another live process consumes {module} under bus.instance {}",
                self.instance
            ))),
            None => Ok(()),
        }
    }
}

struct State {
    /// The instance name, held while the subscription lives: claims only while owned.
    name: InstanceName,
    db: ModuleDb,
    instance: String,
    wake: Arc<Notify>,
    /// Rows handed to the consumer and not settled yet: the only claims renewed.
    in_flight: Mutex<HashSet<i64>>,
    /// Rows the consumer finished but whose delete failed: deleted again on the next pass.
    unacked: Mutex<HashSet<i64>>,
    /// Rows to be handed back (a retry or a postponement) whose update failed, typically
    /// while the database was out of reach: handed back again on the next pass, so they
    /// come back as soon as the database does, not when their claim lapses.
    unreleased: Mutex<HashMap<i64, Release>>,
    /// Deliveries handed over directly and not settled yet.
    handovers: AtomicU64,
    /// Set while the reader finds no capacity to claim with: only then does a delivery
    /// handed over directly and settled give the reader anything to do (its capacity).
    starved: AtomicBool,
    permits: Semaphore,
    settings: MessagingSettings,
}

impl State {
    /// Gives back the capacity of `ids`, whatever became of them in the database.
    fn settle(&self, ids: &[i64]) {
        let mut in_flight = lock(&self.in_flight);
        let settled = ids.iter().filter(|id| in_flight.remove(id)).count();
        drop(in_flight);
        self.permits.add_permits(settled);
        // The reader may be waiting for capacity, and rows of the same keys may be free
        // to go now.
        self.wake.notify_one();
    }

    /// Gives back the capacity of a delivery handed over directly. The reader is woken
    /// only if it waits for capacity: a delivery that never was a row frees no row of its
    /// key, and waking the reader after every settled batch made it claim an empty queue
    /// (a transaction of four round trips) as often as the consumer committed.
    fn handover_settled(&self) {
        self.handovers.fetch_sub(1, Ordering::Relaxed);
        self.permits.add_permits(1);
        // Pairs with the fence in `read_queue`: either the reader sees this capacity, or
        // this sees the reader starved and wakes it.
        fence(Ordering::SeqCst);
        if self.starved.load(Ordering::SeqCst) {
            self.wake.notify_one();
        }
    }

    fn held(&self) -> Vec<i64> {
        let mut ids: Vec<i64> = lock(&self.in_flight).iter().copied().collect();
        ids.extend(lock(&self.unacked).iter().copied());
        ids.extend(lock(&self.unreleased).keys().copied());
        ids
    }
}

/// How a claimed row is handed back: visible again at `visible_at` (epoch ms), with the
/// error that sent it back, and `uncount` taken off its delivery count.
#[derive(Clone)]
struct Release {
    visible_at: i64,
    error: String,
    uncount: i32,
}

impl Release {
    /// Hands row `id` back, if this instance still holds it (a claim that lapsed may be
    /// another instance's by now).
    async fn apply(&self, state: &State, id: i64) -> Result<(), sea_orm::DbErr> {
        execute(
            state.db.writes(),
            "UPDATE bus_queue SET visible_at = $1, locked_by = NULL, locked_until = NULL, last_error = $2, \
             deliveries = deliveries - $3 WHERE id = $4 AND locked_by = $5",
            vec![
                self.visible_at.into(),
                self.error.clone().into(),
                self.uncount.into(),
                id.into(),
                state.instance.clone().into(),
            ],
        )
        .await?;
        Ok(())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Frees every claim made under this instance's name.
async fn take_back(state: &State) -> Result<(), sea_orm::DbErr> {
    execute(
        state.db.writes(),
        "UPDATE bus_queue SET locked_by = NULL, locked_until = NULL WHERE locked_by = $1",
        vec![state.instance.clone().into()],
    )
    .await
    .map(|_| ())
}

/// Claims visible rows for this instance and hands them out, never more than the free
/// capacity: capacity is reserved before the claim, so the reader never waits for
/// capacity it cannot get. Every pass also renews the claims of what is in flight, settles
/// again the rows whose acknowledgement or hand-back failed, and frees the rows of claims
/// that lapsed (not right after the database kept the reader waiting: see [`Stalls`]).
async fn read_queue(state: Arc<State>, tx: mpsc::Sender<Delivery>) {
    let module = state.db.module();
    let poll = Duration::from_millis(state.settings.poll_interval_ms);
    let renew_every = Duration::from_millis(state.settings.lease_ms / 3);
    let mut last_renewal = Instant::now();
    let mut last_reclaim = Instant::now() - renew_every;
    let mut stalls = Stalls::new(renew_every);
    let mut failures = 0_u32;
    let mut taken_back = false;
    loop {
        if tx.is_closed() {
            break;
        }
        let pass = Instant::now();
        if !state.name.state.owned() {
            // Another live process under this name (or the name's lock was lost with the
            // database): claim and renew nothing until the name is ours again.
            tokio::select! {
                _ = tx.closed() => break,
                _ = tokio::time::sleep(poll.max(Duration::from_millis(100))) => {}
            }
            continue;
        }
        if !taken_back {
            // The name is ours, and this subscription has claimed nothing yet: whatever is
            // claimed under the name was claimed by a process before this one, whose
            // deliveries were cut short. They come back now, not when their lease runs
            // out. This waits for the name, not for the subscription's start: a crashed
            // predecessor's name is freed only once the server or the kernel saw it die,
            // which may be after this process started.
            match take_back(&state).await {
                Ok(()) => taken_back = true,
                Err(e) => {
                    tracing::warn!(module, error = %format!("{e:#}"), "taking back this instance's earlier claims failed; retrying");
                    tokio::select! {
                        _ = tx.closed() => break,
                        _ = tokio::time::sleep(poll) => {}
                    }
                    continue;
                }
            }
        }
        if last_renewal.elapsed() >= renew_every {
            match renew(&state).await {
                Ok(()) => last_renewal = Instant::now(),
                Err(e) => {
                    tracing::warn!(module, error = %format!("{e:#}"), "renewing claims failed")
                }
            }
        }
        if has_pending(&state)
            && let Err(e) = settle_pending(&state).await
        {
            tracing::debug!(module, error = %format!("{e:#}"), "settling deliveries again failed; retrying");
        }
        stalls.note(pass, Instant::now());
        let may_wait = (last_reclaim.elapsed() >= renew_every)
            .then(|| stalls.may_reclaim(Instant::now(), module))
            .flatten();
        if let Some(may_wait) = may_wait {
            match reclaim(&state, may_wait).await {
                Ok(Reclaim::Done) => last_reclaim = Instant::now(),
                // The pass's stall is noted at its end.
                Ok(Reclaim::WaitedForTheWriter) => {}
                Err(e) => {
                    tracing::warn!(module, error = %format!("{e:#}"), "freeing lapsed claims failed")
                }
            }
        }
        // Starved until capacity is found: a settlement that gives capacity back after
        // this looked wakes the reader (see `State::handover_settled`).
        state.starved.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        let free = state.permits.available_permits();
        let want = free.min(state.settings.consumer_batch * 2);
        let reserved = match state.permits.try_acquire_many(want as u32) {
            Ok(permits) if want > 0 => {
                permits.forget();
                want
            }
            _ => 0,
        };
        if reserved > 0 {
            state.starved.store(false, Ordering::SeqCst);
        }
        let claimed = if reserved == 0 {
            Ok(Vec::new())
        } else {
            claim(&state, reserved).await
        };
        stalls.note(pass, Instant::now());
        match claimed {
            Ok(rows) if !rows.is_empty() => {
                failures = 0;
                let drained = rows.len() < reserved;
                state.permits.add_permits(reserved - rows.len());
                lock(&state.in_flight).extend(rows.iter().filter_map(|d| row_id(&d.tag)));
                // The channel holds `max_in_flight` and no more than that is in flight:
                // these sends never wait for the consumer.
                for delivery in rows {
                    if tx.send(delivery).await.is_err() {
                        break;
                    }
                }
                if drained {
                    // The claim took every row it could: claiming again at once would
                    // find nothing (under a steady trickle, half of all claims did).
                    // What can make more rows claimable wakes this reader: an enqueue,
                    // a settled delivery (the next row of its key), the poll (a retry
                    // come due). A wake sent during the claim is kept, not lost.
                    tokio::select! {
                        _ = tx.closed() => break,
                        _ = state.wake.notified() => {}
                        _ = tokio::time::sleep(poll.min(renew_every)) => {}
                    }
                }
            }
            Ok(_) => {
                failures = 0;
                state.permits.add_permits(reserved);
                tokio::select! {
                    _ = tx.closed() => break,
                    _ = state.wake.notified() => {}
                    _ = tokio::time::sleep(poll.min(renew_every)) => {}
                }
            }
            Err(e) => {
                state.permits.add_permits(reserved);
                failures += 1;
                let delay = state.settings.backoff(failures);
                tracing::warn!(module, error = %format!("{e:#}"), delay_ms = delay.as_millis() as u64, "reading the queue failed; retrying");
                tokio::select! {
                    _ = tx.closed() => break,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
    // Hand back what this instance still holds (deliveries the consumer never took), so
    // another instance need not wait for the claims to lapse.
    if let Err(e) = release_all(&state).await {
        tracing::warn!(module, error = %format!("{e:#}"), "handing back claims failed; they come back when they lapse");
    }
    tracing::debug!(module, "subscription closed");
}

/// Whether queued row `q` is the first of its key, on PostgreSQL: `min(p.id + 0)`, which
/// only the `(ordering_key, id + 0)` index orders, so it is one probe of that index whatever
/// the planner's statistics say (`min(p.id)` lets the planner walk the primary key instead,
/// which it does when its statistics were taken on an empty queue; see `KeyHeadIndex`).
/// The claim and the watchdog's count share it.
macro_rules! first_of_key_postgres {
    () => {
        "q.id = (SELECT min(p.id + 0) FROM bus_queue p WHERE p.ordering_key = q.ordering_key)"
    };
}

/// [`first_of_key_postgres`] on SQLite, whose planner answers `min(p.id)` from the
/// `(ordering_key, id)` index.
macro_rules! first_of_key_sqlite {
    () => {
        "q.id = (SELECT min(p.id) FROM bus_queue p WHERE p.ordering_key = q.ordering_key)"
    };
}

/// The claim, on PostgreSQL. The rows to take are chosen in a materialized CTE, which
/// runs once (an `UPDATE … WHERE id IN (SELECT … LIMIT n)` may run its sub-select more
/// than once and take more than `n` rows). It walks the unclaimed rows in id order on
/// their partial index and stops after `n`; a row goes only if it is the first queued row
/// of its key, checked by one probe of the `(ordering_key, id + 0)` index per row
/// ([`first_of_key_postgres`]): the cost follows what is claimed, not the backlog.
const CLAIM_POSTGRES: &str = concat!(
    "WITH c AS MATERIALIZED ( \
       SELECT q.id FROM bus_queue q \
       WHERE q.locked_by IS NULL AND q.visible_at <= $3 AND ",
    first_of_key_postgres!(),
    " ORDER BY q.id LIMIT $4 FOR UPDATE SKIP LOCKED) \
     UPDATE bus_queue b SET locked_by = $1, locked_until = $2, deliveries = b.deliveries + 1 \
     FROM c WHERE b.id = c.id \
     RETURNING b.id, b.envelope, b.deliveries"
);

/// Run before the claim on PostgreSQL, in its transaction.
pub const CLAIM_PLAN_POSTGRES: &str = "SET LOCAL enable_sort = off; SET LOCAL enable_bitmapscan = off; SET LOCAL enable_seqscan = off";

/// The claim, on SQLite, where a write transaction excludes every other one.
const CLAIM_SQLITE: &str = concat!(
    "UPDATE bus_queue SET locked_by = $1, locked_until = $2, deliveries = deliveries + 1 \
     WHERE id IN ( \
       SELECT q.id FROM bus_queue q \
       WHERE q.locked_by IS NULL AND q.visible_at <= $3 AND ",
    first_of_key_sqlite!(),
    " ORDER BY q.id LIMIT $4) \
     RETURNING id, envelope, deliveries"
);

/// The watchdog's count of deliverable rows (due, and first of their key, as the claim
/// finds them), on each backend; capped, so counting a huge backlog stays bounded.
const BACKLOG_POSTGRES: &str = concat!(
    "SELECT COUNT(*) AS n FROM (SELECT 1 FROM bus_queue q WHERE q.visible_at <= $1 AND ",
    first_of_key_postgres!(),
    " LIMIT 100000) AS deliverable"
);
const BACKLOG_SQLITE: &str = concat!(
    "SELECT COUNT(*) AS n FROM (SELECT 1 FROM bus_queue q WHERE q.visible_at <= $1 AND ",
    first_of_key_sqlite!(),
    " LIMIT 100000) AS deliverable"
);

/// The claim statement for `backend`: `$1` instance, `$2` lease end, `$3` now (epoch
/// ms), `$4` how many rows at most. On PostgreSQL it runs after [`CLAIM_PLAN_POSTGRES`] in
/// the same transaction. Public for the tests that check its cost and bound.
#[doc(hidden)]
pub fn claim_statement(backend: DbBackend) -> &'static str {
    match backend {
        DbBackend::Sqlite => CLAIM_SQLITE,
        _ => CLAIM_POSTGRES,
    }
}

async fn claim(state: &State, limit: usize) -> anyhow::Result<Vec<Delivery>> {
    let sql = claim_statement(state.db.backend());
    let tx = state.db.begin().await.context("failed to begin")?;
    // Once the connection is ours: taken before, a claim that waited behind a long write
    // transaction would start with part of its lease gone.
    let now = now_ms();
    if state.db.backend() == DbBackend::Postgres {
        // Without statistics (a queue that grew fast) the planner expects one matching
        // row, sorts every unclaimed row and probes each one's key: linear in the backlog.
        // Walking the partial index in order and stopping at the limit is right for any
        // backlog, so it is the only plan left to choose.
        tx.execute_unprepared(CLAIM_PLAN_POSTGRES)
            .await
            .context("failed to set the claim's plan")?;
    }
    let rows = query(
        &tx,
        sql,
        vec![
            state.instance.clone().into(),
            (now + state.settings.lease_ms as i64).into(),
            now.into(),
            (limit as i64).into(),
        ],
    )
    .await
    .context("failed to claim queued events")?;
    let mut deliveries = Vec::with_capacity(rows.len());
    for row in rows {
        let id: i64 = row.try_get("", "id")?;
        let envelope: String = row.try_get("", "envelope")?;
        let deliveries_so_far: i32 = row.try_get("", "deliveries")?;
        deliveries.push((
            id,
            Delivery {
                tag: DeliveryTag::new(QueueRow(id)),
                raw: Arc::from(envelope.into_bytes()),
                attempt: deliveries_so_far.max(1) as u32,
            },
        ));
    }
    deliveries.sort_by_key(|(id, _)| *id);
    if deliveries.len() > limit {
        // Never hand out more than the capacity reserved for this claim: put the surplus
        // back, in the same transaction.
        let surplus: Vec<i64> = deliveries.drain(limit..).map(|(id, _)| id).collect();
        tracing::error!(
            module = state.db.module(),
            asked = limit,
            surplus = surplus.len(),
            "a claim returned more rows than it asked for; handing the surplus back"
        );
        for chunk in surplus.chunks(ID_CHUNK) {
            let ids = ids_in(chunk);
            execute(
                &tx,
                &format!(
                    "UPDATE bus_queue SET locked_by = NULL, locked_until = NULL, deliveries = deliveries - 1 WHERE id IN ({})",
                    placeholders(1, ids.len())
                ),
                ids,
            )
            .await
            .context("failed to hand back a claim's surplus")?;
        }
    }
    tx.commit().await.context("failed to commit the claim")?;
    Ok(deliveries.into_iter().map(|(_, d)| d).collect())
}

/// Ids per statement, well under both backends' limits on bound values.
const ID_CHUNK: usize = 500;

/// The values of an `IN` list of queue ids, padded (see [`store::padded`]).
fn ids_in(ids: &[i64]) -> Vec<Value> {
    store::padded(ids.iter().map(|id| Value::from(*id)).collect())
}

/// Extends the claims of what is in flight (and of finished rows not yet deleted), and
/// nothing else: a row this instance no longer tracks lets its claim lapse.
async fn renew(state: &State) -> anyhow::Result<()> {
    let ids = state.held();
    if ids.is_empty() {
        return Ok(());
    }
    let tx = state.db.begin().await.context("failed to begin")?;
    // The new deadline is taken once the connection is ours: taken before, a renewal that
    // waited behind a write transaction longer than the lease (on SQLite every writer
    // waits for the one that holds the file) would set a deadline already past, and
    // another instance would free the claims as lapsed the moment the file was free.
    let until = now_ms() + state.settings.lease_ms as i64;
    for chunk in ids.chunks(ID_CHUNK) {
        let ids = ids_in(chunk);
        let sql = format!(
            "UPDATE bus_queue SET locked_until = $1 WHERE locked_by = $2 AND id IN ({})",
            placeholders(3, ids.len())
        );
        let mut values: Vec<Value> = vec![until.into(), state.instance.clone().into()];
        values.extend(ids);
        execute(&tx, &sql, values)
            .await
            .context("failed to renew claims")?;
    }
    tx.commit().await.context("failed to commit the renewal")?;
    Ok(())
}

/// Deletes again the rows whose acknowledgement failed and hands back again the rows
/// whose release failed. Run on every pass while there are any: an unsettled row holds
/// back the later rows of its key, so it must go as soon as the database answers again.
async fn settle_pending(state: &State) -> anyhow::Result<()> {
    let unacked: Vec<i64> = lock(&state.unacked).iter().copied().collect();
    for chunk in unacked.chunks(ID_CHUNK) {
        delete_rows(&state.db, chunk).await?;
        let mut set = lock(&state.unacked);
        for id in chunk {
            set.remove(id);
        }
    }
    let unreleased: Vec<(i64, Release)> = lock(&state.unreleased)
        .iter()
        .map(|(id, release)| (*id, release.clone()))
        .collect();
    for (id, release) in &unreleased {
        release
            .apply(state, *id)
            .await
            .context("failed to hand back deliveries")?;
        lock(&state.unreleased).remove(id);
    }
    if !unacked.is_empty() || !unreleased.is_empty() {
        tracing::info!(
            module = state.db.module(),
            deleted = unacked.len(),
            handed_back = unreleased.len(),
            "deliveries whose settlement had failed are settled"
        );
        state.wake.notify_one();
    }
    Ok(())
}

fn has_pending(state: &State) -> bool {
    !lock(&state.unacked).is_empty() || !lock(&state.unreleased).is_empty()
}

/// The reader's record of its last stall: a pass whose database work took more than
/// `limit` (half the renewal period) was waiting for the database, most likely for a
/// write transaction that held it (on SQLite, one writer holds the whole file). While the
/// database is held, no instance can renew its claims, so a claim that lapsed meanwhile
/// says nothing about its holder: lapsed claims are freed only once a full renewal period
/// has passed since the last stall, which gives every live holder its turn to renew first.
/// Stalls that keep coming defer the freeing for a lease at most, then it runs anyway (a
/// dead instance's rows must not wait for as long as the database is busy).
struct Stalls {
    limit: Duration,
    every: Duration,
    last: Option<Instant>,
    deferred_since: Option<Instant>,
}

impl Stalls {
    fn new(renew_every: Duration) -> Self {
        Stalls {
            limit: renew_every / 2,
            every: renew_every,
            last: None,
            deferred_since: None,
        }
    }

    /// Notes a stall if the work begun at `started` took longer than the limit.
    fn note(&mut self, started: Instant, now: Instant) {
        if now - started > self.limit {
            self.last = Some(now);
        }
    }

    /// Whether lapsed claims may be freed now (see the type's description), and if so, how
    /// long the freeing may wait for the write connection before it gives up for this
    /// pass: the stall limit, or no limit once stalls deferred it for a lease.
    fn may_reclaim(&mut self, now: Instant, module: &str) -> Option<Duration> {
        if self.last.is_none_or(|at| now - at >= self.every) {
            self.deferred_since = None;
            return Some(self.limit);
        }
        let since = *self.deferred_since.get_or_insert(now);
        if now - since < self.every * 3 {
            return None;
        }
        tracing::warn!(
            module,
            deferred_ms = (now - since).as_millis() as u64,
            "the database kept the reader waiting for a lease; freeing lapsed claims anyway"
        );
        self.deferred_since = None;
        Some(Duration::MAX)
    }
}

/// What a [`reclaim`] did.
#[derive(Debug, PartialEq, Eq)]
enum Reclaim {
    Done,
    /// It waited longer than the stall limit for the write connection and freed nothing.
    WaitedForTheWriter,
}

/// Frees every claim that lapsed (an instance that died, or a delivery nobody tracks any
/// more) so it is claimed again, one attempt higher; unless getting the write connection
/// took longer than `may_wait`, in which case the holders could not renew either (see
/// [`Stalls`]).
async fn reclaim(state: &State, may_wait: Duration) -> anyhow::Result<Reclaim> {
    let asked = Instant::now();
    let tx = state.db.begin().await.context("failed to begin")?;
    if asked.elapsed() > may_wait {
        tx.rollback().await.context("failed to roll back")?;
        return Ok(Reclaim::WaitedForTheWriter);
    }
    let freed = execute(
        &tx,
        "UPDATE bus_queue SET locked_by = NULL, locked_until = NULL \
         WHERE locked_by IS NOT NULL AND locked_until < $1",
        vec![now_ms().into()],
    )
    .await
    .context("failed to free lapsed claims")?;
    tx.commit()
        .await
        .context("failed to commit freeing lapsed claims")?;
    if freed > 0 {
        tracing::warn!(
            module = state.db.module(),
            count = freed,
            "claims lapsed; their events will be delivered again"
        );
        state.wake.notify_one();
    }
    Ok(Reclaim::Done)
}

async fn release_all(state: &State) -> anyhow::Result<()> {
    execute(
        state.db.writes(),
        "UPDATE bus_queue SET locked_by = NULL, locked_until = NULL WHERE locked_by = $1",
        vec![state.instance.clone().into()],
    )
    .await
    .context("failed to release claims")?;
    Ok(())
}

async fn delete_rows(db: &ModuleDb, ids: &[i64]) -> Result<(), sea_orm::DbErr> {
    for chunk in ids.chunks(ID_CHUNK) {
        let ids = ids_in(chunk);
        execute(
            db.writes(),
            &format!(
                "DELETE FROM bus_queue WHERE id IN ({})",
                placeholders(1, ids.len())
            ),
            ids,
        )
        .await?;
    }
    Ok(())
}

/// A queue row's ordering key: the producer and the event's key.
fn ordering_key(e: &Outgoing) -> String {
    format!("{}/{}", e.source, e.key)
}

/// What becomes of a delivery handed over directly, by its settlement (`None`: dropped
/// unsettled, which counts as a delivery).
fn came_back(event: &Outgoing, settled: Option<Settled>) -> Option<Later<'_>> {
    let now = now_ms();
    match settled {
        Some(Settled::Acked) => None,
        Some(Settled::Released(release)) => Some(Later {
            event,
            visible_at: release.visible_at,
            deliveries: 1 - release.uncount,
            error: Some(release.error),
        }),
        None => Some(Later {
            event,
            visible_at: now,
            deliveries: 1,
            error: Some("handed over and let go unsettled".to_owned()),
        }),
    }
}

/// Which of `keys` have rows in the queue.
async fn keys_in_queue(db: &ModuleDb, keys: &[String]) -> Result<HashSet<String>, BusError> {
    let mut found = HashSet::new();
    for chunk in keys.chunks(ID_CHUNK) {
        let values = store::padded(chunk.iter().map(|k| Value::from(k.clone())).collect());
        let sql = format!(
            "SELECT DISTINCT ordering_key FROM bus_queue WHERE ordering_key IN ({})",
            placeholders(1, values.len())
        );
        for row in query(db.conn(), &sql, values).await? {
            found.insert(row.try_get::<String>("", "ordering_key")?);
        }
    }
    Ok(found)
}

/// Queues deliveries that came back from a handover, each with its delay, count and error,
/// as rows claimed by `claimant` (instance, lease in ms) when given: the ids of the rows
/// written, `None` where the event was queued already.
async fn write_later(
    db: &ModuleDb,
    rows: &[Later<'_>],
    claimant: Option<(&str, u64)>,
) -> Result<Vec<Option<i64>>, sea_orm::DbErr> {
    let tx = db.begin().await?;
    // Once the connection is ours (see `renew`): the relay writes late handovers while
    // their consumer is still working, which on SQLite means after that consumer's
    // transaction let go of the file.
    let now = now_ms();
    let (locked_by, lease_ms) = claimant.unzip();
    let locked_until = lease_ms.map(|lease| now + lease as i64);
    let mut ids = Vec::with_capacity(rows.len());
    for row in rows {
        let written = query(
            &tx,
            "INSERT INTO bus_queue (event_id, event_type, ordering_key, envelope, visible_at, enqueued_at, deliveries, last_error, locked_by, locked_until) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (event_id) DO NOTHING RETURNING id",
            vec![
                row.event.event_id.into(),
                row.event.event_type.clone().into(),
                ordering_key(row.event).into(),
                row.event.envelope.to_string().into(),
                row.visible_at.into(),
                now.into(),
                row.deliveries.into(),
                row.error.clone().into(),
                locked_by.map(str::to_owned).into(),
                locked_until.into(),
            ],
        )
        .await?;
        ids.push(match written.first() {
            Some(written) => Some(written.try_get::<i64>("", "id")?),
            None => None,
        });
    }
    tx.commit().await?;
    Ok(ids)
}

struct LocalAcker(Arc<State>);

/// What this bus's tags hold: the id of a `bus_queue` row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct QueueRow(i64);

/// The row a tag of this bus names; `None` for a tag of another bus.
fn row_id(tag: &DeliveryTag) -> Option<i64> {
    tag.get::<QueueRow>().map(|row| row.0)
}

/// The queue rows to settle for `tags`, `settled` recorded for those handed over
/// directly (which name a row only once they became one).
fn settle_tags(tags: &[DeliveryTag], settled: impl Fn() -> Settled) -> Vec<i64> {
    tags.iter()
        .filter_map(|tag| match tag.get::<HandoverTag>() {
            Some(HandoverTag(handover)) => handover.settle(settled()),
            None => row_id(tag),
        })
        .collect()
}

impl LocalAcker {
    /// Makes a claimed row visible again after `delay`; `uncount` takes this delivery off
    /// its attempts.
    async fn release(
        &self,
        tag: &DeliveryTag,
        delay: Duration,
        error: &str,
        uncount: i32,
    ) -> Result<(), BusError> {
        let release = Release {
            visible_at: now_ms() + delay.as_millis() as i64,
            error: error.chars().take(2000).collect(),
            uncount,
        };
        let ids = settle_tags(std::slice::from_ref(tag), || {
            Settled::Released(release.clone())
        });
        let Some(&id) = ids.first() else {
            return Ok(());
        };
        let scheduled = release.apply(&self.0, id).await;
        if scheduled.is_err() {
            // Handed back again by the reader on its next pass; until then the claim is
            // kept.
            lock(&self.0.unreleased).insert(id, release);
        }
        self.0.settle(&ids);
        scheduled?;
        Ok(())
    }
}

#[async_trait]
impl Acker for LocalAcker {
    async fn ack(&self, tags: &[DeliveryTag]) -> Result<(), BusError> {
        let ids = settle_tags(tags, || Settled::Acked);
        if ids.is_empty() {
            return Ok(());
        }
        let deleted = delete_rows(&self.0.db, &ids).await;
        if deleted.is_err() {
            // Deleted again by the reader; until then the claims are kept.
            lock(&self.0.unacked).extend(ids.iter().copied());
        }
        self.0.settle(&ids);
        Ok(deleted?)
    }

    async fn retry(&self, tag: &DeliveryTag, delay: Duration, error: &str) -> Result<(), BusError> {
        self.release(tag, delay, error, 0).await
    }

    async fn postpone(
        &self,
        tag: &DeliveryTag,
        delay: Duration,
        error: &str,
    ) -> Result<(), BusError> {
        self.release(tag, delay, error, 1).await
    }

    /// Events this subscription could be working on now: in flight, or due and first of
    /// their key (rows waiting behind a retry are not work it is failing to do).
    async fn backlog(&self) -> Result<Option<u64>, BusError> {
        let sql = match self.0.db.backend() {
            DbBackend::Sqlite => BACKLOG_SQLITE,
            _ => BACKLOG_POSTGRES,
        };
        let rows = query(self.0.db.conn(), sql, vec![now_ms().into()]).await?;
        let n: i64 = match rows.first() {
            Some(row) => row.try_get("", "n")?,
            None => 0,
        };
        Ok(Some(n as u64 + self.0.handovers.load(Ordering::Relaxed)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVERY: Duration = Duration::from_millis(1_000);

    #[test]
    fn lapsed_claims_are_freed_when_the_reader_did_not_wait() {
        let mut stalls = Stalls::new(EVERY);
        let t = Instant::now();
        stalls.note(t, t + EVERY / 2);
        assert_eq!(stalls.may_reclaim(t + EVERY / 2, "test"), Some(EVERY / 2));
    }

    #[test]
    fn after_a_stall_freeing_waits_one_renewal_period() {
        let mut stalls = Stalls::new(EVERY);
        let t = Instant::now();
        // A pass that waited six seconds for the write connection.
        let free = t + Duration::from_secs(6);
        stalls.note(t, free);
        assert_eq!(stalls.may_reclaim(free, "test"), None);
        assert_eq!(stalls.may_reclaim(free + EVERY / 2, "test"), None);
        assert_eq!(stalls.may_reclaim(free + EVERY, "test"), Some(EVERY / 2));
    }

    #[test]
    fn stalls_that_keep_coming_defer_freeing_for_a_lease_at_most() {
        let mut stalls = Stalls::new(EVERY);
        let t = Instant::now();
        let mut now = t;
        let mut deferred = Vec::new();
        for _ in 0..8 {
            // Each pass waits just over the limit.
            let started = now;
            now += EVERY / 2 + Duration::from_millis(1);
            stalls.note(started, now);
            deferred.push(stalls.may_reclaim(now, "test"));
        }
        let first_free = deferred
            .iter()
            .position(Option::is_some)
            .expect("freed at last");
        // Forced: it waits for the write connection as long as it takes.
        assert_eq!(deferred[first_free], Some(Duration::MAX));
        let waited = (EVERY / 2 + Duration::from_millis(1)) * first_free as u32;
        assert!(
            waited >= EVERY * 3 && waited < EVERY * 4,
            "deferred {waited:?}"
        );
    }
}
