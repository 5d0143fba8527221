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

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use async_trait::async_trait;
use redis::aio::{ConnectionManager, MultiplexedConnection};
use redis::streams::{StreamId, StreamReadReply};
use redis::{AsyncConnectionConfig, Value as RedisValue};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::bus::{
    Acker, BusError, Delivery, DeliveryTag, EventBus, Outgoing, SubscriberSpec, Subscription,
};
use crate::settings::MessagingSettings;

/// How to reach Redis and lay out keys.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    pub url: String,
    /// A Redis ACL user; `None`: the default user.
    pub username: Option<String>,
    pub password: Option<String>,
    pub namespace: String,
    /// Partitions per producer stream; every process must use the same number.
    pub partitions: u32,
    /// This process's stable consumer name.
    pub instance: String,
}

pub struct RedisBus {
    inner: Arc<Inner>,
}

struct Inner {
    config: RedisConfig,
    client: redis::Client,
    conn: ConnectionManager,
    settings: MessagingSettings,
    /// Producers whose streams have every subscriber's group.
    grouped: Mutex<HashSet<String>>,
    last_trim: Mutex<HashMap<String, Instant>>,
}

const TRIM_EVERY: Duration = Duration::from_secs(10);

/// FNV-1a: stable across releases and platforms, so a key always maps to one partition.
pub fn partition_of(key: &str, partitions: u32) -> u32 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (hash % u64::from(partitions.max(1))) as u32
}

fn is_busy_group(e: &redis::RedisError) -> bool {
    e.code() == Some("BUSYGROUP")
}

fn is_no_group(e: &redis::RedisError) -> bool {
    e.code() == Some("NOGROUP")
}

impl RedisBus {
    /// Trims a producer's streams now (it also happens every few seconds of publishing).
    pub async fn trim_now(&self, producer: &str) -> Result<(), BusError> {
        self.inner.trim(producer).await.map_err(unavailable("trim"))
    }

    pub async fn connect(config: RedisConfig, settings: MessagingSettings) -> anyhow::Result<Self> {
        // Present at zero from the start, so an increase over it reads 0 rather than
        // nothing, and the first failure shows as one.
        for op in ERROR_OPS {
            metrics::counter!("redis_errors_total", "op" => *op).increment(0);
        }
        let client = client(&config)?;
        let conn = tokio::time::timeout(Duration::from_secs(10), client.get_connection_manager())
            .await
            .context("Redis did not answer within 10 s")?
            .with_context(|| format!("failed to connect to Redis at {}", config.url))?;
        let bus = Self {
            inner: Arc::new(Inner {
                config,
                client,
                conn,
                settings,
                grouped: Mutex::new(HashSet::new()),
                last_trim: Mutex::new(HashMap::new()),
            }),
        };
        bus.inner.check_partitions().await?;
        Ok(bus)
    }

    /// The stream and the entry id a delivery of this bus stands for (`None` for a tag of
    /// another bus), for tests that look at the stream beside the bus.
    pub fn stream_entry(tag: &DeliveryTag) -> Option<(&str, &str)> {
        tag.get::<StreamEntry>()
            .map(|entry| (&*entry.stream, &*entry.id))
    }
}

fn client(config: &RedisConfig) -> anyhow::Result<redis::Client> {
    use redis::IntoConnectionInfo;
    let mut info = config
        .url
        .as_str()
        .into_connection_info()
        .with_context(|| format!("{} is not a Redis URL", config.url))?;
    let mut settings = info.redis_settings().clone();
    if let Some(username) = &config.username {
        settings = settings.set_username(username.clone());
    }
    if let Some(password) = &config.password {
        settings = settings.set_password(password.clone());
    }
    info = info.set_redis_settings(settings);
    redis::Client::open(info).context("invalid Redis settings")
}

impl Inner {
    fn key(&self, rest: &str) -> String {
        format!("{}:{rest}", self.config.namespace)
    }

    fn stream(&self, producer: &str, partition: u32) -> String {
        self.key(&format!("stream:{producer}:{partition}"))
    }

    /// Refuses to run with a partition count other than the one already in use: keys
    /// would land in other streams and lose their order.
    async fn check_partitions(&self) -> anyhow::Result<()> {
        let mut conn = self.conn.clone();
        let key = self.key("meta:partitions");
        let _: () = redis::cmd("SET")
            .arg(&key)
            .arg(self.config.partitions)
            .arg("NX")
            .query_async(&mut conn)
            .await?;
        let stored: u32 = redis::cmd("GET").arg(&key).query_async(&mut conn).await?;
        anyhow::ensure!(
            stored == self.config.partitions,
            "Redis namespace {} uses {stored} partitions, this process {}: set bus.redis.partitions = {stored}",
            self.config.namespace,
            self.config.partitions
        );
        Ok(())
    }

    /// Creates the group of every subscriber on every stream of `producer`.
    async fn ensure_groups(&self, producer: &str) -> Result<(), redis::RedisError> {
        if self
            .grouped
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(producer)
        {
            return Ok(());
        }
        let mut conn = self.conn.clone();
        for partition in 0..self.config.partitions {
            let stream = self.stream(producer, partition);
            for group in contracts::subscribers_of(producer) {
                create_group(&mut conn, &stream, group).await?;
            }
        }
        self.grouped
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(producer.to_owned());
        Ok(())
    }

    /// Trims `producer`'s streams below the oldest entry some group still needs. A stream
    /// missing one of its groups is left alone.
    async fn trim(&self, producer: &str) -> Result<(), redis::RedisError> {
        let expected = contracts::subscribers_of(producer);
        let mut conn = self.conn.clone();
        for partition in 0..self.config.partitions {
            let stream = self.stream(producer, partition);
            let groups: Vec<HashMap<String, RedisValue>> = match redis::cmd("XINFO")
                .arg("GROUPS")
                .arg(&stream)
                .query_async(&mut conn)
                .await
            {
                Ok(g) => g,
                Err(_) => continue,
            };
            let names: BTreeSet<String> = groups.iter().filter_map(|g| field(g, "name")).collect();
            if !expected.iter().all(|e| names.contains(*e)) {
                // A group is missing (Redis lost it?): create it and trim nothing now.
                self.grouped
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(producer);
                continue;
            }
            let mut floor: Option<(u64, u64)> = None;
            for group in &groups {
                let name: String = field(group, "name").unwrap_or_default();
                let pending: u64 = field(group, "pending").unwrap_or(0);
                let needed = if pending > 0 {
                    let summary: Vec<RedisValue> = redis::cmd("XPENDING")
                        .arg(&stream)
                        .arg(&name)
                        .query_async(&mut conn)
                        .await?;
                    summary
                        .get(1)
                        .and_then(|v| redis::from_redis_value::<String>(v.clone()).ok())
                        .and_then(|id| parse_id(&id))
                } else {
                    field::<String>(group, "last-delivered-id")
                        .and_then(|id| parse_id(&id))
                        .map(|(ms, seq)| (ms, seq.saturating_add(1)))
                };
                let needed = needed.unwrap_or((0, 0));
                floor = Some(floor.map_or(needed, |f| f.min(needed)));
            }
            if let Some((ms, seq)) = floor
                && (ms, seq) > (0, 0)
            {
                let _: i64 = redis::cmd("XTRIM")
                    .arg(&stream)
                    .arg("MINID")
                    .arg(format!("{ms}-{seq}"))
                    .query_async(&mut conn)
                    .await?;
            }
        }
        Ok(())
    }
}

