//! What the in-process bus has to prove beyond the conformance suite: its claim takes no
//! more rows than asked and costs what it claims, not what is queued, whatever the planner
//! knows of the table; and a delivery whose settlement the database refused still comes
//! back, so a database that fails for a while never freezes a subscription. Also, on both
//! buses: a crash counts as an attempt.

use std::collections::HashSet;
use std::sync::Arc;

use messaging::local_bus::{CLAIM_PLAN_POSTGRES, claim_statement};
use sea_orm::{ConnectionTrait, DbBackend};
use store::{execute, query};

use crate::*;

/// Fills the consumer's queue on PostgreSQL with `keys` keys of `per_key` rows each, plus
/// `held` rows of another live instance at the front, without refreshing statistics.
async fn fill_queue(dbs: &Dbs, keys: i64, per_key: i64, held: i64) {
    let now = store::now_ms();
    execute(
        dbs.consumer.conn(),
        "INSERT INTO bus_queue (event_id, event_type, ordering_key, envelope, visible_at, locked_by, locked_until, enqueued_at) \
         SELECT gen_random_uuid(), 'checkout.order_confirmed.v1', 'checkout/held-' || g, '{}', $1, 'other', $2, $1 \
         FROM generate_series(1, $3) g",
        vec![now.into(), (now + 600_000).into(), held.into()],
    )
    .await
    .expect("held rows");
    execute(
        dbs.consumer.conn(),
        "INSERT INTO bus_queue (event_id, event_type, ordering_key, envelope, visible_at, enqueued_at) \
         SELECT gen_random_uuid(), 'checkout.order_confirmed.v1', 'checkout/k-' || (g % $2), '{}', $1, $1 \
         FROM generate_series(0, $3 - 1) g ORDER BY g",
        vec![now.into(), keys.into(), (keys * per_key).into()],
    )
    .await
    .expect("queued rows");
}

/// Buffers (pages) one claim of `limit` rows reads, from `EXPLAIN (ANALYZE, BUFFERS)`,
/// rolled back.
async fn claim_buffers(dbs: &Dbs, limit: i64) -> (i64, usize) {
    let now = store::now_ms();
    let sql = format!(
        "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {}",
        claim_statement(DbBackend::Postgres)
    );
    let tx = dbs.consumer.begin().await.expect("begin");
    tx.execute_unprepared(CLAIM_PLAN_POSTGRES)
        .await
        .expect("plan");
    let rows = query(
        &tx,
        &sql,
        vec!["me".into(), (now + 60_000).into(), now.into(), limit.into()],
    )
    .await
    .expect("explain");
    let plan: serde_json::Value = rows[0].try_get_by_index(0).expect("plan");
    drop(tx);
    let top = &plan[0]["Plan"];
    let buffers = top["Shared Hit Blocks"].as_i64().unwrap_or(0)
        + top["Shared Read Blocks"].as_i64().unwrap_or(0);
    let claimed = top["Actual Rows"].as_i64().unwrap_or(0) as usize;
    (buffers, claimed)
}

#[tokio::test]
async fn a_claim_reads_pages_in_proportion_to_what_it_claims_not_to_the_backlog() {
    let dbs = open(Backend::Postgres).await;
    // 40,000 rows behind 1,000 held by a live instance; 20,000 keys of two rows each, so
    // half the rows wait behind an earlier row of their key. No ANALYZE: the planner
    // knows nothing of the table, as after a fast-growing burst.
    fill_queue(&dbs, 20_000, 2, 1_000).await;
    let (cold, claimed) = claim_buffers(&dbs, 400).await;
    assert_eq!(claimed, 400, "the claim takes what it asks for");
    dbs.consumer
        .conn()
        .execute_unprepared("ANALYZE bus_queue")
        .await
        .expect("analyze");
    let (analyzed, _) = claim_buffers(&dbs, 400).await;
    // A few index pages per claimed row (the row, its key's probe, the heap) and a
    // walk past the held rows; the old anti-join read 800,000 pages for this.
    let bound = 40 * 400;
    assert!(
        cold < bound && analyzed < bound,
        "a claim of 400 rows read {cold} pages without statistics and {analyzed} with: it should stay under {bound}"
    );
}

