//! The bus conformance suite: what every bus implementation must do, proven against real
//! databases (SQLite and PostgreSQL) with the real relay and consumer. A producer module
//! ("checkout") publishes `checkout.order_confirmed.v1` events through its outbox; a
//! consumer module ("fulfillment") applies each one with a deliberately non-idempotent
//! effect (a counter incremented, a row appended), so a duplicate or a loss shows.
//!
//! Each test runs for every (bus, backend) pair listed in `conformance!` at the bottom.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use contracts::checkout::{AddressV1, OrderConfirmedV1, OrderLineV1};
use contracts::{Cause, Envelope, Event};
use futures::StreamExt;
use messaging::db::{execute, query};
use messaging::{
    Consumer, Emitter, EventBus, Faults, Handler, HandlerError, LocalBus, MessagingSettings,
    ModuleDb, Outbox, Outgoing, Relay, SubscriberSpec,
};
use sea_orm::{ConnectionTrait, Database, DatabaseTransaction, DbBackend};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const PRODUCER: &str = "checkout";
const CONSUMER: &str = "fulfillment";
const WAIT: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, Debug)]
enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Clone, Copy, Debug)]
enum Transport {
    Local,
}

fn settings() -> MessagingSettings {
    MessagingSettings {
        relay_batch: 50,
        consumer_batch: 20,
        max_in_flight: 100,
        poll_interval_ms: 20,
        lease_ms: 1000,
        max_attempts: 3,
        retry_base_ms: 10,
        retry_max_ms: 50,
        outbox_retention_secs: 3600,
        inbox_retention_secs: 3600,
        cleanup_interval_secs: 3600,
    }
}

/// Two module databases (a producer's and a consumer's) for one test.
struct Dbs {
    producer: ModuleDb,
    consumer: ModuleDb,
    _dir: Option<tempfile::TempDir>,
    pg: Option<String>,
}

impl Drop for Dbs {
    fn drop(&mut self) {
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

async fn open(backend: Backend) -> Dbs {
    let (producer, consumer, dir, pg) = match backend {
        Backend::Sqlite => {
            let dir = tempfile::tempdir().expect("temp dir");
            let url = |m: &str| {
                format!(
                    "sqlite://{}?mode=rwc",
                    dir.path().join(format!("{m}.db")).display()
                )
            };
            let producer = Database::connect(url(PRODUCER)).await.expect("sqlite");
            let consumer = Database::connect(url(CONSUMER)).await.expect("sqlite");
            for conn in [&producer, &consumer] {
                conn.execute_unprepared("PRAGMA journal_mode = WAL; PRAGMA busy_timeout = 10000;")
                    .await
                    .expect("pragmas");
            }
            (producer, consumer, Some(dir), None)
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
            let connect = |schema: &'static str| {
                let name = name.clone();
                async move {
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
                }
            };
            (
                connect(PRODUCER).await,
                connect(CONSUMER).await,
                None,
                Some(name),
            )
        }
    };
    for conn in [&producer, &consumer] {
        use migrations::MigratorTrait;
        migrations::checkout::Migrator::up(conn, None)
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
        producer: ModuleDb::new(PRODUCER, producer),
        consumer: ModuleDb::new(CONSUMER, consumer),
        _dir: dir,
        pg,
    }
}

/// A bus of the given transport over these databases, for one instance.
fn bus(transport: Transport, dbs: &Dbs, instance: &str) -> Arc<dyn EventBus> {
    match transport {
        Transport::Local => {
            let mut bus = LocalBus::new(instance, settings());
            bus.add_consumer(dbs.consumer.clone());
            Arc::new(bus)
        }
    }
}

/// Applies each event with effects that are wrong if applied twice.
struct Recorder;

#[async_trait]
impl Handler for Recorder {
    fn name(&self) -> &'static str {
        "conformance.recorder"
    }
    fn event_types(&self) -> &'static [&'static str] {
        &[OrderConfirmedV1::TYPE]
    }
    async fn handle(
        &self,
        tx: &DatabaseTransaction,
        events: &[&Envelope],
        _: &mut Emitter,
    ) -> Result<(), HandlerError> {
        for (event, payload) in messaging::decode_all::<OrderConfirmedV1>(events)? {
            execute(
                tx,
                "INSERT INTO effects (event_id, ordering_key, seq) VALUES ($1, $2, $3)",
                vec![
                    event.id.to_string().into(),
                    event.key.clone().into(),
                    payload.total_minor.into(),
                ],
            )
            .await?;
            execute(
                tx,
                "UPDATE counters SET n = n + 1 WHERE name = 'applied'",
                vec![],
            )
            .await?;
        }
        Ok(())
    }
}