async fn create_group(
    conn: &mut ConnectionManager,
    stream: &str,
    group: &str,
) -> Result<(), redis::RedisError> {
    let created: Result<(), redis::RedisError> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg(group)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(conn)
        .await;
    match created {
        Err(e) if !is_busy_group(&e) => Err(e),
        _ => Ok(()),
    }
}

/// One field of an XINFO reply.
fn field<T: redis::FromRedisValue>(reply: &HashMap<String, RedisValue>, name: &str) -> Option<T> {
    reply
        .get(name)
        .and_then(|v| redis::from_redis_value(v.clone()).ok())
}

fn parse_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

/// Counts a failed Redis round trip, then says the bus is away.
fn unavailable(op: &'static str) -> impl Fn(redis::RedisError) -> BusError {
    move |e| {
        count_error(op);
        BusError::Unavailable(format!("Redis: {e}"))
    }
}

/// Every `op` of `redis_errors_total`: what a failed round trip was for.
const ERROR_OPS: &[&str] = &[
    "publish", "ack", "read", "claim", "retry", "leases", "groups", "trim", "check", "backlog",
    "connect",
];

/// `redis_errors_total{op}`: failed round trips to Redis, by what they were for.
fn count_error(op: &'static str) {
    debug_assert!(ERROR_OPS.contains(&op), "{op} is missing from ERROR_OPS");
    metrics::counter!("redis_errors_total", "op" => op).increment(1);
}

#[async_trait]
impl EventBus for RedisBus {
    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn publish(&self, batch: &[Outgoing]) -> Result<(), BusError> {
        let inner = &self.inner;
        let producers: BTreeSet<&str> = batch.iter().map(|e| e.source.as_str()).collect();
        for producer in &producers {
            inner
                .ensure_groups(producer)
                .await
                .map_err(unavailable("groups"))?;
        }
        let mut pipe = redis::pipe();
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
        if ids.len() != batch.len() {
            return Err(BusError::Unavailable(format!(
                "Redis accepted {} of {} events",
                ids.len(),
                batch.len()
            )));
        }
        for producer in producers {
            let due = {
                let mut last = inner.last_trim.lock().unwrap_or_else(|e| e.into_inner());
                let due = last.get(producer).is_none_or(|t| t.elapsed() >= TRIM_EVERY);
                if due {
                    last.insert(producer.to_owned(), Instant::now());
                }
                due
            };
            if due {
                // Off the relay's path: trimming costs a few round trips per stream.
                let inner = inner.clone();
                let producer = producer.to_owned();
                tokio::spawn(async move {
                    if let Err(e) = inner.trim(&producer).await {
                        count_error("trim");
                        tracing::warn!(producer, error = %e, "trimming streams failed");
                    }
                });
            }
        }
        Ok(())
    }

    async fn subscribe(&self, spec: SubscriberSpec) -> Result<Subscription, BusError> {
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
                .ensure_groups(producer)
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
        let reader = tokio::spawn(read(state.clone(), reader, producers.clone(), types));
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

    async fn check(&self) -> Result<(), BusError> {
        let mut conn = self.inner.conn.clone();
        let _: String = redis::cmd("PING")
            .query_async(&mut conn)
            .await
            .map_err(unavailable("check"))?;
        Ok(())
    }
}

/// A connection for blocking reads only: no response timeout of its own (the reader puts
/// one above BLOCK around each read), and nothing else waits behind it.
async fn reader_connection(inner: &Inner) -> Result<MultiplexedConnection, redis::RedisError> {
    inner
        .client
        .get_multiplexed_async_connection_with_config(
            &AsyncConnectionConfig::new().set_response_timeout(None),
        )
        .await
}

/// What the tags of this bus hold: an entry of a stream.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct StreamEntry {
    stream: Arc<str>,
    id: Arc<str>,
}

/// One entry on its way to the consumer.
#[derive(Debug, Clone)]
struct Entry {
    stream: Arc<str>,
    partition: u32,
    id: Arc<str>,
    /// Producer-qualified ordering key (the stream names the producer).
    key: String,
    raw: Arc<[u8]>,
    attempt: u32,
}

impl Entry {
    fn tag(&self) -> DeliveryTag {
        DeliveryTag::new(StreamEntry {
            stream: self.stream.clone(),
            id: self.id.clone(),
        })
    }

    fn delivery(&self) -> Delivery {
        Delivery {
            tag: self.tag(),
            raw: self.raw.clone(),
            attempt: self.attempt,
        }
    }
}

/// A partition this instance holds the lease of.
struct Owned {
    /// Until when the lease is known to hold, by this process's clock: counted from the
    /// moment the renewal was sent, less a margin, so this instance stops using the
    /// partition before Redis can give it to another one.
    confirmed_until: Instant,
    /// The partition's streams (one per producer).
    streams: Vec<Arc<str>>,
    /// Streams whose pending entries are still being claimed, with the last id looked at
    /// (`None`: from the start). Such a stream is not read for new entries: they would
    /// overtake the pending ones of their key.
    recovering: BTreeMap<Arc<str>, Option<String>>,
    /// Above this instance's share: nothing new is read from it, and its lease is handed
    /// back once nothing of it is in flight.
    draining: bool,
    /// The lease ran out by this process's clock and no renewal has answered since.
    paused: bool,
}

