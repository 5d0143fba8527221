//! The Redis Streams bus: for modules that run in different processes.
//!
//! Layout (every key under the configured namespace `ns`):
//! - `ns:stream:<producer>:<p>`: one stream per producing module and partition; an event
//!   goes to partition `fnv1a(key) % partitions`, so all events of one key share a stream,
//!   in the order the producer's relay published them.
//! - one consumer group per consuming module on each stream it reads, created (from id 0)
//!   for every subscriber listed in the contracts before anything is published, so no
//!   event is lost to a consumer that has not started yet.
//! - `ns:lease:<group>:<p>`: which instance of a consuming module owns partition `p`;
//!   `ns:members:<group>`: the instances alive (a sorted set scored by lease expiry).
//!
//! How the guarantees are kept:
//! - Publishing pipelines one XADD per event and returns only once Redis answered with
//!   every entry id; only then does the relay mark its outbox rows.
//! - One process per instance name and module (`ns:instance:<group>:<instance>`, renewed
//!   like a lease): a second process started under a name a live one holds logs an ERROR
//!   and takes no work until the name is free, so two processes never read under one
//!   consumer name. A crashed holder's name frees up within a lease.
//! - An instance owns a fair share of the partitions under leases it renews from its
//!   reader loop, whatever its handlers are doing; an entry is taken from another
//!   consumer only when its partition's lease has lapsed (the owner is dead or cut off),
//!   never because a handler is slow. A lease's value is the instance name plus a nonce
//!   of the process, so processes never renew or release each other's leases.
//! - A lease counts for this instance only while it is confirmed: until the moment its
//!   last renewal was sent plus the lease, less a margin, by this process's own clock.
//!   Past that (renewals failing or late), or once a renewal finds the lease taken, the
//!   instance reads nothing more of the partition and hands out nothing more of it, not
//!   even entries that waited behind one in flight; they stay pending for the next owner.
//! - Taking a partition claims its pending entries (whoever held them) before anything
//!   new is read from it: a restarted instance takes back its own entries, and a dead
//!   instance's are recovered. The claim is bounded by free capacity (`max_in_flight`)
//!   and resumes as room frees up. Every lease, the pending entries of owned partitions
//!   are looked through again, and after a failed read at once, so an entry pending with
//!   nothing to deliver it (a lost reply, a failed acknowledgement) comes back, and the
//!   trim floor moves on. Consumers are never deleted.
//! - Within an instance, an entry is not handed out while an earlier entry of its key is
//!   in flight or waiting for a retry; since one instance owns a key's partition, per-key
//!   order holds across instances.
//! - Deliveries wait in a queue of the subscription; settling one only moves the next
//!   entry of its key to that queue, and never waits for the consumer to take it.
//! - XACK happens only when the consumer settles a delivery, after its transaction
//!   committed; one Redis refuses is kept and sent again. A retry re-claims the entry
//!   after its delay (XCLAIM), which counts the delivery in Redis, so attempts survive a
//!   crash and a poison entry ends in the dead-letter store.
//! - Reads are bounded by free capacity, batched (COUNT), and blocking reads use a
//!   connection of their own; a read with no answer well after its BLOCK time is given
//!   up and the connection replaced (a half-open connection never answers).
//! - Above its share (an instance joined), an instance stops reading the surplus
//!   partitions and hands each back once what it holds of it settled, busy or not.
//! - Streams are trimmed only below what every group has acknowledged; a pending entry
//!   whose data is gone anyway is logged and acknowledged.
//! - Connections come back after a Redis restart; with Redis persistence (AOF) nothing is
//!   lost, and groups that vanished are created again from 0.
//!
//! Files: `connection.rs` reaches Redis and names keys; `groups.rs` creates consumer
//! groups and trims streams; `gate.rs` is the per-key gate (no IO); `subscription.rs`
//! the state a subscription's parts share; `leases.rs` the instance name, membership and
//! partition leases; `reader.rs` the reader loop and the recovery of pending entries;
//! `acker.rs` acknowledgements and retries.

mod acker;
mod connection;
mod gate;
mod groups;
mod leases;
mod reader;
mod subscription;

use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use self::acker::RedisAcker;
use self::connection::{Inner, reader_connection, unavailable};
pub use self::connection::{RedisConfig, partition_of};
use self::gate::StreamEntry;
pub use self::groups::Waiting;
use self::subscription::{Flow, SubState};
use crate::bus::{BusError, DeliveryTag, EventBus, Outgoing, SubscriberSpec, Subscription};
use crate::settings::MessagingSettings;

pub struct RedisBus {
    inner: Arc<Inner>,
}

impl RedisBus {
    /// Trims a producer's streams now (it also happens every few seconds of publishing).
    pub async fn trim_now(&self, producer: &str) -> Result<(), BusError> {
        self.inner.trim(producer).await.map_err(unavailable("trim"))
    }

    pub async fn connect(config: RedisConfig, settings: MessagingSettings) -> anyhow::Result<Self> {
        Self::connect_beside(config, settings, Vec::new()).await
    }