#[tokio::test]
async fn concurrent_claims_never_take_more_rows_than_they_ask_for_nor_a_row_twice() {
    let dbs = Arc::new(open(Backend::Postgres).await);
    fill_queue(&dbs, 3_000, 1, 0).await;
    let mut tasks = Vec::new();
    for worker in 0..6 {
        let dbs = dbs.clone();
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            let mut oversized = 0;
            loop {
                let now = store::now_ms();
                let tx = dbs.consumer.begin().await.expect("begin");
                tx.execute_unprepared(CLAIM_PLAN_POSTGRES)
                    .await
                    .expect("plan");
                let rows = query(
                    &tx,
                    claim_statement(DbBackend::Postgres),
                    vec![
                        format!("w{worker}").into(),
                        (now + 60_000).into(),
                        now.into(),
                        7_i64.into(),
                    ],
                )
                .await
                .expect("claim");
                tx.commit().await.expect("commit");
                if rows.len() > 7 {
                    oversized += 1;
                }
                if rows.is_empty() {
                    break;
                }
                got.extend(rows.iter().map(|r| r.try_get::<i64>("", "id").expect("id")));
            }
            (got, oversized)
        }));
    }
    let mut all = HashSet::new();
    let mut total = 0;
    for task in tasks {
        let (got, oversized) = task.await.expect("worker");
        assert_eq!(oversized, 0, "a claim returned more rows than it asked for");
        total += got.len();
        all.extend(got);
    }
    assert_eq!(total, 3_000, "every row claimed once");
    assert_eq!(all.len(), 3_000, "no row claimed twice");
}

#[tokio::test]
async fn a_claim_stays_on_the_key_index_when_its_statistics_are_of_an_empty_queue() {
    let dbs = open(Backend::Postgres).await;
    let conn = dbs.consumer.conn();
    // A queue is empty most of the time, so that is when its statistics are taken: here
    // 20,000 rows come and go, then ANALYZE sees none. Autovacuum stays out, so nothing
    // refreshes them or clears the dead rows.
    for sql in [
        "ALTER TABLE bus_queue SET (autovacuum_enabled = false)",
        "INSERT INTO bus_queue (event_id, event_type, ordering_key, envelope, visible_at, enqueued_at) \
         SELECT gen_random_uuid(), 'checkout.order_confirmed.v1', 'checkout/old-' || g, '{}', 0, 0 \
         FROM generate_series(1, 20000) g",
        "DELETE FROM bus_queue",
        "ANALYZE bus_queue",
    ] {
        conn.execute_unprepared(sql).await.expect(sql);
    }
    // Then a burst: 40,000 rows of two per key, and the oldest 20,000 already delivered.
    fill_queue(&dbs, 20_000, 2, 0).await;
    let rows = query(conn, "SELECT min(id) AS first FROM bus_queue", vec![])
        .await
        .expect("first id");
    let first: i64 = rows[0].try_get("", "first").expect("an id");
    execute(
        conn,
        "DELETE FROM bus_queue WHERE id < $1",
        vec![(first + 20_000).into()],
    )
    .await
    .expect("delivered rows");
    let (buffers, claimed) = claim_buffers(&dbs, 400).await;
    assert_eq!(claimed, 400, "the claim takes what it asks for");
    // With `min(p.id)` and an `(ordering_key, id)` index the planner walked the primary
    // key from its first row for every claimed row: 185,757 pages here. One probe of the
    // `(ordering_key, id + 0)` index per row, and the walk past the delivered rows, read
    // about 10,000.
    let bound = 40 * 400;
    assert!(
        buffers < bound,
        "a claim of 400 rows read {buffers} pages: it should stay under {bound}"
    );
}

#[tokio::test]
async fn deliveries_whose_acknowledgement_failed_come_back_and_the_subscription_goes_on() {
    let dbs = open(Backend::Postgres).await;
    // The database refuses to delete queue rows while `refuse_deletes` holds a row: every
    // acknowledgement fails, as during an outage that begins after the handler committed.
    dbs.consumer
        .conn()
        .execute_unprepared(
            "CREATE TABLE refuse_deletes (x INT); INSERT INTO refuse_deletes VALUES (1); \
             CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS \
               'BEGIN IF EXISTS (SELECT 1 FROM refuse_deletes) THEN RAISE EXCEPTION ''deletes refused''; END IF; RETURN OLD; END'; \
             CREATE TRIGGER refuse BEFORE DELETE ON bus_queue FOR EACH ROW EXECUTE FUNCTION refuse();",
        )
        .await
        .expect("trigger");
    let outbox = Outbox::new(PRODUCER);
    let running = start(Transport::Local, &dbs, "a", Faults::for_tests(), true).await;
    // More events than `max_in_flight` (100): if failed acknowledgements kept their
    // capacity, the subscription would stop after the first hundred.
    let sent = events(250, 1);
    commit(&dbs, &outbox, &sent).await;
    wait_applied(&dbs, sent.len() as i64).await;
    dbs.consumer
        .conn()
        .execute_unprepared("DELETE FROM refuse_deletes")
        .await
        .expect("heal");
    let deadline = tokio::time::Instant::now() + WAIT;
    while scalar(&dbs.consumer, "SELECT COUNT(*) FROM bus_queue").await > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "acknowledged rows stay queued after the database healed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_exactly_once_in_order(&dbs, &sent).await;
    assert_eq!(dead_letters(&dbs).await, 0);
    running.stop().await;
}