/// An event of `key` carrying sequence number `seq`.
fn event(key: Uuid, seq: i64) -> Envelope {
    Envelope::new(
        &OrderConfirmedV1 {
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
        },
        &Cause::fresh(),
    )
    .expect("valid event")
}

fn outgoing(e: &Envelope) -> Outgoing {
    Outgoing {
        event_id: e.id,
        event_type: e.event_type.clone(),
        source: e.source.clone(),
        key: e.key.clone(),
        envelope: Arc::from(String::from_utf8(e.to_bytes()).expect("utf-8")),
    }
}

/// `keys` keys with `per_key` events each, interleaved as a producer would write them.
fn events(keys: usize, per_key: i64) -> Vec<Envelope> {
    let keys: Vec<Uuid> = (0..keys).map(|_| Uuid::now_v7()).collect();
    (1..=per_key)
        .flat_map(|seq| keys.iter().map(move |k| event(*k, seq)))
        .collect()
}

/// Commits events to the producer's outbox, as a use case would.
async fn commit(dbs: &Dbs, outbox: &Outbox, events: &[Envelope]) {
    let tx = dbs.producer.begin().await.expect("begin");
    outbox.append(&tx, events).await.expect("append");
    outbox.commit(tx).await.expect("commit");
}

struct Running {
    cancel: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    /// Stops like a killed process: tasks are aborted where they stand.
    async fn kill(self) {
        for task in &self.tasks {
            task.abort();
        }
        for task in self.tasks {
            let _ = task.await;
        }
    }

    async fn stop(self) {
        self.cancel.cancel();
        for task in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
    }
}

/// Starts a relay for the producer and a consumer for the consumer module, as one process
/// named `instance`.
async fn start(
    transport: Transport,
    dbs: &Dbs,
    instance: &str,
    faults: Faults,
    relay: bool,
) -> Running {
    let bus = bus(transport, dbs, instance);
    let cancel = CancellationToken::new();
    let mut tasks = Vec::new();
    if relay {
        let relay = Relay {
            db: dbs.producer.clone(),
            outbox: Outbox::new(PRODUCER),
            bus: bus.clone(),
            settings: settings(),
            instance: instance.to_owned(),
            faults: faults.clone(),
        };
        tasks.push(tokio::spawn(relay.run(cancel.child_token())));
    }
    let subscription = bus
        .subscribe(SubscriberSpec {
            module: CONSUMER,
            event_types: vec![OrderConfirmedV1::TYPE],
            max_in_flight: settings().max_in_flight,
        })
        .await
        .expect("subscribe");
    let consumer = Consumer {
        db: dbs.consumer.clone(),
        outbox: Outbox::new(CONSUMER),
        handlers: vec![Arc::new(Recorder)],
        settings: settings(),
        faults,
        replays: Arc::new(tokio::sync::Notify::new()),
    };
    tasks.push(tokio::spawn(
        consumer.run(subscription, cancel.child_token()),
    ));
    Running { cancel, tasks }
}

async fn scalar(db: &ModuleDb, sql: &str) -> i64 {
    let rows = query(db.conn(), sql, vec![])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    rows.first()
        .map(|r| r.try_get_by_index::<i64>(0).expect("integer"))
        .unwrap_or(0)
}

async fn applied(dbs: &Dbs) -> i64 {
    scalar(
        &dbs.consumer,
        "SELECT n FROM counters WHERE name = 'applied'",
    )
    .await
}

