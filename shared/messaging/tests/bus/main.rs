//! The bus tests: the conformance suite every bus implementation passes (`conformance.rs`)
//! and what only the Redis Streams bus has to prove (`redis.rs`), against real databases
//! (SQLite and PostgreSQL) and a real Redis, with the real relay and consumer. A producer module
//! ("checkout") publishes `checkout.order_confirmed.v1` events through its outbox; a
//! consumer module ("fulfillment") applies each one with a deliberately non-idempotent
//! effect (a counter incremented, a row appended), so a duplicate or a loss shows.
//!
//! Each conformance test runs for every (bus, backend) pair (`conformance!`).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use contracts::checkout::{AddressV1, OrderConfirmedV1, OrderLineV1};
use contracts::{Cause, Envelope, Event};
use futures::StreamExt;
use messaging::local_bus::LocalBus;
use messaging::outbox::{Outbox, Relay};
use messaging::{
    Consumer, EventBus, Faults, Handler, HandlerError, MessagingSettings, Outgoing, RedisBus,
    RedisConfig, SubscriberSpec, Tx,
};
use sea_orm::{ConnectionTrait, Database, DbBackend};
use store::ModuleDb;
use store::{execute, query};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub(crate) const PRODUCER: &str = "checkout";
pub(crate) const CONSUMER: &str = "fulfillment";
pub(crate) const WAIT: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, Debug)]
pub(crate) enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Clone, Copy, Debug)]
pub(crate) enum Transport {
    /// The in-process bus as configured by default: events handed to the consumer of this
    /// process directly where they can be, the rest through the queue.
    Local,
    /// The in-process bus with `direct_delivery` off: every event through the queue.
    Queued,
    Redis,
}

pub(crate) const REDIS: &str = "redis://127.0.0.1:6379/0";

pub(crate) fn settings() -> MessagingSettings {
    MessagingSettings {
        relay_batch: 50,
        consumer_batch: 20,
        max_in_flight: 100,
        poll_interval_ms: 20,
        lease_ms: 2000,
        max_attempts: 3,
        retry_base_ms: 10,
        retry_max_ms: 50,
        outbox_retention_secs: 0,
        inbox_retention_secs: 3600,
        cleanup_interval_secs: 3600,
        direct_delivery: true,
        handover_wait_ms: 300,
    }
}

/// Two module databases (a producer's and a consumer's) and a Redis namespace, for one
/// test.
pub(crate) struct Dbs {
    producer: ModuleDb,
    consumer: ModuleDb,
    namespace: String,
    /// Where the databases are, for a child process to attach to them.
    location: Location,
    /// Dropped (and cleaned up) by the test that made them; a child process attached to
    /// them owns nothing.
    _dir: Option<tempfile::TempDir>,
    pg: Option<String>,
}

/// Where a test's two module databases live.
#[derive(Debug, Clone)]
pub(crate) enum Location {
    /// A directory holding one SQLite file per module.
    Sqlite(std::path::PathBuf),
    /// A PostgreSQL database with one schema per module.
    Postgres(String),
}

impl Drop for Dbs {
    fn drop(&mut self) {
        // A child process attached to another test's databases leaves them to it.
        if self._dir.is_none() && self.pg.is_none() {
            return;
        }
        // Remove this test's Redis keys.
        if let Ok(mut conn) = redis::Client::open(REDIS).and_then(|c| c.get_connection()) {
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("{}:*", self.namespace))
                .query(&mut conn)
                .unwrap_or_default();
            if !keys.is_empty() {
                let _: Result<i64, _> = redis::cmd("DEL").arg(keys).query(&mut conn);
            }
        }
        if let Some(name) = self.pg.take() {
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(async {
                    let admin =
                        Database::connect("postgres://postgres@127.0.0.1:5432/postgres").await?;
                    admin
                        .execute_unprepared(&format!(
                            "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                        ))
                        .await?;
                    anyhow::Ok(())
                })
            })
            .join();
        }
    }
}