    /// The Redis half of a [`HybridBus`](crate::hybrid_bus::HybridBus): events between two
    /// of the modules `in_process` are not written to Redis, and no group is made for them.
    pub(crate) async fn connect_beside(
        config: RedisConfig,
        settings: MessagingSettings,
        in_process: Vec<&'static str>,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            inner: Arc::new(Inner::connect(config, settings, in_process).await?),
        })
    }

    /// Removes the consumer groups of routes that travel in-process now and hold nothing;
    /// says where events still wait in the others (see
    /// [`HybridBus`](crate::hybrid_bus::HybridBus)).
    pub(crate) async fn retire_in_process_groups(&self) -> Result<Vec<Waiting>, BusError> {
        self.inner
            .retire_in_process_groups()
            .await
            .map_err(unavailable("groups"))
    }

    /// Where events of `producer` that `consumer` takes wait in Redis for it: delivered to
    /// its group and not acknowledged, or not yet read. Empty when none wait (or no group
    /// of `consumer` is on `producer`'s streams). What moving a module back into the
    /// monolith checks first: those events would not follow it.
    pub async fn waiting_between(
        &self,
        producer: &str,
        consumer: &str,
    ) -> Result<Vec<Waiting>, BusError> {
        let groups = self
            .inner
            .groups_between(producer, consumer)
            .await
            .map_err(unavailable("groups"))?;
        Ok(groups.into_iter().filter(Waiting::holds_events).collect())
    }

    /// Whether events of `producer` reach `consumer` over Redis (always, but for two
    /// modules of this process under the hybrid bus).
    pub(crate) fn over_redis(&self, producer: &str, consumer: &str) -> bool {
        self.inner.over_redis(producer, consumer)
    }

    /// The stream and the entry id a delivery of this bus stands for (`None` for a tag of
    /// another bus), for tests that look at the stream beside the bus.
    pub fn stream_entry(tag: &DeliveryTag) -> Option<(&str, &str)> {
        tag.get::<StreamEntry>()
            .map(|entry| (&*entry.stream, &*entry.id))
    }
}

#[async_trait]
impl EventBus for RedisBus {
    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn publish(&self, batch: &[Outgoing]) -> Result<(), BusError> {
        self.publish_events(batch.iter()).await
    }

    async fn subscribe(&self, spec: SubscriberSpec) -> Result<Subscription, BusError> {
        self.subscribe_to(spec).await
    }

    async fn check(&self) -> Result<(), BusError> {
        let mut conn = self.inner.conn.clone();
        let _: String = redis::cmd("PING")
            .query_async(&mut conn)
            .await
            .map_err(unavailable("check"))?;
        Ok(())
    }
}

impl RedisBus {
    /// [`EventBus::publish`] of the events given, in their order.
    pub(crate) async fn publish_events<'a>(
        &self,
        events: impl ExactSizeIterator<Item = &'a Outgoing> + Clone,
    ) -> Result<(), BusError> {
        let batch = events;
        let inner = &self.inner;
        let producers: BTreeSet<&str> = batch.clone().map(|e| e.source.as_str()).collect();
        for producer in &producers {
            inner
                .ensure_groups(producer)
                .await
                .map_err(unavailable("groups"))?;
        }
        let mut pipe = redis::pipe();
        let count = batch.len();
        for event in batch {
            let stream = inner.stream(
                &event.source,
                partition_of(&event.key, inner.config.partitions),
            );
            pipe.cmd("XADD")
                .arg(stream)
                .arg("*")
                .arg("id")
                .arg(event.event_id.to_string())
                .arg("type")
                .arg(&event.event_type)
                .arg("key")
                .arg(&event.key)
                .arg("env")
                .arg(event.envelope.as_bytes());
        }
        let mut conn = inner.conn.clone();
        let ids: Vec<String> = pipe
            .query_async(&mut conn)
            .await
            .map_err(unavailable("publish"))?;
        if ids.len() != count {
            return Err(BusError::Unavailable(format!(
                "Redis accepted {} of {count} events",
                ids.len()
            )));
        }
        for producer in producers {
            inner.trim_if_due(producer);
        }
        Ok(())
    }

    async fn subscribe_to(&self, spec: SubscriberSpec) -> Result<Subscription, BusError> {
        let inner = self.inner.clone();
        let producers: Vec<String> = spec
            .event_types
            .iter()
            .map(|t| contracts::source_of(t).to_owned())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        for producer in &producers {
            inner
                .ensure_group(producer, spec.module)
                .await
                .map_err(unavailable("groups"))?;
        }
        let reader = reader_connection(&inner)
            .await
            .map_err(unavailable("connect"))?;
        let closed = CancellationToken::new();
        let state = Arc::new(SubState {
            token: format!(
                "{}/{}",
                inner.config.instance,
                uuid::Uuid::new_v4().simple()
            ),
            inner: inner.clone(),
            group: spec.module,
            closed: closed.clone(),
            ready: Notify::new(),
            freed: Notify::new(),
            max_in_flight: spec.max_in_flight.max(1),
            flow: Mutex::new(Flow::default()),
        });
        let types: HashSet<&'static str> = spec.event_types.iter().copied().collect();
        let reader = tokio::spawn(reader::read(
            state.clone(),
            reader,
            producers.clone(),
            types,
        ));
        // The stream owns the guard: once the consumer drops it (stopped or aborted), the
        // reader is told. Handing out only takes from the ready queue, so settling a
        // delivery never waits for the consumer.
        let deliveries = futures::stream::unfold(
            (state.clone(), closed.drop_guard()),
            |(state, guard)| async move {
                loop {
                    let entry = {
                        let signal = state.ready.notified();
                        match state.hand_out() {
                            Some(entry) => entry,
                            None => {
                                signal.await;
                                continue;
                            }
                        }
                    };
                    return Some((entry.delivery(), (state, guard)));
                }
            },
        );
        Ok(Subscription {
            deliveries: Box::pin(deliveries),
            acker: Arc::new(RedisAcker(state, producers)),
            reader: Some(tokio_util::task::AbortOnDropHandle::new(reader)),
        })
    }
}