/// A delivery the consumer sent back for a retry while the database refused the hand-back
/// comes back as soon as the database accepts it again, not when its claim lapses: after
/// a database outage, a subscription resumes at once instead of waiting out its leases.
#[tokio::test]
async fn a_retry_whose_hand_back_failed_comes_back_when_the_database_does_not_when_its_claim_lapses()
 {
    let dbs = open(Backend::Postgres).await;
    // While `refuse_hand_backs` holds a row, the database refuses to hand a claimed row
    // back (as during an outage that begins while a delivery is in the handler).
    dbs.consumer
        .conn()
        .execute_unprepared(
            "CREATE TABLE refuse_hand_backs (x INT); INSERT INTO refuse_hand_backs VALUES (1); \
             CREATE SEQUENCE refusals; \
             CREATE FUNCTION refuse_hand_back() RETURNS trigger LANGUAGE plpgsql AS \
               'BEGIN IF OLD.locked_by IS NOT NULL AND NEW.locked_by IS NULL \
                  AND EXISTS (SELECT 1 FROM refuse_hand_backs) \
                THEN PERFORM nextval(''refusals''); RAISE EXCEPTION ''hand-backs refused''; \
                END IF; RETURN NEW; END'; \
             CREATE TRIGGER refuse_hand_back BEFORE UPDATE ON bus_queue FOR EACH ROW \
               EXECUTE FUNCTION refuse_hand_back();",
        )
        .await
        .expect("trigger");
    let lease = std::time::Duration::from_secs(30);
    let mut bus_settings = settings();
    bus_settings.lease_ms = lease.as_millis() as u64;
    let mut bus = messaging::local_bus::LocalBus::new("a", bus_settings);
    bus.add_consumer(dbs.consumer.clone());
    let faults = Faults::for_tests();
    let sent = events(1, 2);
    faults.fail_key_times(sent[0].key.clone(), 1);
    let outbox = Outbox::new(PRODUCER);
    let running = start_on(Arc::new(bus), &dbs, "a", faults, true).await;
    commit(&dbs, &outbox, &sent).await;
    // The first delivery failed and its hand-back was refused (a sequence counts refusals:
    // it is not rolled back with the refused statement).
    let deadline = tokio::time::Instant::now() + WAIT;
    while scalar(
        &dbs.consumer,
        "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM refusals",
    )
    .await
        == 0
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the failed delivery was never handed back"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(
        applied(&dbs).await,
        0,
        "the failed event or its successor was applied"
    );
    dbs.consumer
        .conn()
        .execute_unprepared("DELETE FROM refuse_hand_backs")
        .await
        .expect("heal");
    let healed = tokio::time::Instant::now();
    wait_applied(&dbs, sent.len() as i64).await;
    assert!(
        healed.elapsed() < lease / 3,
        "the refused retry came back only after {:?}, as its claim lapsed ({lease:?} lease)",
        healed.elapsed()
    );
    assert_exactly_once_in_order(&dbs, &sent).await;
    running.stop().await;
}

/// An event that kills its consumer every time it is handled is parked after
/// `max_attempts` deliveries, crashes included, and is never handled again; events of
/// other keys flow meanwhile.
async fn an_event_that_crashes_its_consumer_every_time_is_parked_after_max_attempts(
    transport: Transport,
    backend: Backend,
) {
    let dbs = open(backend).await;
    publish_one_event(transport, &dbs).await;
    for crash in 1..=settings().max_attempts {
        let faults = Faults::for_tests();
        let reached = faults.arm("consumer.before_commit");
        let running = start(transport, &dbs, "instance-a", faults, false).await;
        tokio::time::timeout(WAIT, reached)
            .await
            .unwrap_or_else(|_| panic!("crash {crash}: the event was not delivered again"))
            .expect("reported");
        running.kill().await;
    }
    the_next_delivery_is_parked_while_other_keys_flow(transport, &dbs).await;
}