pub(crate) async fn open(backend: Backend) -> Dbs {
    let (location, dir, pg) = match backend {
        Backend::Sqlite => {
            let dir = tempfile::tempdir().expect("temp dir");
            (Location::Sqlite(dir.path().to_owned()), Some(dir), None)
        }
        Backend::Postgres => {
            let name = format!("t_{}", Uuid::new_v4().simple());
            let admin = Database::connect("postgres://postgres@127.0.0.1:5432/postgres")
                .await
                .expect("PostgreSQL runs on 127.0.0.1:5432");
            admin
                .execute_unprepared(&format!("CREATE DATABASE \"{name}\""))
                .await
                .expect("create database");
            (Location::Postgres(name.clone()), None, Some(name))
        }
    };
    let (producer, consumer) = connect(&location).await;
    for conn in [&producer, &consumer] {
        use sea_orm_migration::MigratorTrait;
        MessagingOnly::up(conn, None)
            .await
            .expect("messaging tables");
    }
    let (effects, counters) = match backend {
        Backend::Sqlite => (
            "CREATE TABLE effects (id INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL, ordering_key TEXT NOT NULL, seq BIGINT NOT NULL)",
            "CREATE TABLE counters (name TEXT PRIMARY KEY, n BIGINT NOT NULL)",
        ),
        Backend::Postgres => (
            "CREATE TABLE effects (id BIGSERIAL PRIMARY KEY, event_id TEXT NOT NULL, ordering_key TEXT NOT NULL, seq BIGINT NOT NULL)",
            "CREATE TABLE counters (name TEXT PRIMARY KEY, n BIGINT NOT NULL)",
        ),
    };
    consumer
        .execute_unprepared(effects)
        .await
        .expect("effects table");
    consumer
        .execute_unprepared(counters)
        .await
        .expect("counters table");
    consumer
        .execute_unprepared("INSERT INTO counters (name, n) VALUES ('applied', 0)")
        .await
        .expect("counter");
    Dbs {
        producer: module_db(&location, PRODUCER, producer).await,
        consumer: module_db(&location, CONSUMER, consumer).await,
        namespace: format!("test-{}", Uuid::new_v4().simple()),
        location,
        _dir: dir,
        pg,
    }
}

/// Connects to the databases another process's test made (see [`Dbs::location`]), under
/// the same Redis namespace; dropping the result leaves them to their owner.
pub(crate) async fn attach(location: Location, namespace: String) -> Dbs {
    let (producer, consumer) = connect(&location).await;
    Dbs {
        producer: module_db(&location, PRODUCER, producer).await,
        consumer: module_db(&location, CONSUMER, consumer).await,
        namespace,
        location,
        _dir: None,
        pg: None,
    }
}

impl Dbs {
    pub(crate) fn location(&self) -> &Location {
        &self.location
    }

    pub(crate) fn namespace(&self) -> &str {
        &self.namespace
    }
}

/// `module`'s database on `pool`, with (on SQLite) the pool of one connection its write
/// transactions begin on, as the application opens it (`ModuleDb::with_writer`).
async fn module_db(
    location: &Location,
    module: &'static str,
    pool: sea_orm::DatabaseConnection,
) -> ModuleDb {
    let db = ModuleDb::new(module, pool);
    let Location::Sqlite(dir) = location else {
        return db;
    };
    let mut options = sea_orm::ConnectOptions::new(sqlite_url(dir, module));
    options.max_connections(1).sqlx_logging(false);
    let writer = Database::connect(options).await.expect("sqlite writer");
    writer
        .execute_unprepared("PRAGMA busy_timeout = 10000;")
        .await
        .expect("pragmas");
    db.with_writer(writer)
}

/// `module`'s SQLite file in `dir`, created if missing.
fn sqlite_url(dir: &std::path::Path, module: &str) -> String {
    format!(
        "sqlite://{}?mode=rwc",
        dir.join(format!("{module}.db")).display()
    )
}

