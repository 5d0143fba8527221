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
//!   every entry id; only then does the relay mark its outbox rows (LESSONS 3).
//! - An instance owns a fair share of the partitions under leases it renews from its
//!   reader loop, whatever its handlers are doing; an entry is taken from another
//!   consumer only when its partition's lease has lapsed (the owner is dead or cut off),
//!   never because a handler is slow (LESSONS 11). Taking a partition first claims every
//!   pending entry of its streams (XAUTOCLAIM from 0), which is how a restarted instance
//!   takes back its own entries and how a dead instance's are recovered (LESSONS 10).
//!   Consumers are never deleted.
//! - Within an instance, an entry is not handed out while an earlier entry of its key is
//!   in flight or waiting for a retry; since one instance owns a key's partition, per-key
//!   order holds across instances.
//! - XACK happens only when the consumer settles a delivery, after its transaction
//!   committed. A retry re-claims the entry after its delay (XCLAIM), which counts the
//!   delivery in Redis, so attempts survive a crash and a poison entry ends in the
//!   dead-letter store.
//! - Reads are bounded by free capacity (`max_in_flight`), batched (COUNT), and blocking
//!   reads use a connection of their own with no response timeout (LESSONS 13, 14).
//! - Streams are trimmed only below what every group has acknowledged; a pending entry
//!   whose data is gone anyway is logged and acknowledged (LESSONS 12).
//! - Connections come back after a Redis restart; with Redis persistence (AOF) nothing is
//!   lost, and groups that vanished are created again from 0.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use async_trait::async_trait;
use redis::aio::{ConnectionManager, MultiplexedConnection};
use redis::streams::{StreamAutoClaimReply, StreamId, StreamReadReply};
use redis::{AsyncConnectionConfig, Value as RedisValue};
use tokio::sync::{Notify, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use crate::bus::{
    Acker, BusError, Delivery, DeliveryTag, EventBus, Outgoing, SubscriberSpec, Subscription,
};
use crate::settings::MessagingSettings;

/// How to reach Redis and lay out keys.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    pub url: String,
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
        self.inner.trim(producer).await.map_err(unavailable)
    }

    pub async fn connect(config: RedisConfig, settings: MessagingSettings) -> anyhow::Result<Self> {
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
}

fn client(config: &RedisConfig) -> anyhow::Result<redis::Client> {
    use redis::IntoConnectionInfo;
    let mut info = config
        .url
        .as_str()
        .into_connection_info()
        .with_context(|| format!("{} is not a Redis URL", config.url))?;
    if let Some(password) = &config.password {
        let settings = info.redis_settings().clone().set_password(password.clone());
        info = info.set_redis_settings(settings);
    }
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

fn unavailable(e: redis::RedisError) -> BusError {
    BusError::Unavailable(format!("Redis: {e}"))
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
            inner.ensure_groups(producer).await.map_err(unavailable)?;
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
        let ids: Vec<String> = pipe.query_async(&mut conn).await.map_err(unavailable)?;
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
            inner.ensure_groups(producer).await.map_err(unavailable)?;
        }
        let reader = inner
            .client
            .get_multiplexed_async_connection_with_config(
                // This connection only ever blocks on XREADGROUP: no response timeout, and
                // nothing else waits behind it.
                &AsyncConnectionConfig::new().set_response_timeout(None),
            )
            .await
            .map_err(unavailable)?;
        let (tx, rx) = mpsc::channel(spec.max_in_flight.max(1));
        let state = Arc::new(SubState {
            inner: inner.clone(),
            group: spec.module,
            tx,
            freed: Notify::new(),
            max_in_flight: spec.max_in_flight.max(1),
            flow: Mutex::new(Flow::default()),
        });
        let types: HashSet<&'static str> = spec.event_types.iter().copied().collect();
        let reader = tokio::spawn(read(state.clone(), reader, producers, types));
        Ok(Subscription {
            deliveries: Box::pin(ReceiverStream::new(rx)),
            acker: Arc::new(RedisAcker(state)),
            reader: Some(reader),
        })
    }

    async fn check(&self) -> Result<(), BusError> {
        let mut conn = self.inner.conn.clone();
        let _: String = redis::cmd("PING")
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}

/// One entry on its way to the consumer.
#[derive(Debug, Clone)]
struct Entry {
    stream: Arc<str>,
    id: Arc<str>,
    /// Producer-qualified ordering key (the stream names the producer).
    key: String,
    raw: Arc<[u8]>,
    attempt: u32,
}

impl Entry {
    fn tag(&self) -> DeliveryTag {
        DeliveryTag::Entry {
            stream: self.stream.clone(),
            id: self.id.clone(),
        }
    }
}