async fn wait_applied(dbs: &Dbs, n: i64) {
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

/// Every event applied exactly once, and per key in sequence order.
async fn assert_exactly_once_in_order(dbs: &Dbs, sent: &[Envelope]) {
    wait_applied(dbs, sent.len() as i64).await;
    // Let stragglers (duplicates in flight) arrive before checking nothing more came.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        applied(dbs).await,
        sent.len() as i64,
        "no event applied twice"
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

async fn dead_letters(dbs: &Dbs) -> i64 {
    scalar(
        &dbs.consumer,
        "SELECT COUNT(*) FROM dead_letters WHERE status = 'dead'",
    )
    .await
}

// ---------------------------------------------------------------------------------------

async fn events_of_one_key_are_handled_in_order_by_two_instances(
    transport: Transport,
    backend: Backend,
) {
    let dbs = open(backend).await;
    let a = start(transport, &dbs, "instance-a", Faults::default(), true).await;
    let b = start(transport, &dbs, "instance-b", Faults::default(), true).await;
    let sent = events(10, 30);
    let outbox = Outbox::new(PRODUCER);
    for chunk in sent.chunks(25) {
        commit(&dbs, &outbox, chunk).await;
    }
    assert_exactly_once_in_order(&dbs, &sent).await;
    a.stop().await;
    b.stop().await;
}

async fn duplicates_are_applied_once(transport: Transport, backend: Backend) {
    let dbs = open(backend).await;
    let running = start(transport, &dbs, "instance-a", Faults::default(), false).await;
    let publisher = bus(transport, &dbs, "publisher");
    let sent = events(5, 10);
    let batch: Vec<Outgoing> = sent.iter().map(outgoing).collect();
    for _ in 0..3 {
        publisher.publish(&batch).await.expect("publish");
    }
    assert_exactly_once_in_order(&dbs, &sent).await;
    // Once more after everything was handled: the inbox remembers.
    publisher.publish(&batch).await.expect("publish again");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(applied(&dbs).await, sent.len() as i64);
    running.stop().await;
}

async fn a_failing_event_is_retried_then_parked_while_other_keys_flow(
    transport: Transport,
    backend: Backend,
) {
    let dbs = open(backend).await;
    let faults = Faults::for_tests();
    let poison = Uuid::now_v7();
    faults.fail_key(poison.to_string());
    let running = start(transport, &dbs, "instance-a", faults.clone(), true).await;
    let outbox = Outbox::new(PRODUCER);
    let others = events(4, 5);
    let mut sent = vec![event(poison, 1)];
    sent.extend(others.iter().cloned());
    commit(&dbs, &outbox, &sent).await;
    wait_applied(&dbs, others.len() as i64).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while dead_letters(&dbs).await == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the poison event was not parked"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let attempts = scalar(
        &dbs.consumer,
        "SELECT CAST(MAX(attempts) AS BIGINT) FROM dead_letters",
    )
    .await;
    assert_eq!(
        attempts,
        i64::from(settings().max_attempts),
        "parked after max_attempts deliveries"
    );
    // A later event of the poisoned key flows once the first one is parked.
    faults.heal();
    let after = event(poison, 2);
    commit(&dbs, &outbox, std::slice::from_ref(&after)).await;
    wait_applied(&dbs, others.len() as i64 + 1).await;
    running.stop().await;
}

async fn an_event_that_recovers_before_its_last_attempt_is_applied_once(
    transport: Transport,
    backend: Backend,
) {
    let dbs = open(backend).await;
    let faults = Faults::for_tests();
    let key = Uuid::now_v7();
    // Fails on all deliveries but the last one allowed.
    faults.fail_key_times(key.to_string(), settings().max_attempts - 1);
    let running = start(transport, &dbs, "instance-a", faults, true).await;
    let sent = vec![event(key, 1), event(key, 2)];
    commit(&dbs, &Outbox::new(PRODUCER), &sent).await;
    assert_exactly_once_in_order(&dbs, &sent).await;
    assert_eq!(dead_letters(&dbs).await, 0);
    running.stop().await;
}

async fn undecodable_bytes_are_parked_and_the_subscription_goes_on(
    transport: Transport,
    backend: Backend,
) {
    let dbs = open(backend).await;
    let running = start(transport, &dbs, "instance-a", Faults::default(), false).await;
    let publisher = bus(transport, &dbs, "publisher");
    let garbage = Outgoing {
        event_id: Uuid::now_v7(),
        event_type: OrderConfirmedV1::TYPE.into(),
        source: PRODUCER.into(),
        key: "k".into(),
        envelope: Arc::from("\u{1}not json"),
    };
    let sent = events(3, 3);
    let mut batch = vec![garbage];
    batch.extend(sent.iter().map(outgoing));
    publisher.publish(&batch).await.expect("publish");
    assert_exactly_once_in_order(&dbs, &sent).await;
    assert_eq!(dead_letters(&dbs).await, 1);
    let raw = query(dbs.consumer.conn(), "SELECT raw FROM dead_letters", vec![])
        .await
        .expect("raw");
    let raw: Vec<u8> = raw[0].try_get("", "raw").expect("bytes");
    assert_eq!(raw, "\u{1}not json".as_bytes());
    running.stop().await;
}

/// Kills relay and consumer when a task reaches `point`, restarts them under the same
/// instance name, and checks every event is applied exactly once, in order.
async fn crash_at(transport: Transport, backend: Backend, point: &'static str) {
    let dbs = open(backend).await;
    let faults = Faults::for_tests();
    let reached = faults.arm(point);
    let running = start(transport, &dbs, "instance-a", faults, true).await;
    let sent = events(4, 5);
    commit(&dbs, &Outbox::new(PRODUCER), &sent).await;
    tokio::time::timeout(WAIT, reached)
        .await
        .unwrap_or_else(|_| panic!("nothing reached {point}"))
        .expect("reported");
    running.kill().await;
    let running = start(transport, &dbs, "instance-a", Faults::default(), true).await;
    assert_exactly_once_in_order(&dbs, &sent).await;
    running.stop().await;
}

async fn crash_after_commit_before_publish(transport: Transport, backend: Backend) {
    crash_at(transport, backend, "relay.before_publish").await;
}

async fn crash_after_publish_before_the_outbox_row_is_marked(
    transport: Transport,
    backend: Backend,
) {
    crash_at(transport, backend, "relay.after_publish").await;
}

async fn crash_inside_the_handler(transport: Transport, backend: Backend) {
    crash_at(transport, backend, "consumer.before_handler").await;
}

async fn crash_before_the_consumer_commits(transport: Transport, backend: Backend) {
    crash_at(transport, backend, "consumer.before_commit").await;
}

async fn crash_after_the_consumer_committed_before_it_acknowledged(
    transport: Transport,
    backend: Backend,
) {
    crash_at(transport, backend, "consumer.after_commit").await;
}

/// An instance dies holding deliveries; another instance, under another name, takes them
/// over once the dead one's claims lapse, and applies each once.
async fn a_dead_instance_s_deliveries_are_taken_over(transport: Transport, backend: Backend) {
    let dbs = open(backend).await;
    let faults = Faults::for_tests();
    let reached = faults.arm("consumer.before_commit");
    let a = start(transport, &dbs, "instance-a", faults, true).await;
    let sent = events(3, 4);
    commit(&dbs, &Outbox::new(PRODUCER), &sent).await;
    tokio::time::timeout(WAIT, reached)
        .await
        .expect("a reaches the point")
        .expect("reported");
    a.kill().await;
    let b = start(transport, &dbs, "instance-b", Faults::default(), true).await;
    assert_exactly_once_in_order(&dbs, &sent).await;
    b.stop().await;
}

/// A subscription never hands out more than `max_in_flight` unsettled deliveries.
async fn in_flight_deliveries_are_bounded(transport: Transport, backend: Backend) {
    let dbs = open(backend).await;
    let bus = bus(transport, &dbs, "instance-a");
    let sent = events(10, 1);
    bus.publish(&sent.iter().map(outgoing).collect::<Vec<_>>())
        .await
        .expect("publish");
    let mut subscription = bus
        .subscribe(SubscriberSpec {
            module: CONSUMER,
            event_types: vec![OrderConfirmedV1::TYPE],
            max_in_flight: 3,
        })
        .await
        .expect("subscribe");
    let mut got = Vec::new();
    while let Ok(Some(d)) =
        tokio::time::timeout(Duration::from_millis(500), subscription.deliveries.next()).await
    {
        got.push(d);
    }
    assert_eq!(got.len(), 3, "three in flight at most");
    subscription
        .acker
        .ack(&[got[0].tag.clone()])
        .await
        .expect("ack");
    let next = tokio::time::timeout(Duration::from_secs(5), subscription.deliveries.next())
        .await
        .expect("one more after an ack");
    assert!(next.is_some());
    let extra =
        tokio::time::timeout(Duration::from_millis(300), subscription.deliveries.next()).await;
    assert!(extra.is_err(), "still three in flight");
}

/// The backend helper: SQLite statements get SQLite placeholders.
#[test]
fn statements_are_adapted_per_backend() {
    let s = messaging::db::stmt(DbBackend::Sqlite, "SELECT $1", vec![]);
    assert_eq!(s.sql, "SELECT ?1");
}

macro_rules! conformance {
    ($($test:ident),+ $(,)?) => {
        $(
            mod $test {
                use super::*;

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn local_sqlite() {
                    super::$test(Transport::Local, Backend::Sqlite).await
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn local_postgres() {
                    super::$test(Transport::Local, Backend::Postgres).await
                }
            }
        )+
    };
}

conformance!(
    events_of_one_key_are_handled_in_order_by_two_instances,
    duplicates_are_applied_once,
    a_failing_event_is_retried_then_parked_while_other_keys_flow,
    an_event_that_recovers_before_its_last_attempt_is_applied_once,
    undecodable_bytes_are_parked_and_the_subscription_goes_on,
    crash_after_commit_before_publish,
    crash_after_publish_before_the_outbox_row_is_marked,
    crash_inside_the_handler,
    crash_before_the_consumer_commits,
    crash_after_the_consumer_committed_before_it_acknowledged,
    a_dead_instance_s_deliveries_are_taken_over,
    in_flight_deliveries_are_bounded,
);