/// The producer's and the consumer's connections.
async fn connect(
    location: &Location,
) -> (sea_orm::DatabaseConnection, sea_orm::DatabaseConnection) {
    match location {
        Location::Sqlite(dir) => {
            let producer = Database::connect(sqlite_url(dir, PRODUCER))
                .await
                .expect("sqlite");
            let consumer = Database::connect(sqlite_url(dir, CONSUMER))
                .await
                .expect("sqlite");
            for conn in [&producer, &consumer] {
                conn.execute_unprepared("PRAGMA journal_mode = WAL; PRAGMA busy_timeout = 10000;")
                    .await
                    .expect("pragmas");
            }
            (producer, consumer)
        }
        Location::Postgres(name) => {
            let connect = |schema: &'static str| async move {
                let mut options = sea_orm::ConnectOptions::new(format!(
                    "postgres://postgres@127.0.0.1:5432/{name}"
                ));
                options
                    .max_connections(4)
                    .sqlx_logging(false)
                    .set_schema_search_path(schema);
                let conn = Database::connect(options).await.expect("connect");
                conn.execute_unprepared(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
                    .await
                    .expect("schema");
                conn
            };
            (connect(PRODUCER).await, connect(CONSUMER).await)
        }
    }
}

pub(crate) async fn bus(transport: Transport, dbs: &Dbs, instance: &str) -> Arc<dyn EventBus> {
    bus_configured(transport, dbs, instance, settings()).await
}

/// [`bus`] with other settings (leases, capacity).
pub(crate) async fn bus_configured(
    transport: Transport,
    dbs: &Dbs,
    instance: &str,
    settings: MessagingSettings,
) -> Arc<dyn EventBus> {
    match transport {
        Transport::Local | Transport::Queued => {
            let settings = MessagingSettings {
                direct_delivery: matches!(transport, Transport::Local),
                ..settings
            };
            let mut bus = LocalBus::new(instance, settings);
            bus.add_consumer(dbs.consumer.clone());
            Arc::new(bus)
        }
        Transport::Redis => {
            let config = RedisConfig {
                url: REDIS.into(),
                username: None,
                password: None,
                namespace: dbs.namespace.clone(),
                partitions: 4,
                instance: instance.into(),
            };
            Arc::new(
                RedisBus::connect(config, settings)
                    .await
                    .expect("Redis runs on 127.0.0.1:6379"),
            )
        }
    }
}

/// Applies each event with effects that are wrong if applied twice.
pub(crate) struct Recorder;

#[async_trait]
impl Handler for Recorder {
    fn name(&self) -> &'static str {
        "conformance.recorder"
    }
    fn event_types(&self) -> &'static [&'static str] {
        &[OrderConfirmedV1::TYPE]
    }
    async fn handle(&self, tx: &mut Tx, events: &[&Envelope]) -> Result<(), HandlerError> {
        for (event, payload) in messaging::decode_all::<OrderConfirmedV1>(events)? {
            apply_effects(tx, event.id, &event.key, payload.total_minor).await?;
        }
        Ok(())
    }
}

/// The effects of applying one event: a row naming it and the applied counter, both
/// wrong if done twice.
pub(crate) async fn apply_effects(
    tx: &impl ConnectionTrait,
    event_id: Uuid,
    key: &str,
    seq: i64,
) -> Result<(), HandlerError> {
    execute(
        tx,
        "INSERT INTO effects (event_id, ordering_key, seq) VALUES ($1, $2, $3)",
        vec![event_id.to_string().into(), key.into(), seq.into()],
    )
    .await?;
    execute(
        tx,
        "UPDATE counters SET n = n + 1 WHERE name = 'applied'",
        vec![],
    )
    .await?;
    Ok(())
}

/// The payload of an event of `key` carrying sequence number `seq`.
pub(crate) fn payload(key: Uuid, seq: i64) -> OrderConfirmedV1 {
    OrderConfirmedV1 {
        order_id: key,
        lines: vec![OrderLineV1 {
            sku: "A".into(),
            quantity: 1,
            unit_price_minor: 0,
        }],
        currency: "EUR".into(),
        total_minor: seq,
        customer_email: "a@b.co".into(),
        shipping_address: AddressV1 {
            name: "n".into(),
            line1: "l".into(),
            line2: None,
            city: "c".into(),
            postal_code: "p".into(),
            country: "GB".into(),
        },
    }
}