#[derive(Default)]
struct Flow {
    /// Handed out or retrying, by tag: the entry and its key.
    outstanding: HashMap<DeliveryTag, Entry>,
    /// Keys with an entry outstanding, and what waits behind it.
    waiting: HashMap<String, VecDeque<Entry>>,
    waiting_count: usize,
    /// Partitions this instance owns, with their lease expiry.
    owned: HashMap<u32, Instant>,
    /// Acknowledgements Redis did not take (it was away); sent again by the reader.
    unacked: Vec<(Arc<str>, String)>,
}

struct SubState {
    inner: Arc<Inner>,
    group: &'static str,
    tx: mpsc::Sender<Delivery>,
    freed: Notify,
    max_in_flight: usize,
    flow: Mutex<Flow>,
}

impl SubState {
    fn flow(&self) -> std::sync::MutexGuard<'_, Flow> {
        self.flow.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn in_flight(&self) -> usize {
        let flow = self.flow();
        flow.outstanding.len() + flow.waiting_count
    }

    /// Hands an entry out, or queues it behind the entry of its key in flight.
    async fn offer(&self, entry: Entry) {
        let ready = {
            let mut flow = self.flow();
            if flow.outstanding.contains_key(&entry.tag()) {
                // Already in flight here (claimed again): nothing to do.
                None
            } else if let Some(queue) = flow.waiting.get_mut(&entry.key) {
                queue.push_back(entry);
                flow.waiting_count += 1;
                None
            } else {
                flow.waiting.insert(entry.key.clone(), VecDeque::new());
                flow.outstanding.insert(entry.tag(), entry.clone());
                Some(entry)
            }
        };
        if let Some(entry) = ready {
            self.send(entry).await;
        }
    }

    async fn send(&self, entry: Entry) {
        let _ = self
            .tx
            .send(Delivery {
                tag: entry.tag(),
                raw: entry.raw.clone(),
                attempt: entry.attempt,
            })
            .await;
    }

    /// A delivery is done: release the next entry of its key, if any.
    async fn settled(&self, tag: &DeliveryTag) {
        let next = {
            let mut flow = self.flow();
            let Some(entry) = flow.outstanding.remove(tag) else {
                return;
            };
            let next = flow
                .waiting
                .get_mut(&entry.key)
                .and_then(VecDeque::pop_front);
            match &next {
                Some(next) => {
                    flow.waiting_count -= 1;
                    flow.outstanding.insert(next.tag(), next.clone());
                }
                None => {
                    flow.waiting.remove(&entry.key);
                }
            }
            next
        };
        if let Some(next) = next {
            self.send(next).await;
        }
        self.freed.notify_one();
    }
}

