//! What every bus implementation must do.

use super::*;

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

/// Copies published together, before any was handled, are applied once: each event's
/// effects are counted (the recorder is not idempotent) once nothing waits any more.
async fn copies_published_before_any_was_handled_are_applied_once(
    transport: Transport,
    backend: Backend,
) {
    let dbs = open(backend).await;
    let running = start(transport, &dbs, "instance-a", Faults::default(), false).await;
    let publisher = bus(transport, &dbs, "publisher").await;
    let sent = events(5, 10);
    let batch: Vec<Outgoing> = sent.iter().map(outgoing).collect();
    for _ in 0..3 {
        publisher.publish(&batch).await.expect("publish");
    }
    assert_exactly_once_in_order(&dbs, &sent).await;
    running.stop().await;
}

/// A copy that arrives after its original was committed and acknowledged, in a batch of
/// its own, is stopped by the committed inbox key alone: the recorder is not idempotent,
/// and the copies are seen delivered.
async fn a_copy_delivered_after_the_first_was_committed_is_skipped_by_the_inbox(
    transport: Transport,
    backend: Backend,
) {
    let dbs = open(backend).await;
    let seen: Seen = Default::default();
    let spy = Arc::new(Spy {
        inner: bus(transport, &dbs, "instance-a").await,
        instance: "instance-a".into(),
        seen: seen.clone(),
        published: Default::default(),
        retries: Default::default(),
    });
    let running = start_on(spy, &dbs, "instance-a", Faults::default(), false).await;
    let publisher = bus(transport, &dbs, "publisher").await;
    let sent = events(5, 2);
    let batch: Vec<Outgoing> = sent.iter().map(outgoing).collect();
    publisher.publish(&batch).await.expect("publish");
    assert_exactly_once_in_order(&dbs, &sent).await;
    publisher.publish(&batch).await.expect("publish the copies");
    let settled = drained(&dbs).await;
    let deliveries = seen.lock().unwrap_or_else(|e| e.into_inner()).len();
    assert_eq!(
        deliveries,
        2 * sent.len(),
        "every copy was delivered after its original"
    );
    assert_eq!(settled.applied, sent.len() as i64, "no copy was applied");
    assert_eq!(settled.inbox_keys, sent.len() as i64);
    running.stop().await;
}

/// Two relays run; the one holding the lease publishes every event, once, and the other
/// publishes nothing while the lease is renewed.
async fn only_the_relay_holding_the_lease_publishes(transport: Transport, backend: Backend) {
    let dbs = open(backend).await;
    let published: Published = Default::default();
    let mut relaxed = settings();
    // Long enough that no renewal comes late on a loaded machine: the lease never
    // changes hands in this test.
    relaxed.lease_ms = 20_000;
    let mut running = Vec::new();
    for instance in ["instance-a", "instance-b"] {
        let spy = Arc::new(Spy {
            inner: bus(transport, &dbs, instance).await,
            instance: instance.into(),
            seen: Default::default(),
            published: published.clone(),
            retries: Default::default(),
        });
        running.push(
            start_configured(
                spy,
                &dbs,
                instance,
                Faults::default(),
                true,
                relaxed.clone(),
            )
            .await,
        );
    }
    let outbox = Outbox::new(PRODUCER);
    let mut sent = Vec::new();
    // Commits spread over several polls of both relays.
    for _ in 0..10 {
        let chunk = events(3, 1);
        commit(&dbs, &outbox, &chunk).await;
        sent.extend(chunk);
        tokio::time::sleep(Duration::from_millis(relaxed.poll_interval_ms * 2)).await;
    }
    assert_exactly_once_in_order(&dbs, &sent).await;
    let published = published.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let relays: std::collections::BTreeSet<&str> =
        published.iter().map(|(i, _)| i.as_str()).collect();
    assert_eq!(relays.len(), 1, "one relay published: {relays:?}");
    let ids: std::collections::HashSet<Uuid> = published.iter().map(|(_, id)| *id).collect();
    assert_eq!(ids.len(), published.len(), "no event published twice");
    assert_eq!(ids.len(), sent.len(), "every event published");
    for r in running {
        r.stop().await;
    }
}