/// An event of `key` carrying sequence number `seq`.
pub(crate) fn event(key: Uuid, seq: i64) -> Envelope {
    Envelope::new(&payload(key, seq), &Cause::fresh()).expect("valid event")
}

pub(crate) fn outgoing(e: &Envelope) -> Outgoing {
    Outgoing {
        event_id: e.id,
        event_type: e.event_type.clone(),
        source: e.source.clone(),
        key: e.key.clone(),
        envelope: Arc::from(String::from_utf8(e.to_bytes()).expect("utf-8")),
        handed_before: false,
    }
}

/// `keys` keys with `per_key` events each, interleaved as a producer would write them.
pub(crate) fn events(keys: usize, per_key: i64) -> Vec<Envelope> {
    let keys: Vec<Uuid> = (0..keys).map(|_| Uuid::now_v7()).collect();
    (1..=per_key)
        .flat_map(|seq| keys.iter().map(move |k| event(*k, seq)))
        .collect()
}

/// Commits events made by the test to the producer's outbox, and wakes its relay, as a
/// use case's transaction would.
pub(crate) async fn commit(dbs: &Dbs, outbox: &Outbox, events: &[Envelope]) {
    let tx = dbs.producer.begin().await.expect("begin");
    messaging::outbox::append(&tx, events)
        .await
        .expect("append");
    tx.commit().await.expect("commit");
    outbox.wake();
}

pub(crate) struct Running {
    cancel: CancellationToken,
    /// The relay and the consumer; the consumer owns its subscription, and with it the
    /// bus's reader, which is aborted with it.
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    /// Stops like a killed process: every task, bus readers included, is aborted where it
    /// stands, so nothing is handed back gracefully and leases run out on their own.
    pub(crate) async fn kill(self) {
        for task in &self.tasks {
            task.abort();
        }
        for task in self.tasks {
            let _ = task.await;
        }
    }

    pub(crate) async fn stop(self) {
        self.cancel.cancel();
        for task in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
    }
}

/// Starts a relay for the producer and a consumer for the consumer module, as one process
/// named `instance`.
pub(crate) async fn start(
    transport: Transport,
    dbs: &Dbs,
    instance: &str,
    faults: Faults,
    relay: bool,
) -> Running {
    let bus = bus(transport, dbs, instance).await;
    start_on(bus, dbs, instance, faults, relay).await
}

/// [`start`] on a given bus.
pub(crate) async fn start_on(
    bus: Arc<dyn EventBus>,
    dbs: &Dbs,
    instance: &str,
    faults: Faults,
    relay: bool,
) -> Running {
    start_configured(bus, dbs, instance, faults, relay, settings()).await
}

/// [`start_on`] with other settings for the relay and the consumer (the bus keeps the
/// settings it was made with).
pub(crate) async fn start_configured(
    bus: Arc<dyn EventBus>,
    dbs: &Dbs,
    instance: &str,
    faults: Faults,
    relay: bool,
    settings: MessagingSettings,
) -> Running {
    run(
        bus,
        dbs,
        instance,
        faults,
        relay,
        settings,
        vec![Arc::new(Recorder)],
    )
    .await
}

/// A relay and a consumer running `handlers`, as one process named "instance-a" on the
/// in-process bus.
pub(crate) async fn start_handling(dbs: &Dbs, handlers: Vec<Arc<dyn Handler>>) -> Running {
    let bus = bus(Transport::Local, dbs, "instance-a").await;
    let faults = Faults::default();
    run(bus, dbs, "instance-a", faults, true, settings(), handlers).await
}