/// Turns stream entries into [`Entry`]s; entries of types this group does not take are
/// returned apart, to be acknowledged at once.
fn entries(
    stream: &str,
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

/// The reader: keeps this instance's membership and partition leases, claims the pending
/// entries of partitions it takes, and reads new entries as capacity frees up.
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
    let block_ms = (inner.settings.lease_ms / 6).clamp(10, 1000);
    let mut last_maintenance: Option<Instant> = None;
    let mut failures = 0_u32;
    let mut turn = 0_usize;
    loop {
        if state.tx.is_closed() {
            break;
        }
        if last_maintenance.is_none_or(|t| t.elapsed() >= maintain_every) {
            match maintain(&state, &producers, &types).await {
                Ok(()) => last_maintenance = Some(Instant::now()),
                Err(e) => {
                    tracing::warn!(module = group, error = %format!("{e:#}"), "keeping partition leases failed")
                }
            }
        }
        let free = state.max_in_flight.saturating_sub(state.in_flight());
        let streams: Vec<String> = {
            let flow = state.flow();
            let mut owned: Vec<u32> = flow.owned.keys().copied().collect();
            owned.sort_unstable();
            owned
                .iter()
                .flat_map(|p| producers.iter().map(|prod| inner.stream(prod, *p)))
                .collect()
        };
        if free == 0 || streams.is_empty() {
            tokio::select! {
                _ = state.tx.closed() => break,
                _ = state.freed.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(block_ms)) => {}
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
            cmd.query_async(&mut reader).await;
        match reply {
            Ok(reply) => {
                failures = 0;
                let mut conn = inner.conn.clone();
                for key in reply.map(|r| r.keys).unwrap_or_default() {
                    let (keep, skip) = entries(&key.key, key.ids, &types);
                    if let Err(e) = ack_ids(&mut conn, &key.key, group, &skip).await {
                        tracing::warn!(module = group, error = %e, "acknowledging foreign entries failed");
                    }
                    for entry in keep {
                        state.offer(entry).await;
                    }
                }
            }
            Err(e) => {
                failures += 1;
                let delay = inner.settings.backoff(failures);
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
                    tracing::warn!(module = group, error = %e, delay_ms = delay.as_millis() as u64, "reading streams failed; reconnecting");
                    if let Ok(fresh) = inner
                        .client
                        .get_multiplexed_async_connection_with_config(
                            &AsyncConnectionConfig::new().set_response_timeout(None),
                        )
                        .await
                    {
                        reader = fresh;
                    }
                }
                tokio::select! {
                    _ = state.tx.closed() => break,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
    // Leave: hand the partitions back so another instance takes them at once.
    let owned: Vec<u32> = state.flow().owned.keys().copied().collect();
    let mut conn = inner.conn.clone();
    for partition in owned {
        let _ = release(&mut conn, &inner, group, partition).await;
    }
    let _: Result<i64, _> = redis::cmd("ZREM")
        .arg(inner.key(&format!("members:{group}")))
        .arg(&inner.config.instance)
        .query_async(&mut conn)
        .await;
    tracing::debug!(module = group, "subscription closed");
}

const RENEW: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end";
const RELEASE: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end";

async fn release(
    conn: &mut ConnectionManager,
    inner: &Inner,
    group: &str,
    partition: u32,
) -> Result<i64, redis::RedisError> {
    redis::Script::new(RELEASE)
        .key(inner.key(&format!("lease:{group}:{partition}")))
        .arg(&inner.config.instance)
        .invoke_async(conn)
        .await
}

/// Heartbeat, renew owned leases, take free partitions up to a fair share (claiming their
/// pending entries), and give back partitions above it that have nothing in flight.
async fn maintain(
    state: &Arc<SubState>,
    producers: &[String],
    types: &HashSet<&'static str>,
) -> anyhow::Result<()> {
    let inner = &state.inner;
    let group = state.group;
    let me = &inner.config.instance;
    let lease_ms = inner.settings.lease_ms;
    let mut conn = inner.conn.clone();
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
    let share = partitions.div_ceil(live.max(1));

    // Acknowledgements that failed earlier.
    let unacked = std::mem::take(&mut state.flow().unacked);
    for (stream, id) in &unacked {
        if let Err(e) = ack_ids(&mut conn, stream, group, std::slice::from_ref(id)).await {
            state.flow().unacked.push((stream.clone(), id.clone()));
            return Err(e.into());
        }
    }

    // Renew what we hold; forget what we lost.
    let owned: Vec<u32> = state.flow().owned.keys().copied().collect();
    for partition in owned {
        let renewed: i64 = redis::Script::new(RENEW)
            .key(inner.key(&format!("lease:{group}:{partition}")))
            .arg(me)
            .arg(lease_ms)
            .invoke_async(&mut conn)
            .await?;
        let mut flow = state.flow();
        if renewed == 1 {
            flow.owned
                .insert(partition, Instant::now() + Duration::from_millis(lease_ms));
        } else {
            tracing::warn!(
                module = group,
                partition,
                "lost a partition lease; another instance owns it now"
            );
            flow.owned.remove(&partition);
        }
    }

    // Take free partitions, starting at a place of our own so instances spread out.
    let start = partition_of(me, partitions);
    for offset in 0..partitions {
        if state.flow().owned.len() as u32 >= share {
            break;
        }
        let partition = (start + offset) % partitions;
        if state.flow().owned.contains_key(&partition) {
            continue;
        }
        let taken: Option<String> = redis::cmd("SET")
            .arg(inner.key(&format!("lease:{group}:{partition}")))
            .arg(me)
            .arg("NX")
            .arg("PX")
            .arg(lease_ms)
            .query_async(&mut conn)
            .await?;
        if taken.is_none() {
            continue;
        }
        state
            .flow()
            .owned
            .insert(partition, Instant::now() + Duration::from_millis(lease_ms));
        tracing::info!(module = group, partition, "partition taken");
        for producer in producers {
            claim_pending(state, &mut conn, &inner.stream(producer, partition), types).await?;
        }
    }

    // Give back what is above our share, if nothing of it is in flight.
    let excess: Vec<u32> = {
        let flow = state.flow();
        let mut owned: Vec<u32> = flow.owned.keys().copied().collect();
        owned.sort_unstable();
        let busy: HashSet<Arc<str>> = flow
            .outstanding
            .values()
            .map(|e| e.stream.clone())
            .chain(flow.waiting.values().flatten().map(|e| e.stream.clone()))
            .collect();
        owned
            .into_iter()
            .filter(|p| {
                !producers
                    .iter()
                    .any(|prod| busy.contains(inner.stream(prod, *p).as_str()))
            })
            .skip(share as usize)
            .collect()
    };
    let surplus = state.flow().owned.len().saturating_sub(share as usize);
    for partition in excess.into_iter().take(surplus) {
        state.flow().owned.remove(&partition);
        release(&mut conn, inner, group, partition).await?;
        tracing::info!(module = group, partition, "partition handed back");
    }
    Ok(())
}

/// Claims every pending entry of `stream` for this instance (whoever held it) and offers
/// them in id order.
async fn claim_pending(
    state: &Arc<SubState>,
    conn: &mut ConnectionManager,
    stream: &str,
    types: &HashSet<&'static str>,
) -> anyhow::Result<()> {
    let inner = &state.inner;
    let group = state.group;
    let mut cursor = "0-0".to_owned();
    loop {
        let reply: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
            .arg(stream)
            .arg(group)
            .arg(&inner.config.instance)
            .arg(0)
            .arg(&cursor)
            .arg("COUNT")
            .arg(100)
            .query_async(conn)
            .await?;
        if !reply.deleted_ids.is_empty() {
            tracing::error!(
                module = group,
                stream,
                entries = reply.deleted_ids.len(),
                "pending entries were trimmed before being handled; acknowledging them"
            );
            ack_ids(conn, stream, group, &reply.deleted_ids).await?;
        }
        let ids: Vec<String> = reply.claimed.iter().map(|c| c.id.clone()).collect();
        let counts = delivery_counts(conn, stream, group, &ids).await?;
        let claimed: Vec<StreamId> = reply
            .claimed
            .into_iter()
            .map(|mut c| {
                c.delivered_count = counts.get(&c.id).copied();
                c
            })
            .collect();
        let (keep, skip) = entries(stream, claimed, types);
        ack_ids(conn, stream, group, &skip).await?;
        for entry in keep {
            state.offer(entry).await;
        }
        if reply.next_stream_id == "0-0" {
            return Ok(());
        }
        cursor = reply.next_stream_id;
    }
}

/// How many times each of these pending entries was delivered.
async fn delivery_counts(
    conn: &mut ConnectionManager,
    stream: &str,
    group: &str,
    ids: &[String],
) -> Result<HashMap<String, usize>, redis::RedisError> {
    let (Some(first), Some(last)) = (ids.first(), ids.last()) else {
        return Ok(HashMap::new());
    };
    let rows: Vec<(String, String, u64, usize)> = redis::cmd("XPENDING")
        .arg(stream)
        .arg(group)
        .arg(first)
        .arg(last)
        .arg(ids.len())
        .query_async(conn)
        .await?;
    Ok(rows
        .into_iter()
        .map(|(id, _, _, count)| (id, count))
        .collect())
}

struct RedisAcker(Arc<SubState>);

#[async_trait]
impl Acker for RedisAcker {
    async fn ack(&self, tags: &[DeliveryTag]) -> Result<(), BusError> {
        let state = &self.0;
        let mut by_stream: HashMap<Arc<str>, Vec<String>> = HashMap::new();
        for tag in tags {
            if let DeliveryTag::Entry { stream, id } = tag {
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
            state.settled(tag).await;
        }
        acked.map_err(unavailable)
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
            tokio::time::sleep(delay).await;
            let mut failures = 0;
            loop {
                if state.tx.is_closed() {
                    return;
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
                        let again = Entry {
                            attempt: entry.attempt + 1,
                            ..entry
                        };
                        state.flow().outstanding.insert(again.tag(), again.clone());
                        state.send(again).await;
                        return;
                    }
                    Ok(_) => {
                        // The entry's data is gone from the stream: nothing to deliver.
                        tracing::error!(module = state.group, id = %entry.id, "a retried entry was trimmed away");
                        let mut conn = state.inner.conn.clone();
                        let _ = ack_ids(
                            &mut conn,
                            &entry.stream,
                            state.group,
                            &[entry.id.to_string()],
                        )
                        .await;
                        state.settled(&entry.tag()).await;
                        return;
                    }
                    Err(e) => {
                        // Redis is away: the entry stays pending, its key stays held.
                        failures += 1;
                        let delay = state.inner.settings.backoff(failures);
                        tracing::warn!(module = state.group, error = %e, delay_ms = delay.as_millis() as u64, "re-claiming a retried entry failed; trying again");
                        tokio::time::sleep(delay).await;
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

    #[test]
    fn stream_ids_parse() {
        assert_eq!(parse_id("1700000000000-3"), Some((1_700_000_000_000, 3)));
        assert_eq!(parse_id("nope"), None);
    }
}