/// An event that fails four times is retried after a jittered delay under a ceiling that
/// doubles (base 200 ms: 200, 400, 800, 1600), and the bus holds it back that long. The
/// four delays asked for add up to more than 40 ms (all four under it has a chance of
/// about 1 in a million; with 150 ms it was 2 in 10,000, and a CI run met it), and each
/// wait between deliveries lasts at least its delay.
async fn retries_wait_a_backoff_that_grows_with_each_attempt(
    transport: Transport,
    backend: Backend,
) {
    let dbs = open(backend).await;
    let mut slow_retries = settings();
    slow_retries.max_attempts = 6;
    slow_retries.retry_base_ms = 200;
    slow_retries.retry_max_ms = 60_000;
    let faults = Faults::for_tests();
    let key = Uuid::now_v7();
    faults.fail_key_times(key.to_string(), 4);
    let seen: Seen = Default::default();
    let retries: Retries = Default::default();
    let spy = Arc::new(Spy {
        inner: bus(transport, &dbs, "instance-a").await,
        instance: "instance-a".into(),
        seen: seen.clone(),
        published: Default::default(),
        retries: retries.clone(),
    });
    let running =
        start_configured(spy, &dbs, "instance-a", faults, true, slow_retries.clone()).await;
    let sent = vec![event(key, 1)];
    commit(&dbs, &Outbox::new(PRODUCER), &sent).await;
    assert_exactly_once_in_order(&dbs, &sent).await;
    let seen = seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let attempts: Vec<u32> = seen.iter().map(|(_, _, a, _)| *a).collect();
    assert_eq!(attempts, [1, 2, 3, 4, 5], "four failures, then the success");
    let delays = retries.lock().unwrap_or_else(|e| e.into_inner()).clone();
    assert_eq!(delays.len(), 4, "a retry after each failure");
    for (n, delay) in delays.iter().enumerate() {
        let ceiling = Duration::from_millis(slow_retries.retry_base_ms << n);
        assert!(
            *delay <= ceiling,
            "retry {} asked {delay:?}, over its ceiling {ceiling:?}",
            n + 1
        );
    }
    let total: Duration = delays.iter().sum();
    assert!(
        total >= Duration::from_millis(40),
        "retries asked for no backoff: {delays:?}"
    );
    let waits: Vec<Duration> = seen.windows(2).map(|w| w[1].3 - w[0].3).collect();
    for (wait, delay) in waits.iter().zip(&delays) {
        assert!(
            *wait + Duration::from_millis(20) >= *delay,
            "delivered again after {wait:?}, before its delay {delay:?}"
        );
    }
    assert_eq!(dead_letters(&dbs).await, 0);
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
    let settled = drained(&dbs).await;
    assert_eq!(
        settled.dead_letters, 1,
        "the parked event is settled: parked once, never delivered again"
    );
    assert_eq!(settled.applied, others.len() as i64 + 1);
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
    let publisher = bus(transport, &dbs, "publisher").await;
    let garbage = Outgoing {
        event_id: Uuid::now_v7(),
        event_type: OrderConfirmedV1::TYPE.into(),
        source: PRODUCER.into(),
        key: "k".into(),
        envelope: Arc::from("\u{1}not json"),
        handed_before: false,
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
/// over only once the dead one's claims lapsed (never sooner than a lease after they were
/// first claimed), each with its attempt number one higher, and applies each once.
async fn a_dead_instance_s_deliveries_are_taken_over(transport: Transport, backend: Backend) {
    let dbs = open(backend).await;
    let seen: Seen = Default::default();
    let spy = |instance: &'static str, inner: Arc<dyn EventBus>| {
        Arc::new(Spy {
            inner,
            instance: instance.into(),
            seen: seen.clone(),
            published: Default::default(),
            retries: Default::default(),
        })
    };
    let faults = Faults::for_tests();
    let reached = faults.arm("consumer.before_commit");
    let a = spy("instance-a", bus(transport, &dbs, "instance-a").await);
    let a = start_on(a, &dbs, "instance-a", faults, true).await;
    let sent = events(3, 4);
    // No claim of these events can be older than this.
    let committed = std::time::Instant::now();
    commit(&dbs, &Outbox::new(PRODUCER), &sent).await;
    tokio::time::timeout(WAIT, reached)
        .await
        .expect("a reaches the point")
        .expect("reported");
    a.kill().await;
    let b = spy("instance-b", bus(transport, &dbs, "instance-b").await);
    let b = start_on(b, &dbs, "instance-b", Faults::default(), true).await;
    assert_exactly_once_in_order(&dbs, &sent).await;
    b.stop().await;
    let seen = seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let held: Vec<_> = seen.iter().filter(|s| s.0 == "instance-a").collect();
    assert!(!held.is_empty(), "the dead instance held deliveries");
    let lease = Duration::from_millis(settings().lease_ms);
    for (_, tag, attempt, _) in held {
        let (_, _, again, when) = seen
            .iter()
            .find(|s| s.0 == "instance-b" && &s.1 == tag)
            .unwrap_or_else(|| panic!("{tag:?} was not taken over"));
        assert_eq!(
            *again,
            attempt + 1,
            "{tag:?}: the crash counted as an attempt"
        );
        assert!(
            *when >= committed + lease,
            "{tag:?} taken over {:?} after it was committed, before a {lease:?} lease could lapse",
            *when - committed
        );
    }
}

/// A subscription never hands out more than `max_in_flight` unsettled deliveries.
async fn in_flight_deliveries_are_bounded(transport: Transport, backend: Backend) {
    let dbs = open(backend).await;
    let bus = bus(transport, &dbs, "instance-a").await;
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
    // Three come, however slowly a loaded machine hands them out (the test once waited for
    // a 500 ms gap, and a busy reader's gap between the second and the third was longer).
    let mut got = Vec::new();
    for n in 1..=3 {
        let d = tokio::time::timeout(WAIT, subscription.deliveries.next())
            .await
            .unwrap_or_else(|_| panic!("delivery {n} of the three allowed in flight"))
            .expect("the subscription is open");
        got.push(d);
    }
    // A fourth is not handed out. (Only a window can show that something does not come:
    // on a slow machine it can miss a late fourth, but it cannot fail a correct bus.)
    let extra =
        tokio::time::timeout(Duration::from_millis(500), subscription.deliveries.next()).await;
    assert!(extra.is_err(), "three in flight at most");
    subscription
        .acker
        .ack(&[got[0].tag.clone()])
        .await
        .expect("ack");
    let next = tokio::time::timeout(WAIT, subscription.deliveries.next())
        .await
        .expect("one more after an ack");
    assert!(next.is_some());
    let extra =
        tokio::time::timeout(Duration::from_millis(300), subscription.deliveries.next()).await;
    assert!(extra.is_err(), "still three in flight");
}

/// A handler slower than the claim lease keeps its delivery while its reader renews the
/// claim (the lease measures liveness, not how long a handler takes): nobody else gets it,
/// and every delivery is a first one. The lease is 3 s here,
/// not the suite's 1 s, so that a reader starved on a loaded machine still renews in time
/// (liveness is what is tested, not how fast a lapse is noticed).
async fn a_handler_slower_than_the_lease_keeps_its_delivery_and_gets_it_once(
    transport: Transport,
    backend: Backend,
) {
    let dbs = open(backend).await;
    let faults = Faults::for_tests();
    let slow = Uuid::now_v7();
    let mut renewed = settings();
    renewed.lease_ms = 3_000;
    faults.slow_key(
        slow.to_string(),
        Duration::from_millis(renewed.lease_ms * 2),
    );
    let seen: Seen = Default::default();
    let mut running = Vec::new();
    for instance in ["instance-a", "instance-b"] {
        let spy = Arc::new(Spy {
            inner: bus_configured(transport, &dbs, instance, renewed.clone()).await,
            instance: instance.into(),
            seen: seen.clone(),
            published: Default::default(),
            retries: Default::default(),
        });
        running.push(
            start_configured(
                spy,
                &dbs,
                instance,
                faults.clone(),
                instance == "instance-a",
                renewed.clone(),
            )
            .await,
        );
    }
    let mut sent = vec![event(slow, 1)];
    sent.extend(events(6, 2));
    commit(&dbs, &Outbox::new(PRODUCER), &sent).await;
    assert_exactly_once_in_order(&dbs, &sent).await;
    let seen = seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut tags = std::collections::HashSet::new();
    for (instance, tag, attempt, _) in &seen {
        assert_eq!(*attempt, 1, "{instance} got {tag:?} again: {seen:?}");
        assert!(
            tags.insert(tag.clone()),
            "{tag:?} was handed out twice: {seen:?}"
        );
    }
    for r in running {
        r.stop().await;
    }
}

/// The backend helper: SQLite statements get SQLite placeholders.
#[test]
fn statements_are_adapted_per_backend() {
    let s = store::stmt(DbBackend::Sqlite, "SELECT $1", vec![]);
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

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn queued_sqlite() {
                    super::$test(Transport::Queued, Backend::Sqlite).await
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn queued_postgres() {
                    super::$test(Transport::Queued, Backend::Postgres).await
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn redis_sqlite() {
                    super::$test(Transport::Redis, Backend::Sqlite).await
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn redis_postgres() {
                    super::$test(Transport::Redis, Backend::Postgres).await
                }
            }
        )+
    };
}

conformance!(
    events_of_one_key_are_handled_in_order_by_two_instances,
    copies_published_before_any_was_handled_are_applied_once,
    a_copy_delivered_after_the_first_was_committed_is_skipped_by_the_inbox,
    only_the_relay_holding_the_lease_publishes,
    retries_wait_a_backoff_that_grows_with_each_attempt,
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
    a_handler_slower_than_the_lease_keeps_its_delivery_and_gets_it_once,
);