/// Starts the relay (if `relay`) and a consumer running `handlers`.
async fn run(
    bus: Arc<dyn EventBus>,
    dbs: &Dbs,
    instance: &str,
    faults: Faults,
    relay: bool,
    settings: MessagingSettings,
    handlers: Vec<Arc<dyn Handler>>,
) -> Running {
    let cancel = CancellationToken::new();
    // Subscribed before the relay starts, as the host does: the relay's first pass finds
    // the subscription live and may hand its events over directly.
    let subscription = bus
        .subscribe(SubscriberSpec {
            module: CONSUMER,
            event_types: vec![OrderConfirmedV1::TYPE],
            max_in_flight: settings.max_in_flight,
        })
        .await
        .expect("subscribe");
    let mut tasks = Vec::new();
    if relay {
        let relay = Relay {
            db: dbs.producer.clone(),
            outbox: Outbox::new(PRODUCER),
            bus: bus.clone(),
            settings: settings.clone(),
            instance: instance.to_owned(),
            faults: faults.clone(),
        };
        tasks.push(tokio::spawn(relay.run(cancel.child_token())));
    }
    let consumer = Consumer {
        db: dbs.consumer.clone(),
        outbox: Outbox::new(CONSUMER),
        handlers,
        settings,
        faults,
        replays: Arc::new(tokio::sync::Notify::new()),
        progress: messaging::Progress::new(CONSUMER),
    };
    tasks.push(tokio::spawn(
        consumer.run(subscription, cancel.child_token()),
    ));
    Running { cancel, tasks }
}

/// What a subscription handed out: (instance, tag, attempt, when), in order.
pub(crate) type Seen =
    Arc<std::sync::Mutex<Vec<(String, messaging::DeliveryTag, u32, std::time::Instant)>>>;

/// The delays a subscription's consumer asked for its retries, in order.
pub(crate) type Retries = Arc<std::sync::Mutex<Vec<Duration>>>;

/// An acknowledger that notes the delay of every retry it is asked for.
struct NotingAcker {
    inner: Arc<dyn messaging::Acker>,
    retries: Retries,
}

#[async_trait]
impl messaging::Acker for NotingAcker {
    async fn ack(&self, tags: &[messaging::DeliveryTag]) -> Result<(), messaging::BusError> {
        self.inner.ack(tags).await
    }

    async fn retry(
        &self,
        tag: &messaging::DeliveryTag,
        delay: Duration,
        error: &str,
    ) -> Result<(), messaging::BusError> {
        self.retries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(delay);
        self.inner.retry(tag, delay, error).await
    }

    async fn postpone(
        &self,
        tag: &messaging::DeliveryTag,
        delay: Duration,
        error: &str,
    ) -> Result<(), messaging::BusError> {
        self.inner.postpone(tag, delay, error).await
    }

    async fn backlog(&self) -> Result<Option<u64>, messaging::BusError> {
        self.inner.backlog().await
    }
}

/// What a bus accepted from a relay: (instance, event id), in order.
pub(crate) type Published = Arc<std::sync::Mutex<Vec<(String, Uuid)>>>;

/// A bus that notes every delivery its subscriptions hand out, and every event it
/// accepted for publication.
pub(crate) struct Spy {
    pub(crate) inner: Arc<dyn EventBus>,
    pub(crate) instance: String,
    pub(crate) seen: Seen,
    pub(crate) published: Published,
    pub(crate) retries: Retries,
}

#[async_trait]
impl EventBus for Spy {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    fn hands_over_directly(&self) -> bool {
        self.inner.hands_over_directly()
    }

    async fn publish(&self, batch: &[Outgoing]) -> Result<(), messaging::BusError> {
        self.inner.publish(batch).await?;
        self.published
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(batch.iter().map(|o| (self.instance.clone(), o.event_id)));
        Ok(())
    }

    async fn subscribe(
        &self,
        spec: SubscriberSpec,
    ) -> Result<messaging::Subscription, messaging::BusError> {
        let inner = self.inner.subscribe(spec).await?;
        let seen = self.seen.clone();
        let instance = self.instance.clone();
        let deliveries = inner
            .deliveries
            .map(move |d| {
                seen.lock().unwrap_or_else(|e| e.into_inner()).push((
                    instance.clone(),
                    d.tag.clone(),
                    d.attempt,
                    std::time::Instant::now(),
                ));
                d
            })
            .boxed();
        Ok(messaging::Subscription {
            deliveries,
            acker: Arc::new(NotingAcker {
                inner: inner.acker,
                retries: self.retries.clone(),
            }),
            reader: inner.reader,
        })
    }