#[derive(Default)]
struct Flow {
    /// Queued for the consumer, handed out, or waiting for a retry, by tag.
    outstanding: HashMap<DeliveryTag, Entry>,
    /// Keys with an entry outstanding, and what waits behind it.
    waiting: HashMap<String, VecDeque<Entry>>,
    waiting_count: usize,
    /// Outstanding entries not yet taken by the consumer, in the order to hand them out.
    ready: VecDeque<DeliveryTag>,
    /// Partitions this instance holds.
    owned: HashMap<u32, Owned>,
    /// Acknowledgements Redis did not take (it was away); sent again by the reader.
    unacked: Vec<(Arc<str>, String)>,
    /// This process holds the instance name; only then does it take partitions.
    active: bool,
}

impl Flow {
    /// The partition's lease is confirmed now: its entries may be handed out.
    fn holds(&self, partition: u32, now: Instant) -> bool {
        self.active
            && self
                .owned
                .get(&partition)
                .is_some_and(|o| o.confirmed_until > now)
    }

    fn in_flight(&self) -> usize {
        self.outstanding.len() + self.waiting_count
    }

    /// How many entries of `partition` are in flight here.
    fn load(&self, partition: u32) -> usize {
        self.outstanding
            .values()
            .chain(self.waiting.values().flatten())
            .filter(|e| e.partition == partition)
            .count()
    }

    /// Entries of `stream` this instance is already dealing with.
    fn known(&self, stream: &str) -> HashSet<String> {
        self.outstanding
            .values()
            .chain(self.waiting.values().flatten())
            .filter(|e| &*e.stream == stream)
            .map(|e| e.id.to_string())
            .chain(
                self.unacked
                    .iter()
                    .filter(|(s, _)| &**s == stream)
                    .map(|(_, id)| id.clone()),
            )
            .collect()
    }