/// Publishes the one event a crash test kills its consumer with, once, straight to the
/// bus: a relay killed between publishing and marking its row would publish a second
/// copy, and each copy counts its own attempts.
pub(crate) async fn publish_one_event(transport: Transport, dbs: &Dbs) {
    let event: Vec<Outgoing> = events(1, 1).iter().map(outgoing).collect();
    bus(transport, dbs, "publisher")
        .await
        .publish(&event)
        .await
        .expect("publish");
}

/// After `max_attempts` crashes on the event of [`publish_one_event`]: nothing of it was
/// applied; the next delivery (number `max_attempts + 1`) is parked before it is handled,
/// while events of other keys, committed meanwhile, are applied.
pub(crate) async fn the_next_delivery_is_parked_while_other_keys_flow(
    transport: Transport,
    dbs: &Dbs,
) {
    assert_eq!(
        applied(dbs).await,
        0,
        "a crashed consumer committed nothing"
    );
    let running = start(transport, dbs, "instance-a", Faults::default(), true).await;
    let others = events(3, 2);
    commit(dbs, &Outbox::new(PRODUCER), &others).await;
    wait_applied(dbs, others.len() as i64).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while dead_letters(dbs).await == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the event that crashed its consumer was not parked"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    running.stop().await;
    let attempts = scalar(
        &dbs.consumer,
        "SELECT CAST(attempts AS BIGINT) FROM dead_letters",
    )
    .await;
    assert_eq!(
        attempts,
        i64::from(settings().max_attempts) + 1,
        "parked on the delivery after the last crash"
    );
    assert_eq!(dead_letters(dbs).await, 1, "only that event is parked");
    assert_eq!(
        applied(dbs).await,
        others.len() as i64,
        "the event that crashed its consumer was never applied"
    );
}