    async fn check(&self) -> Result<(), messaging::BusError> {
        self.inner.check().await
    }
}

pub(crate) async fn scalar(db: &ModuleDb, sql: &str) -> i64 {
    let rows = query(db.conn(), sql, vec![])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    rows.first()
        .map(|r| r.try_get_by_index::<i64>(0).expect("integer"))
        .unwrap_or(0)
}

pub(crate) async fn applied(dbs: &Dbs) -> i64 {
    scalar(
        &dbs.consumer,
        "SELECT n FROM counters WHERE name = 'applied'",
    )
    .await
}

pub(crate) async fn wait_applied(dbs: &Dbs, n: i64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let now = applied(dbs).await;
        if now == n {
            return;
        }
        assert!(
            now <= n,
            "more effects ({now}) than events ({n}): something was applied twice"
        );
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {now} of {n} events applied in time"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What must not change once the system is drained: what waits anywhere (outbox, queue,
/// Redis group), and every effect and record the consumer keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Fingerprint {
    unpublished: i64,
    queued: i64,
    /// Entries of the consumer's group pending or not yet read, over every partition.
    redis_waiting: i64,
    applied: i64,
    effects: i64,
    inbox_keys: i64,
    dead_letters: i64,
}

impl Fingerprint {
    fn waits(&self) -> bool {
        self.unpublished + self.queued + self.redis_waiting > 0
    }
}

pub(crate) async fn fingerprint(dbs: &Dbs, redis_url: &str) -> Fingerprint {
    Fingerprint {
        unpublished: scalar(
            &dbs.producer,
            "SELECT COUNT(*) FROM outbox WHERE published_at IS NULL",
        )
        .await,
        queued: scalar(&dbs.consumer, "SELECT COUNT(*) FROM bus_queue").await,
        redis_waiting: redis_waiting(dbs, redis_url).await,
        applied: applied(dbs).await,
        effects: scalar(&dbs.consumer, "SELECT COUNT(*) FROM effects").await,
        inbox_keys: scalar(&dbs.consumer, "SELECT COUNT(*) FROM inbox").await,
        dead_letters: scalar(&dbs.consumer, "SELECT COUNT(*) FROM dead_letters").await,
    }
}

/// Pending plus not yet read (lag) entries of the consumer's group in the producer's
/// streams of this test's namespace; 0 when the test does not use Redis.
async fn redis_waiting(dbs: &Dbs, url: &str) -> i64 {
    let Ok(client) = redis::Client::open(url) else {
        return 0;
    };
    let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
        return 0;
    };
    let streams: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}:stream:{PRODUCER}:*", dbs.namespace))
        .query_async(&mut conn)
        .await
        .unwrap_or_default();
    let mut waiting = 0;
    for stream in streams {
        let groups: Vec<std::collections::HashMap<String, redis::Value>> = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(&stream)
            .query_async(&mut conn)
            .await
            .expect("XINFO GROUPS");
        for group in groups {
            let name: String = group
                .get("name")
                .and_then(|v| redis::from_redis_value(v.clone()).ok())
                .unwrap_or_default();
            if name != CONSUMER {
                continue;
            }
            let number = |field: &str| -> i64 {
                group
                    .get(field)
                    .and_then(|v| redis::from_redis_value::<i64>(v.clone()).ok())
                    .unwrap_or(0)
            };
            let lag = match group.get("lag") {
                Some(redis::Value::Nil) | None => {
                    // Redis cannot count (entries were deleted): unread unless the group
                    // read up to the stream's last entry.
                    let info: std::collections::HashMap<String, redis::Value> = redis::cmd("XINFO")
                        .arg("STREAM")
                        .arg(&stream)
                        .query_async(&mut conn)
                        .await
                        .expect("XINFO STREAM");
                    let id = |map: &std::collections::HashMap<String, redis::Value>, f: &str| {
                        map.get(f)
                            .and_then(|v| redis::from_redis_value::<String>(v.clone()).ok())
                    };
                    i64::from(id(&info, "last-generated-id") != id(&group, "last-delivered-id"))
                }
                Some(_) => number("lag"),
            };
            waiting += number("pending") + lag;
        }
    }
    waiting
}