    /// Queues an entry for the consumer, or behind the entry of its key in flight. True if
    /// it became ready.
    fn offer(&mut self, entry: Entry) -> bool {
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
    fn settle(&mut self, tag: &DeliveryTag) -> bool {
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

    /// Drops a handed-out entry whose partition this instance no longer holds: its new
    /// owner delivers it.
    fn forget(&mut self, tag: &DeliveryTag) {
        if let Some(entry) = self.outstanding.remove(tag) {
            self.ready.retain(|t| t != tag);
            if let Some(queue) = self.waiting.remove(&entry.key) {
                self.waiting_count -= queue.len();
            }
        }
    }

    /// The next entry for the consumer whose partition's lease is confirmed. Entries of a
    /// partition whose lease ran out wait (the next renewal decides); those of a partition
    /// no longer held are dropped with it.
    fn hand_out(&mut self, now: Instant) -> Option<Entry> {
        let mut index = 0;
        while let Some(tag) = self.ready.get(index).cloned() {
            let Some(entry) = self.outstanding.get(&tag) else {
                self.ready.remove(index);
                continue;
            };
            let partition = entry.partition;
            if self.holds(partition, now) {
                let entry = entry.clone();
                self.ready.remove(index);
                return Some(entry);
            }
            if self.active && self.owned.contains_key(&partition) {
                index += 1;
            } else {
                self.lose(partition);
            }
        }
        None
    }

    /// Stops using a partition: nothing more of it is read or handed out. Entries of it
    /// the consumer holds stay counted (and their keys held) until it settles them; what
    /// waited behind them is left pending in Redis for the partition's next owner.
    fn lose(&mut self, partition: u32) {
        self.owned.remove(&partition);
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

    /// Looks through the pending entries of every owned partition again.
    fn sweep(&mut self) {
        for owned in self.owned.values_mut().filter(|o| !o.draining) {
            for stream in &owned.streams {
                owned.recovering.entry(stream.clone()).or_insert(None);
            }
        }
    }

    /// A read of these streams may have been lost on its way back: look through their
    /// pending entries before reading anything newer from them.
    fn recover_streams(&mut self, streams: &[String]) {
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

/// The partition a stream name (`<ns>:stream:<producer>:<p>`) ends with.
fn partition_of_stream(stream: &str) -> Option<u32> {
    stream.rsplit(':').next()?.parse().ok()
}

struct SubState {
    inner: Arc<Inner>,
    group: &'static str,
    /// This subscription's value in lease keys: the instance name and a nonce of this
    /// process, so two processes under one name never renew or release each other's
    /// leases.
    token: String,
    /// Cancelled once the consumer dropped the deliveries stream.
    closed: CancellationToken,
    /// An entry became ready for the consumer.
    ready: Notify,
    /// Room freed up, or a partition changed hands: the reader may read.
    freed: Notify,
    max_in_flight: usize,
    flow: Mutex<Flow>,
}

impl SubState {
    fn flow(&self) -> std::sync::MutexGuard<'_, Flow> {
        self.flow.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn free(&self) -> usize {
        self.max_in_flight.saturating_sub(self.flow().in_flight())
    }

    fn hand_out(&self) -> Option<Entry> {
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
    fn offer(&self, entry: Entry) {
        let ready = {
            let mut flow = self.flow();
            flow.holds(entry.partition, Instant::now()) && flow.offer(entry)
        };
        if ready {
            self.ready.notify_one();
        }
    }

    /// A delivery is done: release the next entry of its key, if any. Never waits.
    fn settle(&self, tag: &DeliveryTag) {
        if self.flow().settle(tag) {
            self.ready.notify_one();
        }
        self.freed.notify_one();
    }

    fn forget(&self, tag: &DeliveryTag) {
        self.flow().forget(tag);
        self.freed.notify_one();
    }

    /// Notes partitions whose lease was not confirmed in time by this process's clock
    /// (renewals failing or late): another instance may hold them by now, so nothing of
    /// them is read or handed out until a renewal answers. If it finds the lease still
    /// this process's, Redis never let it go and the partition resumes as it was;
    /// otherwise it is lost.
    fn expire(&self, now: Instant) {
        let mut flow = self.flow();
        for (partition, owned) in flow.owned.iter_mut() {
            if owned.confirmed_until <= now && !owned.paused {
                owned.paused = true;
                metrics::counter!("bus_leases_unconfirmed_total", "module" => self.group)
                    .increment(1);
                tracing::warn!(
                    module = self.group,
                    partition,
                    "a partition lease was not renewed in time; this instance stops using it until a renewal answers"
                );
            }
        }
    }

    /// Acknowledges entries of types this group does not take; what Redis does not take
    /// now is sent again later, so nothing stays pending for them.
    async fn ack_foreign(&self, conn: &mut ConnectionManager, stream: &str, ids: Vec<String>) {
        if let Err(e) = ack_ids(conn, stream, self.group, &ids).await {
            count_error("ack");
            tracing::warn!(module = self.group, error = %e, "acknowledging foreign entries failed; sending again later");
            let stream: Arc<str> = Arc::from(stream);
            self.flow()
                .unacked
                .extend(ids.into_iter().map(|id| (stream.clone(), id)));
        }
    }
}

/// Turns stream entries into [`Entry`]s; entries of types this group does not take are
/// returned apart, to be acknowledged at once.
fn entries(
    stream: &str,
    partition: u32,
    ids: Vec<StreamId>,
    types: &HashSet<&'static str>,
) -> (Vec<Entry>, Vec<String>) {
    let stream: Arc<str> = Arc::from(stream);
    let mut keep = Vec::new();
    let mut skip = Vec::new();
    for item in ids {
        let field = |name: &str| -> Option<Vec<u8>> {
            item.map
                .get(name)
                .and_then(|v| redis::from_redis_value::<Vec<u8>>(v.clone()).ok())
        };
        let event_type = field("type").map(|t| String::from_utf8_lossy(&t).into_owned());
        if let Some(t) = &event_type
            && !types.contains(t.as_str())
        {
            skip.push(item.id);
            continue;
        }
        // Missing fields still travel: the consumer parks what it cannot read.
        let raw = field("env").unwrap_or_default();
        let key = field("key")
            .map(|k| String::from_utf8_lossy(&k).into_owned())
            .unwrap_or_default();
        keep.push(Entry {
            stream: stream.clone(),
            partition,
            id: Arc::from(item.id.as_str()),
            key: format!("{stream}/{key}"),
            raw: Arc::from(raw),
            attempt: item.delivered_count.map_or(1, |c| c.max(1) as u32),
        });
    }
    (keep, skip)
}

async fn ack_ids(
    conn: &mut ConnectionManager,
    stream: &str,
    group: &str,
    ids: &[String],
) -> Result<(), redis::RedisError> {
    if ids.is_empty() {
        return Ok(());
    }
    let _: i64 = redis::cmd("XACK")
        .arg(stream)
        .arg(group)
        .arg(ids)
        .query_async(conn)
        .await?;
    Ok(())
}

/// What a lease is counted on for after its renewal was sent.
fn confirmed_for(lease: Duration) -> Duration {
    lease - lease / 10
}

/// The reader: keeps this instance's name, membership and partition leases, claims the
/// pending entries of partitions it takes (and, now and then, of those it holds), and
/// reads new entries as capacity frees up.
async fn read(
    state: Arc<SubState>,
    mut reader: MultiplexedConnection,
    producers: Vec<String>,
    types: HashSet<&'static str>,
) {
    let inner = state.inner.clone();
    let group = state.group;
    let lease = Duration::from_millis(inner.settings.lease_ms);
    let maintain_every = lease / 3;
    // Pending entries nothing delivers (a lost reply, a failed acknowledgement) are looked
    // for this often.
    let sweep_every = lease;
    let block_ms = (inner.settings.lease_ms / 6).clamp(10, 1000);
    let block = Duration::from_millis(block_ms);
    // A half-open connection never answers: give a read up well after its BLOCK.
    let read_timeout = block + (lease / 3).max(Duration::from_millis(500));
    let mut last_maintenance: Option<Instant> = None;
    let mut last_sweep = Instant::now();
    let mut watch = Watch::default();
    let mut failures = 0_u32;
    let mut turn = 0_usize;
    loop {
        if state.closed.is_cancelled() {
            break;
        }
        if last_maintenance.is_none_or(|t| t.elapsed() >= maintain_every) {
            match maintain(&state, &producers, &mut watch).await {
                Ok(()) => last_maintenance = Some(Instant::now()),
                Err(e) => {
                    count_error("leases");
                    tracing::warn!(module = group, error = %format!("{e:#}"), "keeping partition leases failed")
                }
            }
        }
        if last_sweep.elapsed() >= sweep_every {
            state.flow().sweep();
            last_sweep = Instant::now();
        }
        state.expire(Instant::now());
        if let Err(e) = recover(&state, &types).await {
            count_error("claim");
            tracing::warn!(module = group, error = %e, "claiming pending entries failed");
        }
        let free = state.free();
        // Only partitions whose lease outlasts this read by a margin, that are not being
        // handed back, and whose pending entries are all claimed.
        let streams: Vec<String> = {
            let flow = state.flow();
            let horizon = Instant::now() + block + lease / 10;
            let mut owned: Vec<(&u32, &Owned)> = flow
                .owned
                .iter()
                .filter(|(_, o)| flow.active && !o.draining && o.confirmed_until > horizon)
                .collect();
            owned.sort_unstable_by_key(|(p, _)| **p);
            owned
                .into_iter()
                .flat_map(|(_, o)| {
                    o.streams
                        .iter()
                        .filter(|s| !o.recovering.contains_key(*s))
                        .map(|s| s.to_string())
                })
                .collect()
        };
        if free == 0 || streams.is_empty() {
            tokio::select! {
                _ = state.closed.cancelled() => break,
                _ = state.freed.notified() => {}
                _ = tokio::time::sleep(block) => {}
            }
            continue;
        }
        // COUNT bounds each stream: share the free capacity between them, and with less
        // room than streams, read one entry from as many streams as there is room for,
        // taking turns.
        let budget = free.min(inner.settings.consumer_batch * 2);
        let streams: Vec<String> = if budget < streams.len() {
            turn = (turn + 1) % streams.len();
            streams
                .iter()
                .cycle()
                .skip(turn)
                .take(budget)
                .cloned()
                .collect()
        } else {
            streams
        };
        let count = (budget / streams.len()).max(1);
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(group)
            .arg(&inner.config.instance)
            .arg("COUNT")
            .arg(count)
            .arg("BLOCK")
            .arg(block_ms)
            .arg("STREAMS")
            .arg(&streams);
        for _ in &streams {
            cmd.arg(">");
        }
        let reply: Result<Option<StreamReadReply>, redis::RedisError> =
            match tokio::time::timeout(read_timeout, cmd.query_async(&mut reader)).await {
                Ok(reply) => reply,
                Err(_) => Err(redis::RedisError::from((
                    redis::ErrorKind::Io,
                    "no answer to a blocking read",
                ))),
            };
        match reply {
            Ok(reply) => {
                failures = 0;
                let mut conn = inner.conn.clone();
                for key in reply.map(|r| r.keys).unwrap_or_default() {
                    let Some(partition) = partition_of_stream(&key.key) else {
                        continue;
                    };
                    let (keep, skip) = entries(&key.key, partition, key.ids, &types);
                    state.ack_foreign(&mut conn, &key.key, skip).await;
                    for entry in keep {
                        state.offer(entry);
                    }
                }
            }
            Err(e) => {
                failures += 1;
                let delay = inner.settings.backoff(failures);
                // Redis may have handed entries to this consumer in a reply that never
                // arrived: find them before reading anything newer of their keys.
                state.flow().recover_streams(&streams);
                if is_no_group(&e) {
                    // Redis lost the groups (a restart without persistence): make them again.
                    inner
                        .grouped
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .clear();
                    for producer in &producers {
                        let _ = inner.ensure_groups(producer).await;
                    }
                } else {
                    count_error("read");
                    tracing::warn!(module = group, error = %e, delay_ms = delay.as_millis() as u64, "reading streams failed; reconnecting");
                    if let Ok(Ok(fresh)) =
                        tokio::time::timeout(read_timeout, reader_connection(&inner)).await
                    {
                        reader = fresh;
                    }
                }
                tokio::select! {
                    _ = state.closed.cancelled() => break,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
    // Leave: hand the partitions back so another instance takes them at once.
    let (owned, active): (Vec<u32>, bool) = {
        let flow = state.flow();
        (flow.owned.keys().copied().collect(), flow.active)
    };
    let mut conn = inner.conn.clone();
    for partition in owned {
        let _ = release(&mut conn, &state, &format!("lease:{group}:{partition}")).await;
    }
    if active {
        let name = format!("instance:{group}:{}", inner.config.instance);
        let _ = release(&mut conn, &state, &name).await;
        let _: Result<i64, _> = redis::cmd("ZREM")
            .arg(inner.key(&format!("members:{group}")))
            .arg(&inner.config.instance)
            .query_async(&mut conn)
            .await;
    }
    tracing::debug!(module = group, "subscription closed");
}

/// Takes a key for ARGV[1] if it is free or already ARGV[1]'s; otherwise answers how long
/// the other holder still has.
const TAKE: &str = "local v = redis.call('GET', KEYS[1]) \
    if v == false or v == ARGV[1] then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return {1, 0} end \
    return {0, redis.call('PTTL', KEYS[1])}";
const RENEW: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end";
const RELEASE: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end";

async fn release(
    conn: &mut ConnectionManager,
    state: &SubState,
    name: &str,
) -> Result<i64, redis::RedisError> {
    redis::Script::new(RELEASE)
        .key(state.inner.key(name))
        .arg(&state.token)
        .invoke_async(conn)
        .await
}

/// What the reader saw of another process holding this instance's name.
#[derive(Default)]
struct Watch {
    /// Time left on the other holder's key when last looked at.
    left_ms: Option<i64>,
    reported: Option<Instant>,
}

/// Holds the instance name, heartbeat, renews owned leases, takes free partitions up to a
/// fair share, and hands back partitions above it once nothing of them is in flight.
async fn maintain(
    state: &Arc<SubState>,
    producers: &[String],
    watch: &mut Watch,
) -> anyhow::Result<()> {
    let inner = &state.inner;
    let group = state.group;
    let me = &inner.config.instance;
    let lease_ms = inner.settings.lease_ms;
    let lease = Duration::from_millis(lease_ms);
    let mut conn = inner.conn.clone();

    // One process per instance name and module: two under one consumer name would read
    // each other's pending entries. A name whose holder crashed frees up within a lease;
    // one whose holder keeps renewing it belongs to a live duplicate.
    let (held, left_ms): (i64, i64) = redis::Script::new(TAKE)
        .key(inner.key(&format!("instance:{group}:{me}")))
        .arg(&state.token)
        .arg(lease_ms)
        .invoke_async(&mut conn)
        .await?;
    if held == 0 {
        let was_active = {
            let mut flow = state.flow();
            let was_active = flow.active;
            flow.active = false;
            let owned: Vec<u32> = flow.owned.keys().copied().collect();
            for partition in owned {
                flow.lose(partition);
            }
            was_active
        };
        let renewed = watch.left_ms.is_some_and(|before| left_ms > before);
        watch.left_ms = Some(left_ms);
        metrics::gauge!("bus_partitions_held", "module" => group).set(0.0);
        if renewed {
            metrics::gauge!("bus_duplicate_instance", "module" => group).set(1.0);
        }
        if (was_active || renewed)
            && watch
                .reported
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(60))
        {
            tracing::error!(
                module = group,
                instance = %me,
                "another live process consumes this module under the same bus.instance; this one takes no work while it lives (give every process its own bus.instance)"
            );
            watch.reported = Some(Instant::now());
        }
        return Ok(());
    }
    *watch = Watch::default();
    state.flow().active = true;
    metrics::gauge!("bus_duplicate_instance", "module" => group).set(0.0);

    let members = inner.key(&format!("members:{group}"));
    let now_ms = crate::db::now_ms();
    let _: i64 = redis::cmd("ZADD")
        .arg(&members)
        .arg(now_ms + lease_ms as i64)
        .arg(me)
        .query_async(&mut conn)
        .await?;
    let _: i64 = redis::cmd("ZREMRANGEBYSCORE")
        .arg(&members)
        .arg("-inf")
        .arg(now_ms)
        .query_async(&mut conn)
        .await?;
    let live: u32 = redis::cmd("ZCOUNT")
        .arg(&members)
        .arg(now_ms)
        .arg("+inf")
        .query_async(&mut conn)
        .await?;
    let partitions = inner.config.partitions;
    let share = partitions.div_ceil(live.max(1)) as usize;

    // Acknowledgements that failed earlier; what fails again is kept for the next pass,
    // and does not hold up the renewals below.
    let unacked = std::mem::take(&mut state.flow().unacked);
    let mut again = Vec::new();
    for (stream, id) in unacked {
        match ack_ids(&mut conn, &stream, group, std::slice::from_ref(&id)).await {
            Ok(()) => {}
            // The group is gone, and its pending entries with it.
            Err(e) if is_no_group(&e) => {}
            Err(_) => again.push((stream, id)),
        }
    }
    state.flow().unacked.extend(again);

    // Renew what we hold; stop using what we lost.
    let owned: Vec<u32> = state.flow().owned.keys().copied().collect();
    for partition in owned {
        let sent = Instant::now();
        let renewed: i64 = redis::Script::new(RENEW)
            .key(inner.key(&format!("lease:{group}:{partition}")))
            .arg(&state.token)
            .arg(lease_ms)
            .invoke_async(&mut conn)
            .await?;
        let mut flow = state.flow();
        if renewed == 1 {
            if let Some(owned) = flow.owned.get_mut(&partition) {
                owned.confirmed_until = sent + confirmed_for(lease);
                owned.paused = false;
            }
        } else {
            tracing::warn!(
                module = group,
                partition,
                "lost a partition lease; another instance owns it now"
            );
            flow.lose(partition);
        }
    }

    // Entries that waited while a lease was unconfirmed may go now.
    state.ready.notify_one();

    // Take free partitions, starting at a place of our own so instances spread out.
    let start = partition_of(me, partitions);
    for offset in 0..partitions {
        if state.flow().owned.len() >= share {
            break;
        }
        let partition = (start + offset) % partitions;
        if state.flow().owned.contains_key(&partition) {
            continue;
        }
        let sent = Instant::now();
        let (taken, _): (i64, i64) = redis::Script::new(TAKE)
            .key(inner.key(&format!("lease:{group}:{partition}")))
            .arg(&state.token)
            .arg(lease_ms)
            .invoke_async(&mut conn)
            .await?;
        if taken == 0 {
            continue;
        }
        let streams: Vec<Arc<str>> = producers
            .iter()
            .map(|p| Arc::from(inner.stream(p, partition)))
            .collect();
        // Its pending entries (a dead owner's, or ours from before a restart) are claimed
        // before anything new is read from it.
        let recovering = streams.iter().map(|s| (s.clone(), None)).collect();
        state.flow().owned.insert(
            partition,
            Owned {
                confirmed_until: sent + confirmed_for(lease),
                streams,
                recovering,
                draining: false,
                paused: false,
            },
        );
        tracing::info!(module = group, partition, "partition taken");
    }

    // Above our share (another instance joined): stop reading the least busy surplus
    // partitions, and hand each back once nothing of it is in flight, so its next owner
    // starts after everything handed out here. Under load this still happens: in-flight
    // entries settle, and nothing new is read meanwhile.
    let idle: Vec<u32> = {
        let mut flow = state.flow();
        let surplus = flow.owned.len().saturating_sub(share);
        let mut by_load: Vec<(bool, usize, u32)> = flow
            .owned
            .iter()
            .map(|(p, o)| (!o.draining, flow.load(*p), *p))
            .collect();
        by_load.sort_unstable();
        for (rank, (_, _, partition)) in by_load.into_iter().enumerate() {
            let drain = rank < surplus;
            if let Some(owned) = flow.owned.get_mut(&partition) {
                if owned.draining && !drain {
                    // Our share grew back: read it again, from its pending entries.
                    owned.recovering = owned.streams.iter().map(|s| (s.clone(), None)).collect();
                }
                owned.draining = drain;
            }
        }
        flow.owned
            .iter()
            .filter(|(p, o)| o.draining && flow.load(**p) == 0)
            .map(|(p, _)| *p)
            .collect()
    };
    for partition in idle {
        state.flow().lose(partition);
        release(&mut conn, state, &format!("lease:{group}:{partition}")).await?;
        tracing::info!(module = group, partition, "partition handed back");
    }
    let held = state.flow().owned.len();
    metrics::gauge!("bus_partitions_held", "module" => group).set(held as f64);
    Ok(())
}

/// How a look through a stream's pending entries ended.
enum Page {
    /// Nothing more is pending that this instance does not already deal with.
    Done,
    /// More to look at after this id.
    More(String),
    /// No room for more now; continue after this id later.
    Full(Option<String>),
}

const PAGE: usize = 100;

/// Claims pending entries of streams being recovered (a partition just taken, a sweep, a
/// read whose reply was lost), in id order, as far as there is room; a stream is read for
/// new entries again only once its recovery is done.
async fn recover(state: &Arc<SubState>, types: &HashSet<&'static str>) -> anyhow::Result<()> {
    let mut conn = state.inner.conn.clone();
    loop {
        let free = state.free();
        if free == 0 {
            return Ok(());
        }
        let job = {
            let flow = state.flow();
            let now = Instant::now();
            let mut jobs: Vec<(u32, Arc<str>, Option<String>)> = flow
                .owned
                .iter()
                .filter(|(p, o)| !o.draining && flow.holds(**p, now))
                .flat_map(|(p, o)| {
                    o.recovering
                        .iter()
                        .map(move |(s, after)| (*p, s.clone(), after.clone()))
                })
                .collect();
            jobs.sort_unstable_by_key(|(p, _, _)| *p);
            jobs.into_iter().next()
        };
        let Some((partition, stream, after)) = job else {
            return Ok(());
        };
        let page = recover_page(
            state,
            &mut conn,
            partition,
            &stream,
            after.as_deref(),
            free,
            types,
        )
        .await?;
        let mut flow = state.flow();
        let Some(owned) = flow.owned.get_mut(&partition) else {
            continue;
        };
        match page {
            Page::Done => {
                owned.recovering.remove(&stream);
            }
            Page::More(after) => {
                owned.recovering.insert(stream, Some(after));
            }
            Page::Full(after) => {
                owned.recovering.insert(stream, after);
                return Ok(());
            }
        }
    }
}

/// Looks at one page of `stream`'s pending entries after `after`, and claims for this
/// instance, up to `free`, those it does not already deal with (whichever consumer held
/// them), offering them in id order with their deliveries counted.
async fn recover_page(
    state: &Arc<SubState>,
    conn: &mut ConnectionManager,
    partition: u32,
    stream: &str,
    after: Option<&str>,
    free: usize,
    types: &HashSet<&'static str>,
) -> Result<Page, redis::RedisError> {
    let group = state.group;
    // Taken before XPENDING: an entry settled meanwhile is then either still known here
    // or no longer pending there.
    let known = state.flow().known(stream);
    let start = after.map_or_else(|| "-".to_owned(), |id| format!("({id}"));
    let rows: Vec<(String, String, u64, usize)> = redis::cmd("XPENDING")
        .arg(stream)
        .arg(group)
        .arg(&start)
        .arg("+")
        .arg(PAGE)
        .query_async(conn)
        .await?;
    let mut take: Vec<(String, usize)> = Vec::new();
    let mut cursor = after.map(str::to_owned);
    let mut full = false;
    for (id, _consumer, _idle, count) in &rows {
        if !known.contains(id) {
            if take.len() == free {
                full = true;
                break;
            }
            take.push((id.clone(), *count));
        }
        cursor = Some(id.clone());
    }
    if !take.is_empty() {
        let ids: Vec<&str> = take.iter().map(|(id, _)| id.as_str()).collect();
        let reply: redis::streams::StreamClaimReply = redis::cmd("XCLAIM")
            .arg(stream)
            .arg(group)
            .arg(&state.inner.config.instance)
            .arg(0)
            .arg(&ids)
            .query_async(conn)
            .await?;
        let returned: HashSet<&str> = reply.ids.iter().map(|s| s.id.as_str()).collect();
        let missing: Vec<&str> = ids
            .iter()
            .filter(|id| !returned.contains(**id))
            .copied()
            .collect();
        // Not claimed: acknowledged meanwhile (by an earlier owner finishing late), or its
        // data was trimmed away, which XCLAIM answers alike; only the latter is an error.
        let mut gone = Vec::new();
        if !missing.is_empty() {
            let mut pipe = redis::pipe();
            for id in &missing {
                pipe.cmd("XRANGE").arg(stream).arg(*id).arg(*id);
            }
            let found: Vec<redis::streams::StreamRangeReply> = pipe.query_async(conn).await?;
            gone = missing
                .iter()
                .zip(found)
                .filter(|(_, f)| f.ids.is_empty())
                .map(|(id, _)| (*id).to_owned())
                .collect();
        }
        if !gone.is_empty() {
            tracing::error!(
                module = group,
                stream,
                entries = gone.len(),
                "pending entries were trimmed before being handled; acknowledging them"
            );
            ack_ids(conn, stream, group, &gone).await?;
        }
        // XCLAIM counted one more delivery.
        let counts: HashMap<&str, usize> = take.iter().map(|(id, n)| (id.as_str(), *n)).collect();
        let claimed: Vec<StreamId> = reply
            .ids
            .into_iter()
            .map(|mut c| {
                c.delivered_count = counts.get(c.id.as_str()).map(|n| n + 1);
                c
            })
            .collect();
        let (keep, skip) = entries(stream, partition, claimed, types);
        state.ack_foreign(conn, stream, skip).await;
        for entry in keep {
            state.offer(entry);
        }
    }
    Ok(if full {
        Page::Full(cursor)
    } else if rows.len() < PAGE {
        Page::Done
    } else {
        Page::More(cursor.unwrap_or_default())
    })
}

/// Settles this subscription's deliveries; knows the producers it reads from, for its
/// backlog.
struct RedisAcker(Arc<SubState>, Vec<String>);

#[async_trait]
impl Acker for RedisAcker {
    /// What the partitions this instance holds still have for its group: entries
    /// delivered and not acknowledged, plus entries not read yet (`XINFO GROUPS`).
    async fn backlog(&self) -> Result<Option<u64>, BusError> {
        let state = &self.0;
        let partitions: Vec<u32> = state.flow().owned.keys().copied().collect();
        let mut conn = state.inner.conn.clone();
        let mut total = 0_u64;
        for producer in &self.1 {
            for &partition in &partitions {
                let stream = state.inner.stream(producer, partition);
                let groups: Vec<HashMap<String, redis::Value>> = redis::cmd("XINFO")
                    .arg("GROUPS")
                    .arg(&stream)
                    .query_async(&mut conn)
                    .await
                    .map_err(unavailable("backlog"))?;
                for group in groups {
                    let named = matches!(group.get("name"), Some(v) if redis::from_redis_value::<String>(v.clone()).ok().as_deref() == Some(state.group));
                    if !named {
                        continue;
                    }
                    let number = |field: &str| {
                        group
                            .get(field)
                            .and_then(|v| redis::from_redis_value::<u64>(v.clone()).ok())
                            .unwrap_or(0)
                    };
                    total += number("pending") + number("lag");
                }
            }
        }
        Ok(Some(total))
    }

    async fn ack(&self, tags: &[DeliveryTag]) -> Result<(), BusError> {
        let state = &self.0;
        let mut by_stream: HashMap<Arc<str>, Vec<String>> = HashMap::new();
        for tag in tags {
            if let Some(StreamEntry { stream, id }) = tag.get::<StreamEntry>() {
                by_stream
                    .entry(stream.clone())
                    .or_default()
                    .push(id.to_string());
            }
        }
        let mut pipe = redis::pipe();
        for (stream, ids) in &by_stream {
            pipe.cmd("XACK")
                .arg(&**stream)
                .arg(state.group)
                .arg(ids)
                .ignore();
        }
        let mut conn = state.inner.conn.clone();
        let acked: Result<(), redis::RedisError> = pipe.query_async(&mut conn).await;
        if acked.is_err() {
            // The work is committed: keep the acknowledgements to send again later. If
            // this process dies first, the entries are claimed again and the inbox skips
            // them.
            let mut flow = state.flow();
            for (stream, ids) in by_stream {
                flow.unacked
                    .extend(ids.into_iter().map(|id| (stream.clone(), id)));
            }
        }
        for tag in tags {
            state.settle(tag);
        }
        acked.map_err(unavailable("ack"))
    }

    async fn retry(
        &self,
        tag: &DeliveryTag,
        delay: Duration,
        _error: &str,
    ) -> Result<(), BusError> {
        let state = self.0.clone();
        let Some(entry) = state.flow().outstanding.get(tag).cloned() else {
            return Ok(());
        };
        // The entry stays its key's head (later entries of the key keep waiting). After
        // the delay it is claimed again, which counts the delivery in Redis.
        tokio::spawn(async move {
            tokio::select! {
                _ = state.closed.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
            let tag = entry.tag();
            let mut failures = 0;
            loop {
                if state.closed.is_cancelled() {
                    return;
                }
                let (held, owned) = {
                    let flow = state.flow();
                    (
                        flow.holds(entry.partition, Instant::now()),
                        flow.active && flow.owned.contains_key(&entry.partition),
                    )
                };
                if !owned {
                    // The partition is no longer ours: its owner delivers the entry, and
                    // claiming it here would take it from them.
                    state.forget(&tag);
                    return;
                }
                if !held {
                    // Its lease is not confirmed now: wait for a renewal to decide.
                    tokio::select! {
                        _ = state.closed.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(state.inner.settings.lease_ms / 3)) => {}
                    }
                    continue;
                }
                let mut conn = state.inner.conn.clone();
                let claimed: Result<redis::streams::StreamClaimReply, redis::RedisError> =
                    redis::cmd("XCLAIM")
                        .arg(&*entry.stream)
                        .arg(state.group)
                        .arg(&state.inner.config.instance)
                        .arg(0)
                        .arg(&*entry.id)
                        .query_async(&mut conn)
                        .await;
                match claimed {
                    Ok(reply) if !reply.ids.is_empty() => {
                        let ready = {
                            let mut flow = state.flow();
                            match flow.outstanding.get_mut(&tag) {
                                Some(again) => {
                                    again.attempt = entry.attempt + 1;
                                    flow.ready.push_back(tag.clone());
                                    true
                                }
                                None => false,
                            }
                        };
                        if ready {
                            state.ready.notify_one();
                        }
                        return;
                    }
                    Ok(_) => {
                        // The entry's data is gone from the stream: nothing to deliver.
                        tracing::error!(module = state.group, id = %entry.id, "a retried entry was trimmed away");
                        let _ = ack_ids(
                            &mut conn,
                            &entry.stream,
                            state.group,
                            &[entry.id.to_string()],
                        )
                        .await;
                        state.settle(&tag);
                        return;
                    }
                    Err(e) => {
                        // Redis is away: the entry stays pending, its key stays held.
                        failures += 1;
                        let delay = state.inner.settings.backoff(failures);
                        count_error("retry");
                        tracing::warn!(module = state.group, error = %e, delay_ms = delay.as_millis() as u64, "re-claiming a retried entry failed; trying again");
                        tokio::select! {
                            _ = state.closed.cancelled() => return,
                            _ = tokio::time::sleep(delay) => {}
                        }
                    }
                }
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Redis ACL user (made here on the local Redis with `ACL SETUSER`, deleted after)
    /// logs in with its name and password; a wrong password is refused, and the error
    /// shows neither password.
    #[tokio::test]
    async fn an_acl_user_logs_in_with_its_name_and_password() {
        let url = "redis://127.0.0.1:6379/0";
        let user = format!("shop_acl_{}", uuid::Uuid::new_v4().simple());
        let password = format!("pw-{}", uuid::Uuid::new_v4().simple());
        let admin = redis::Client::open(url).expect("client");
        let mut admin = admin
            .get_multiplexed_async_connection()
            .await
            .expect("the local Redis answers");
        let _: () = redis::cmd("ACL")
            .arg("SETUSER")
            .arg(&user)
            .arg("on")
            .arg(format!(">{password}"))
            .arg("~*")
            .arg("+@all")
            .query_async(&mut admin)
            .await
            .expect("ACL SETUSER");
        let config = |password: &str| RedisConfig {
            url: url.into(),
            username: Some(user.clone()),
            password: Some(password.to_owned()),
            namespace: "acl-test".into(),
            partitions: 1,
            instance: "acl-test".into(),
        };
        let whoami = async |config: RedisConfig| -> anyhow::Result<String> {
            let mut conn = client(&config)?.get_multiplexed_async_connection().await?;
            Ok(redis::cmd("ACL")
                .arg("WHOAMI")
                .query_async(&mut conn)
                .await?)
        };
        let right = whoami(config(&password)).await;
        let wrong = whoami(config("not-the-password")).await;
        let _: () = redis::cmd("ACL")
            .arg("DELUSER")
            .arg(&user)
            .query_async(&mut admin)
            .await
            .expect("ACL DELUSER");
        assert_eq!(right.expect("the ACL user logs in"), user);
        let wrong = format!("{:#}", wrong.expect_err("a wrong password is refused"));
        assert!(
            !wrong.contains("not-the-password") && !wrong.contains(&password),
            "{wrong}"
        );
    }

    #[test]
    fn partitions_are_stable_and_spread() {
        assert_eq!(partition_of("order-1", 8), partition_of("order-1", 8));
        let used: HashSet<u32> = (0..200)
            .map(|i| partition_of(&format!("k{i}"), 8))
            .collect();
        assert_eq!(used.len(), 8);
        // Known values: changing the hash would move keys between streams.
        assert_eq!(partition_of("", 8), (0xcbf2_9ce4_8422_2325_u64 % 8) as u32);
        assert_eq!(partition_of("a", 1), 0);
    }

    fn entry(partition: u32, key: &str, id: &str) -> Entry {
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
    fn a_key_s_next_entry_is_ready_only_once_the_one_before_settled() {
        let now = Instant::now();
        let mut flow = flow_owning(&[0], now + Duration::from_secs(60));
        assert!(flow.offer(entry(0, "k", "1-0")));
        assert!(!flow.offer(entry(0, "k", "2-0")));
        assert!(
            !flow.offer(entry(0, "k", "2-0")),
            "offered twice, queued once"
        );
        assert_eq!(flow.in_flight(), 2);
        let first = flow.hand_out(now).expect("the first entry");
        assert!(flow.hand_out(now).is_none(), "the second waits");
        assert!(flow.settle(&first.tag()));
        assert_eq!(&*flow.hand_out(now).expect("the second").id, "2-0");
    }

    #[test]
    fn a_lost_partition_drops_what_waits_and_keeps_the_key_held_by_what_is_handed_out() {
        let now = Instant::now();
        let mut flow = flow_owning(&[0, 1], now + Duration::from_secs(60));
        flow.offer(entry(0, "k", "1-0"));
        flow.offer(entry(0, "k", "2-0"));
        flow.offer(entry(0, "j", "3-0"));
        flow.offer(entry(1, "m", "4-0"));
        let handed = flow.hand_out(now).expect("k's head");
        flow.lose(0);
        assert_eq!(
            flow.in_flight(),
            2,
            "k's handed-out head and m stay counted; k's second and j are dropped"
        );
        assert_eq!(&*flow.hand_out(now).expect("m").id, "4-0");
        // The partition comes back and k's second entry is found again: it still waits
        // behind the head the consumer holds.
        flow.owned
            .extend(flow_owning(&[0], now + Duration::from_secs(60)).owned);
        assert!(!flow.offer(entry(0, "k", "2-0")));
        assert!(flow.settle(&handed.tag()));
        assert_eq!(&*flow.hand_out(now).expect("k's second").id, "2-0");
    }

    #[test]
    fn entries_of_a_partition_whose_lease_ran_out_wait_and_others_go_on() {
        let now = Instant::now();
        let mut flow = flow_owning(&[0], now);
        flow.owned
            .extend(flow_owning(&[1], now + Duration::from_secs(60)).owned);
        flow.offer(entry(0, "k", "1-0"));
        flow.offer(entry(1, "m", "2-0"));
        assert_eq!(&*flow.hand_out(now).expect("m").id, "2-0");
        assert!(flow.hand_out(now).is_none(), "k waits for a renewal");
        assert_eq!(flow.in_flight(), 2, "k is not dropped");
        flow.owned.get_mut(&0).expect("owned").confirmed_until = now + Duration::from_secs(60);
        assert_eq!(&*flow.hand_out(now).expect("k").id, "1-0");
    }

    #[test]
    fn stream_ids_parse() {
        assert_eq!(parse_id("1700000000000-3"), Some((1_700_000_000_000, 3)));
        assert_eq!(parse_id("nope"), None);
    }
}