mod an_event_that_crashes_its_consumer_every_time {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn local_sqlite() {
        an_event_that_crashes_its_consumer_every_time_is_parked_after_max_attempts(
            Transport::Local,
            Backend::Sqlite,
        )
        .await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn local_postgres() {
        an_event_that_crashes_its_consumer_every_time_is_parked_after_max_attempts(
            Transport::Local,
            Backend::Postgres,
        )
        .await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_postgres() {
        an_event_that_crashes_its_consumer_every_time_is_parked_after_max_attempts(
            Transport::Redis,
            Backend::Postgres,
        )
        .await
    }
}

/// The backlog the progress watchdog reads counts what waits for a subscription, and
/// falls to zero once everything is acknowledged.
async fn the_backlog_counts_what_waits_for_the_subscription(
    transport: Transport,
    backend: Backend,
) {
    use futures::StreamExt;
    let dbs = open(backend).await;
    let bus = bus(transport, &dbs, "a").await;
    let sent = events(4, 1);
    let batch: Vec<Outgoing> = sent.iter().map(outgoing).collect();
    bus.publish(&batch).await.expect("publish");
    let mut subscription = bus
        .subscribe(SubscriberSpec {
            module: CONSUMER,
            event_types: vec![OrderConfirmedV1::TYPE],
            max_in_flight: 10,
        })
        .await
        .expect("subscribe");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let backlog = subscription.acker.backlog().await.expect("backlog");
        if backlog == Some(4) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "backlog {backlog:?}, not 4"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let mut tags = Vec::new();
    while tags.len() < 4 {
        let delivery = tokio::time::timeout(WAIT, subscription.deliveries.next())
            .await
            .expect("a delivery in time")
            .expect("open");
        tags.push(delivery.tag);
    }
    subscription.acker.ack(&tags).await.expect("ack");
    assert_eq!(
        subscription.acker.backlog().await.expect("backlog"),
        Some(0)
    );
}

mod the_backlog_counts_what_waits {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn local_postgres() {
        the_backlog_counts_what_waits_for_the_subscription(Transport::Local, Backend::Postgres)
            .await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn local_sqlite() {
        the_backlog_counts_what_waits_for_the_subscription(Transport::Local, Backend::Sqlite).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_postgres() {
        the_backlog_counts_what_waits_for_the_subscription(Transport::Redis, Backend::Postgres)
            .await
    }
}

/// A local bus of `instance` over the consumer's database, with `settings`.
fn local_bus(dbs: &Dbs, instance: &str, settings: MessagingSettings) -> Arc<dyn EventBus> {
    let mut bus = LocalBus::new(instance, settings);
    bus.add_consumer(dbs.consumer.clone());
    Arc::new(bus)
}

/// The claims' lease of the take-back tests: a minute, twice [`WAIT`], so that only a
/// take-back delivers in time.
const LONG_CLAIMS_MS: u64 = 60_000;

/// A process named `instance-a` with the take-back tests' minute-long claims.
async fn start_instance_a(dbs: &Dbs, faults: Faults) -> Running {
    let mut long_claims = settings();
    long_claims.lease_ms = LONG_CLAIMS_MS;
    start_configured(
        local_bus(dbs, "instance-a", long_claims.clone()),
        dbs,
        "instance-a",
        faults,
        true,
        long_claims,
    )
    .await
}

/// `instance-a` holding claims on six events (three keys, two each), stopped inside the
/// handling of a delivery, before its commit; and the events.
async fn instance_a_inside_a_delivery(dbs: &Dbs) -> (Running, Vec<Envelope>) {
    let faults = Faults::for_tests();
    let reached = faults.arm("consumer.before_commit");
    let a = start_instance_a(dbs, faults).await;
    let sent = events(3, 2);
    commit(dbs, &Outbox::new(PRODUCER), &sent).await;
    tokio::time::timeout(WAIT, reached)
        .await
        .expect("a delivery reaches the commit")
        .expect("reported");
    (a, sent)
}

/// An instance killed while it held deliveries, restarted under the same name, takes its
/// claims back at once: everything is applied, once, long before the claims (a minute)
/// would have lapsed.
async fn a_restarted_instance_takes_back_its_claims_before_they_lapse(backend: Backend) {
    let dbs = open(backend).await;
    let (a, sent) = instance_a_inside_a_delivery(&dbs).await;
    a.kill().await;
    let held = scalar(
        &dbs.consumer,
        "SELECT COUNT(*) FROM bus_queue WHERE locked_by = 'instance-a'",
    )
    .await;
    assert!(held > 0, "the killed instance held claims");
    let started = std::time::Instant::now();
    let a = start_instance_a(&dbs, Faults::default()).await;
    // WAIT (30 s) is half the claims' lease: only a take-back delivers in time.
    assert_exactly_once_in_order(&dbs, &sent).await;
    assert!(started.elapsed() < Duration::from_millis(LONG_CLAIMS_MS));
    a.stop().await;
}

mod a_restarted_instance_takes_back_its_claims_before_they_lapse {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn local_sqlite() {
        super::a_restarted_instance_takes_back_its_claims_before_they_lapse(Backend::Sqlite).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn local_postgres() {
        super::a_restarted_instance_takes_back_its_claims_before_they_lapse(Backend::Postgres).await
    }
}

/// A process may start before its crashed predecessor's name is freed (the server or the
/// kernel has not seen the old one die yet). It claims nothing while the name is held, and
/// once the name is its own, it takes back the claims made under it, instead of waiting
/// for them to lapse. Here the predecessor still lives when the new process starts, and is
/// killed after.
async fn a_process_that_gets_its_name_after_it_started_takes_back_the_claims_made_under_it(
    backend: Backend,
) {
    let dbs = open(backend).await;
    let (old, sent) = instance_a_inside_a_delivery(&dbs).await;
    let started = std::time::Instant::now();
    let new = start_instance_a(&dbs, Faults::default()).await;
    old.kill().await;
    // WAIT (30 s) is half the claims' lease: only a take-back delivers in time.
    assert_exactly_once_in_order(&dbs, &sent).await;
    assert!(started.elapsed() < Duration::from_millis(LONG_CLAIMS_MS));
    new.stop().await;
}

/// PostgreSQL only: there the name is a session's lock, freed when the server notices the
/// session ended, which can be after the next process started. On SQLite it is a file
/// lock the kernel drops with the process; and two instances in one test process share
/// one SQLite pool, which the blocked predecessor's open transaction holds.
mod a_process_that_gets_its_name_after_it_started_takes_back_the_claims_made_under_it {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn local_postgres() {
        super::a_process_that_gets_its_name_after_it_started_takes_back_the_claims_made_under_it(
            Backend::Postgres,
        )
        .await
    }
}

/// A row whose transaction took its id first but committed after a later row was
/// published is published too: the relay reads the lowest unpublished ids, not after the
/// last id it saw. (PostgreSQL: SQLite runs one writer at a time, so it cannot happen.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_that_commits_after_a_later_row_was_published_is_published_too() {
    let dbs = open(Backend::Postgres).await;
    let running = start(
        Transport::Local,
        &dbs,
        "instance-a",
        Faults::default(),
        true,
    )
    .await;
    let outbox = Outbox::new(PRODUCER);
    let late = event(Uuid::now_v7(), 1);
    let slow_tx = dbs.producer.begin().await.expect("begin");
    messaging::outbox::append(&slow_tx, std::slice::from_ref(&late))
        .await
        .expect("append");
    let early = event(Uuid::now_v7(), 1);
    commit(&dbs, &outbox, std::slice::from_ref(&early)).await;
    wait_applied(&dbs, 1).await;
    slow_tx.commit().await.expect("commit late");
    outbox.wake();
    let ids = query(
        dbs.producer.conn(),
        "SELECT event_id FROM outbox ORDER BY id",
        vec![],
    )
    .await
    .expect("outbox");
    let first: Uuid = ids[0].try_get("", "event_id").expect("id");
    assert_eq!(first, late.id, "the late row holds the lower id");
    assert_exactly_once_in_order(&dbs, &[late, early]).await;
    running.stop().await;
}

/// A second live process under the same instance name claims nothing and takes back
/// nothing (its claims would be the first process's), says so in readiness, and takes
/// over by itself once the first one is gone.
async fn a_second_process_under_the_same_instance_name_takes_no_work_until_the_first_is_gone(
    backend: Backend,
) {
    let dbs = open(backend).await;
    let outbox = Outbox::new(PRODUCER);
    let first_bus = bus(Transport::Local, &dbs, "a").await;
    let first = start_on(first_bus.clone(), &dbs, "a", Faults::for_tests(), true).await;
    let seen: Seen = Arc::default();
    let second_bus: Arc<dyn EventBus> = Arc::new(Spy {
        inner: bus(Transport::Local, &dbs, "a").await,
        instance: "second".into(),
        seen: seen.clone(),
        published: Default::default(),
        retries: Default::default(),
    });
    let second = start_on(second_bus.clone(), &dbs, "a", Faults::for_tests(), true).await;
    first_bus.check().await.expect("the first process is ready");
    let refused = second_bus
        .check()
        .await
        .expect_err("the second process under the same name is not ready");
    assert!(
        refused.to_string().contains("another live process"),
        "{refused}"
    );
    let sent = events(20, 5);
    commit(&dbs, &outbox, &sent).await;
    wait_applied(&dbs, sent.len() as i64).await;
    assert!(
        lock_seen(&seen).is_empty(),
        "the second process under the same name was handed deliveries"
    );
    first.kill().await;
    let more = events(5, 2);
    commit(&dbs, &outbox, &more).await;
    wait_applied(&dbs, (sent.len() + more.len()) as i64).await;
    assert!(
        !lock_seen(&seen).is_empty(),
        "the second process did not take over"
    );
    second_bus
        .check()
        .await
        .expect("ready once the name is its own");
    let all: Vec<_> = sent.iter().chain(&more).cloned().collect();
    assert_exactly_once_in_order(&dbs, &all).await;
    second.stop().await;
}

fn lock_seen(seen: &Seen) -> Vec<(String, messaging::DeliveryTag, u32, std::time::Instant)> {
    seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

mod a_second_process_under_the_same_instance_name {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        a_second_process_under_the_same_instance_name_takes_no_work_until_the_first_is_gone(
            Backend::Sqlite,
        )
        .await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        a_second_process_under_the_same_instance_name_takes_no_work_until_the_first_is_gone(
            Backend::Postgres,
        )
        .await
    }
}

/// The consumer's subscription on `bus`, with room for more deliveries than its reader
/// reserves for a claim (twice the consumer batch), so a handover always finds capacity
/// free: with less, an event published while the reader claims goes through the queue.
async fn subscribe(bus: &Arc<dyn EventBus>) -> messaging::Subscription {
    bus.subscribe(SubscriberSpec {
        module: CONSUMER,
        event_types: vec![OrderConfirmedV1::TYPE],
        max_in_flight: settings().consumer_batch * 2 + 10,
    })
    .await
    .expect("subscribe")
}

/// Publishes `sent` on `bus` in a task of its own: the test goes on while publish waits.
fn publishing(
    bus: &Arc<dyn EventBus>,
    sent: &[Envelope],
) -> tokio::task::JoinHandle<Result<(), messaging::BusError>> {
    let publisher = bus.clone();
    let batch: Vec<Outgoing> = sent.iter().map(outgoing).collect();
    tokio::spawn(async move { publisher.publish(&batch).await })
}

/// With this process's subscription open, an event nothing comes before is handed to it
/// directly: `publish` returns only once the consumer settled it, no queue row is written
/// for it, and the watchdog's backlog counts it while it is out. A retry is what the queue
/// is for: the event comes back through it, its first delivery counted.
async fn an_event_handed_over_directly_is_settled_before_publish_returns_and_never_queued(
    backend: Backend,
) {
    use futures::StreamExt;
    let dbs = open(backend).await;
    // A wait for the consumer far longer than this test's steps take.
    let patient = MessagingSettings {
        lease_ms: 20_000,
        handover_wait_ms: 5_000,
        ..settings()
    };
    let bus = bus_configured(Transport::Local, &dbs, "a", patient).await;
    assert!(bus.hands_over_directly());
    let mut subscription = subscribe(&bus).await;
    let mut publish = publishing(&bus, &events(2, 1));
    let mut got = Vec::new();
    for n in 1..=2 {
        let d = tokio::time::timeout(WAIT, subscription.deliveries.next())
            .await
            .unwrap_or_else(|_| panic!("handover {n}"))
            .expect("the subscription is open");
        assert_eq!(d.attempt, 1);
        got.push(d);
    }
    assert_eq!(
        scalar(&dbs.consumer, "SELECT COUNT(*) FROM bus_queue").await,
        0,
        "handed over directly, not queued"
    );
    assert_eq!(
        subscription.acker.backlog().await.expect("backlog"),
        Some(2)
    );
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(300), &mut publish)
            .await
            .is_err(),
        "publish returned before the consumer settled what it was handed"
    );
    subscription
        .acker
        .ack(&[got[0].tag.clone()])
        .await
        .expect("ack");
    subscription
        .acker
        .retry(&got[1].tag, std::time::Duration::ZERO, "try again")
        .await
        .expect("retry");
    tokio::time::timeout(WAIT, publish)
        .await
        .expect("publish returns once both are settled")
        .expect("the publisher ran")
        .expect("publish");
    let again = tokio::time::timeout(WAIT, subscription.deliveries.next())
        .await
        .expect("the retry comes back")
        .expect("the subscription is open");
    assert_eq!(again.raw, got[1].raw, "the retried event came back");
    assert_eq!(again.attempt, 2, "its first delivery was counted");
    // The next event of that key waits in the queue behind it, not handed over: publish
    // returns with nothing settled, and the event comes once the earlier one is done.
    let retried = Envelope::from_bytes(&again.raw).expect("an envelope");
    let next = event(Uuid::parse_str(&retried.key).expect("a uuid key"), 2);
    tokio::time::timeout(WAIT, bus.publish(&[outgoing(&next)]))
        .await
        .expect("a queued event is published without waiting for the consumer")
        .expect("publish");
    assert!(
        tokio::time::timeout(
            std::time::Duration::from_millis(300),
            subscription.deliveries.next()
        )
        .await
        .is_err(),
        "an event was handed out while an earlier event of its key was in flight"
    );
    subscription
        .acker
        .ack(std::slice::from_ref(&again.tag))
        .await
        .expect("ack");
    let last = tokio::time::timeout(WAIT, subscription.deliveries.next())
        .await
        .expect("the next event of the key comes once the earlier one is settled")
        .expect("the subscription is open");
    assert_eq!(
        Envelope::from_bytes(&last.raw).expect("an envelope").id,
        next.id
    );
    subscription
        .acker
        .ack(std::slice::from_ref(&last.tag))
        .await
        .expect("ack");
    assert_eq!(
        scalar(&dbs.consumer, "SELECT COUNT(*) FROM bus_queue").await,
        0
    );
    assert_eq!(
        subscription.acker.backlog().await.expect("backlog"),
        Some(0)
    );
}

/// A handover the consumer is still working on after `handover_wait_ms` is written to
/// the queue as a row claimed by this instance, counted as delivered, so that the relay
/// goes on while the claim (renewed like any other) keeps it from everyone else; settling
/// the delivery settles that row.
async fn a_handover_unsettled_after_the_handover_wait_becomes_a_claimed_row(backend: Backend) {
    use futures::StreamExt;
    let dbs = open(backend).await;
    let bus = bus(Transport::Local, &dbs, "a").await;
    let mut subscription = subscribe(&bus).await;
    let started = std::time::Instant::now();
    let publish = publishing(&bus, &events(1, 1));
    let held = tokio::time::timeout(WAIT, subscription.deliveries.next())
        .await
        .expect("handed over")
        .expect("the subscription is open");
    tokio::time::timeout(WAIT, publish)
        .await
        .expect("publish returns while the consumer still works")
        .expect("the publisher ran")
        .expect("publish");
    let wait = settings().handover_wait();
    assert!(started.elapsed() >= wait, "publish waited handover_wait_ms");
    let rows = query(
        dbs.consumer.conn(),
        "SELECT locked_by, deliveries FROM bus_queue",
        vec![],
    )
    .await
    .expect("read the queue");
    assert_eq!(rows.len(), 1, "the unsettled handover is queued");
    let locked_by: Option<String> = rows[0].try_get("", "locked_by").expect("locked_by");
    let deliveries: i32 = rows[0].try_get("", "deliveries").expect("deliveries");
    assert_eq!(locked_by.as_deref(), Some("a"), "claimed by this instance");
    assert_eq!(deliveries, 1, "counted as delivered");
    subscription
        .acker
        .ack(std::slice::from_ref(&held.tag))
        .await
        .expect("ack");
    assert_eq!(
        scalar(&dbs.consumer, "SELECT COUNT(*) FROM bus_queue").await,
        0,
        "settling the delivery settled its row"
    );
    assert!(
        tokio::time::timeout(
            std::time::Duration::from_millis(300),
            subscription.deliveries.next()
        )
        .await
        .is_err(),
        "the event was handed out again"
    );
}

/// A queued event waiting for capacity that a delivery handed over directly holds goes
/// out as soon as that delivery is settled, not at the reader's next poll: a settled
/// handover wakes the reader when the reader waits for capacity (and only then, so a
/// reader with nothing queued is not sent to read an empty queue after every batch).
async fn a_queued_event_waiting_for_capacity_goes_out_once_a_handover_is_settled(backend: Backend) {
    use futures::StreamExt;
    let dbs = open(backend).await;
    // A poll (and a lease renewal) far longer than the test: only a wake-up brings the
    // queued event out in time.
    let slow_poll = MessagingSettings {
        poll_interval_ms: 120_000,
        lease_ms: 360_000,
        handover_wait_ms: 60_000,
        ..settings()
    };
    let bus = bus_configured(Transport::Local, &dbs, "a", slow_poll).await;
    let mut subscription = bus
        .subscribe(SubscriberSpec {
            module: CONSUMER,
            event_types: vec![OrderConfirmedV1::TYPE],
            max_in_flight: 1,
        })
        .await
        .expect("subscribe");
    // The reader's first claim (of an empty queue) is over once a handover finds the
    // capacity free.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let publish = publishing(&bus, &events(1, 1));
    let handed = tokio::time::timeout(WAIT, subscription.deliveries.next())
        .await
        .expect("handed over")
        .expect("the subscription is open");
    // Two events of one key go through the queue, and wait: the one place is taken.
    let queued = events(1, 2);
    let batch: Vec<Outgoing> = queued.iter().map(outgoing).collect();
    tokio::time::timeout(WAIT, bus.publish(&batch))
        .await
        .expect("queued without waiting for the consumer")
        .expect("publish");
    assert!(
        tokio::time::timeout(
            std::time::Duration::from_millis(500),
            subscription.deliveries.next()
        )
        .await
        .is_err(),
        "a queued event was handed out beyond the subscription's capacity"
    );
    subscription
        .acker
        .ack(std::slice::from_ref(&handed.tag))
        .await
        .expect("ack");
    tokio::time::timeout(WAIT, publish)
        .await
        .expect("publish returns once the handover is settled")
        .expect("the publisher ran")
        .expect("publish");
    let first = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        subscription.deliveries.next(),
    )
    .await
    .expect("the queued event goes out once the handover gave its place back, not at the next poll")
    .expect("the subscription is open");
    assert_eq!(
        Envelope::from_bytes(&first.raw).expect("an envelope").id,
        queued[0].id
    );
    subscription
        .acker
        .ack(std::slice::from_ref(&first.tag))
        .await
        .expect("ack");
    let second = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        subscription.deliveries.next(),
    )
    .await
    .expect("the next of its key goes out once the first is settled")
    .expect("the subscription is open");
    assert_eq!(
        Envelope::from_bytes(&second.raw).expect("an envelope").id,
        queued[1].id
    );
    subscription
        .acker
        .ack(std::slice::from_ref(&second.tag))
        .await
        .expect("ack");
}

on_both_backends!(
    an_event_handed_over_directly_is_settled_before_publish_returns_and_never_queued,
    a_handover_unsettled_after_the_handover_wait_becomes_a_claimed_row,
    a_queued_event_waiting_for_capacity_goes_out_once_a_handover_is_settled,
);