/// Waits until the system is drained: every outbox row published, the consumer's queue
/// empty, its Redis group with nothing pending and nothing unread, and all of it seen
/// twice, a few polls apart, with nothing changed in between. Nothing can be applied
/// after that, so what is counted then is final. Returns what was counted.
pub(crate) async fn drained(dbs: &Dbs) -> Fingerprint {
    drained_at(dbs, REDIS).await
}

/// [`drained`] for a test whose Redis is at `redis_url`.
pub(crate) async fn drained_at(dbs: &Dbs, redis_url: &str) -> Fingerprint {
    let deadline = tokio::time::Instant::now() + WAIT;
    let pause = Duration::from_millis(settings().poll_interval_ms * 5);
    loop {
        let first = fingerprint(dbs, redis_url).await;
        if !first.waits() {
            tokio::time::sleep(pause).await;
            let second = fingerprint(dbs, redis_url).await;
            if second == first {
                return second;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not drained in time: {first:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every event applied exactly once, and per key in sequence order, once the system is
/// drained.
pub(crate) async fn assert_exactly_once_in_order(dbs: &Dbs, sent: &[Envelope]) {
    wait_applied(dbs, sent.len() as i64).await;
    let settled = drained(dbs).await;
    assert_eq!(settled.applied, sent.len() as i64, "no event applied twice");
    assert_eq!(
        settled.inbox_keys,
        sent.len() as i64,
        "one inbox key per event and handler"
    );
    let rows = query(
        dbs.consumer.conn(),
        "SELECT event_id, ordering_key, seq FROM effects ORDER BY id",
        vec![],
    )
    .await
    .expect("effects");
    let mut last: std::collections::HashMap<String, i64> = Default::default();
    let mut seen = std::collections::HashSet::new();
    for row in rows {
        let id: String = row.try_get("", "event_id").expect("id");
        let key: String = row.try_get("", "ordering_key").expect("key");
        let seq: i64 = row.try_get("", "seq").expect("seq");
        assert!(seen.insert(id.clone()), "event {id} applied twice");
        let previous = last.insert(key.clone(), seq).unwrap_or(0);
        assert!(
            seq > previous,
            "key {key}: seq {seq} applied after {previous}"
        );
    }
    assert_eq!(seen.len(), sent.len());
}

pub(crate) async fn dead_letters(dbs: &Dbs) -> i64 {
    scalar(
        &dbs.consumer,
        "SELECT COUNT(*) FROM dead_letters WHERE status = 'dead'",
    )
    .await
}

/// One test per backend for each scenario named (the scenarios are functions of the
/// backend).
macro_rules! on_both_backends {
    ($($test:ident),+ $(,)?) => {
        $(
            mod $test {
                use super::*;

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$test(Backend::Sqlite).await
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    super::$test(Backend::Postgres).await
                }
            }
        )+
    };
}

mod cleanup;
mod conformance;
mod hybrid;
mod local_only;
mod process_kill;
mod publishing;
mod redis_faults;
mod redis_only;
mod replays;
mod typed;

/// The messaging tables alone, as every module's migrator lists them.
struct MessagingOnly;

impl sea_orm_migration::MigratorTrait for MessagingOnly {
    fn migrations() -> Vec<Box<dyn sea_orm_migration::MigrationTrait>> {
        vec![
            Box::new(messaging::schema::MessagingTables),
            Box::new(messaging::schema::QueueIndex),
            Box::new(messaging::schema::KeyHeadIndex),
            Box::new(messaging::schema::HandedThrough),
        ]
    }
}
