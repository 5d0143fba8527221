//! The hybrid bus (some modules here, others elsewhere): events between modules of this
//! process never touch Redis, events to or from a module elsewhere travel over it, a module
//! that consumes both kinds gets both through one subscription, and a consumer group left
//! from when an in-process route travelled over Redis is removed once drained and keeps the
//! process from starting while it is not.

use std::collections::BTreeSet;

use contracts::catalog::StockReservedV1;
use contracts::checkout::{OrderCancelledV1, OrderPlacedV1};
use contracts::fulfillment::ShipmentDispatchedV1;
use messaging::hybrid_bus::HybridBus;
use messaging::{Delivery, Subscription};

use super::redis_only::{redis_bus, stream_length};
use super::*;

/// The monolith's modules: catalog and checkout, each with its own database (the test's
/// two databases under those names); fulfillment runs elsewhere.
fn monolith_dbs(dbs: &Dbs) -> Vec<ModuleDb> {
    vec![
        ModuleDb::new("catalog", dbs.producer.conn().clone()),
        ModuleDb::new("checkout", dbs.consumer.conn().clone()),
    ]
}

fn config(dbs: &Dbs) -> RedisConfig {
    RedisConfig {
        url: REDIS.into(),
        username: None,
        password: None,
        namespace: dbs.namespace.clone(),
        partitions: 4,
        instance: "monolith".into(),
    }
}

async fn monolith(dbs: &Dbs) -> anyhow::Result<HybridBus> {
    HybridBus::connect(config(dbs), settings(), &monolith_dbs(dbs)).await
}

fn event(event_type: &str, key: Uuid) -> Outgoing {
    Outgoing {
        event_id: Uuid::now_v7(),
        event_type: event_type.into(),
        source: contracts::source_of(event_type).into(),
        key: key.to_string(),
        // What the test reads back: the bus carries the envelope untouched.
        envelope: Arc::from(event_type),
        handed_before: false,
    }
}

async fn subscribe(bus: &dyn EventBus, module: &'static str) -> Subscription {
    bus.subscribe(SubscriberSpec {
        module,
        event_types: contracts::subscriptions_of(module),
        max_in_flight: 100,
    })
    .await
    .expect("subscribe")
}

/// The next delivery, acknowledged: its envelope, and whether it came over Redis.
async fn take(subscription: &mut Subscription) -> (String, bool) {
    let delivery: Delivery = tokio::time::timeout(WAIT, subscription.deliveries.next())
        .await
        .expect("a delivery in time")
        .expect("the subscription is open");
    subscription
        .acker
        .ack(std::slice::from_ref(&delivery.tag))
        .await
        .expect("ack");
    (
        String::from_utf8(delivery.raw.to_vec()).expect("utf-8"),
        RedisBus::stream_entry(&delivery.tag).is_some(),
    )
}

async fn redis() -> ::redis::aio::MultiplexedConnection {
    ::redis::Client::open(REDIS)
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect")
}

/// What `consumer`'s group holds of `producer`'s events, per stream that holds any: how
/// many delivered and not acknowledged, how many not read.
async fn pending_and_unread(bus: &RedisBus, producer: &str, consumer: &str) -> Vec<(u64, u64)> {
    bus.waiting_between(producer, consumer)
        .await
        .expect("waiting")
        .iter()
        .map(|w| (w.pending, w.unread))
        .collect()
}

/// How many entries were ever added to `producer`'s streams (trimming removes the ones
/// every group acknowledged), and the groups on them.
async fn streams_of(dbs: &Dbs, producer: &str) -> (i64, BTreeSet<String>) {
    let mut conn = redis().await;
    let (mut entries, mut groups) = (0, BTreeSet::new());
    for partition in 0..4 {
        let stream = format!("{}:stream:{producer}:{partition}", dbs.namespace);
        let exists: bool = ::redis::cmd("EXISTS")
            .arg(&stream)
            .query_async(&mut conn)
            .await
            .expect("EXISTS");
        if !exists {
            continue;
        }
        let info: std::collections::HashMap<String, ::redis::Value> = ::redis::cmd("XINFO")
            .arg("STREAM")
            .arg(&stream)
            .query_async(&mut conn)
            .await
            .expect("XINFO STREAM");
        entries += info
            .get("entries-added")
            .and_then(|v| ::redis::from_redis_value::<i64>(v.clone()).ok())
            .expect("entries-added");
        let info: Vec<std::collections::HashMap<String, ::redis::Value>> = ::redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(&stream)
            .query_async(&mut conn)
            .await
            .expect("XINFO GROUPS");
        for group in info {
            if let Some(name) = group
                .get("name")
                .and_then(|v| ::redis::from_redis_value::<String>(v.clone()).ok())
            {
                groups.insert(name);
            }
        }
    }
    (entries, groups)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_between_modules_here_stay_in_process_and_the_rest_travel_over_redis() {
    let dbs = open(Backend::Postgres).await;
    let monolith = Arc::new(monolith(&dbs).await.expect("the hybrid bus starts"));
    let service = redis_bus(&dbs, REDIS, "fulfillment-service").await;
    assert_eq!(monolith.kind(), "hybrid");
    let mut catalog = subscribe(&*monolith, "catalog").await;
    let mut checkout = subscribe(&*monolith, "checkout").await;
    let mut fulfillment = subscribe(&service, "fulfillment").await;

    let key = Uuid::now_v7();
    // Direct handover: publishing returns once the consumers here settled, so it runs
    // beside the consumers.
    let publishing = {
        let monolith = monolith.clone();
        tokio::spawn(async move {
            monolith
                .publish(&[
                    event(StockReservedV1::TYPE, key),
                    event(OrderCancelledV1::TYPE, key),
                ])
                .await
        })
    };
    service
        .publish(&[event(ShipmentDispatchedV1::TYPE, key)])
        .await
        .expect("the service publishes");

    let mut got = vec![take(&mut checkout).await, take(&mut checkout).await];
    got.sort();
    assert_eq!(
        got,
        vec![
            (StockReservedV1::TYPE.to_owned(), false),
            (ShipmentDispatchedV1::TYPE.to_owned(), true),
        ],
        "checkout gets catalog's event in-process and fulfillment's over Redis, through one subscription"
    );
    assert_eq!(
        take(&mut catalog).await,
        (OrderCancelledV1::TYPE.to_owned(), false),
        "catalog gets checkout's event in-process"
    );
    assert_eq!(
        take(&mut fulfillment).await,
        (OrderCancelledV1::TYPE.to_owned(), true),
        "fulfillment gets the same event over Redis"
    );
    publishing
        .await
        .expect("publish task")
        .expect("the monolith publishes");

    let (catalog_entries, _) = streams_of(&dbs, "catalog").await;
    assert_eq!(
        catalog_entries, 0,
        "nothing of catalog's goes to Redis: its consumers run here"
    );
    let (checkout_entries, checkout_groups) = streams_of(&dbs, "checkout").await;
    assert_eq!(
        checkout_entries, 1,
        "only the event fulfillment consumes goes to Redis"
    );
    assert_eq!(
        checkout_groups,
        BTreeSet::from(["fulfillment".to_owned()]),
        "no group for catalog, which reads checkout in-process: it would hold trimming back"
    );
    for subscription in [&checkout.acker, &fulfillment.acker] {
        let backlog = subscription.backlog().await.expect("backlog");
        assert_eq!(backlog, Some(0), "everything acknowledged");
    }

    // A group for catalog on checkout's streams made after the start (a process of an
    // earlier version reading checkout over Redis) does not hold trimming back: nobody
    // reads it in this topology.
    let mut conn = redis().await;
    for partition in 0..4 {
        let _: () = ::redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(format!("{}:stream:checkout:{partition}", dbs.namespace))
            .arg("catalog")
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut conn)
            .await
            .expect("XGROUP CREATE");
    }
    let publishing = {
        let monolith = monolith.clone();
        tokio::spawn(async move {
            monolith
                .publish(&[event(OrderCancelledV1::TYPE, Uuid::now_v7())])
                .await
        })
    };
    assert_eq!(take(&mut catalog).await.0, OrderCancelledV1::TYPE);
    assert_eq!(take(&mut fulfillment).await.0, OrderCancelledV1::TYPE);
    publishing.await.expect("task").expect("publish");
    monolith.trim_now("checkout").await.expect("trim");
    assert_eq!(
        stream_length(&dbs).await, // checkout's streams: the suite's PRODUCER
        0,
        "every entry fulfillment acknowledged is trimmed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_left_by_a_route_now_in_process_keeps_the_bus_from_starting_until_it_is_drained_then_goes()
 {
    let dbs = open(Backend::Postgres).await;
    // Before: the monolith ran every module on the Redis bus; one order placed for
    // catalog is still in Redis when it stops.
    let before = redis_bus(&dbs, REDIS, "monolith").await;
    before
        .publish(&[event(OrderPlacedV1::TYPE, Uuid::now_v7())])
        .await
        .expect("publish");

    let refused = monolith(&dbs)
        .await
        .err()
        .expect("refused while an event waits");
    let message = format!("{refused:#}");
    assert!(
        message.contains("catalog on") && message.contains("1 not read"),
        "says which group holds what: {message}"
    );
    assert!(
        message.contains("bus.kind = \"redis\""),
        "says what to do: {message}"
    );
    // What moving a module back in checks (the same counts, asked of any route).
    assert_eq!(
        pending_and_unread(&before, "checkout", "catalog").await,
        vec![(0, 1)]
    );
    assert_eq!(
        before
            .waiting_between("checkout", "fulfillment")
            .await
            .expect("waiting"),
        vec![],
        "fulfillment takes no order placed"
    );

    // Catalog, back on the Redis bus, is handed it and stops before acknowledging it.
    {
        let mut catalog = subscribe(&before, "catalog").await;
        let delivery = tokio::time::timeout(WAIT, catalog.deliveries.next())
            .await
            .expect("a delivery in time")
            .expect("open");
        assert_eq!(&*delivery.raw, OrderPlacedV1::TYPE.as_bytes());
        let Subscription {
            reader, deliveries, ..
        } = catalog;
        drop(deliveries);
        if let Some(reader) = reader {
            let _ = reader.await;
        }
    }
    let refused = monolith(&dbs)
        .await
        .err()
        .expect("refused while it is pending");
    let message = format!("{refused:#}");
    assert!(
        message.contains("1 delivered and not acknowledged, 0 not read"),
        "{message}"
    );
    assert_eq!(
        pending_and_unread(&before, "checkout", "catalog").await,
        vec![(1, 0)]
    );

    // It handles it; then an event catalog does not take arrives for fulfillment, unread
    // by catalog's group, which does not count.
    {
        let mut catalog = subscribe(&before, "catalog").await;
        assert_eq!(take(&mut catalog).await.0, OrderPlacedV1::TYPE);
    }
    before
        .publish(&[event(
            contracts::checkout::OrderConfirmedV1::TYPE,
            Uuid::now_v7(),
        )])
        .await
        .expect("publish");
    let (_, groups) = streams_of(&dbs, "checkout").await;
    assert!(
        groups.contains("catalog"),
        "the group is there before: {groups:?}"
    );
    assert_eq!(
        before
            .waiting_between("checkout", "catalog")
            .await
            .expect("waiting"),
        vec![],
        "handled, and the unread event is not catalog's"
    );

    let _monolith = monolith(&dbs)
        .await
        .expect("starts once the group is drained");
    let (entries, groups) = streams_of(&dbs, "checkout").await;
    assert_eq!(
        groups,
        BTreeSet::from(["fulfillment".to_owned()]),
        "catalog's drained group is gone, fulfillment's stays"
    );
    assert_eq!(entries, 2, "nothing fulfillment still needs was touched");
}

/// A module consuming both ways holds a delivery of each bus at least, so the hybrid bus
/// refuses a `max_in_flight` it could not keep.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_max_in_flight_of_one_is_refused() {
    let dbs = open(Backend::Sqlite).await;
    let refused = HybridBus::connect(
        config(&dbs),
        MessagingSettings {
            max_in_flight: 1,
            ..settings()
        },
        &monolith_dbs(&dbs),
    )
    .await
    .err()
    .expect("refused");
    assert!(
        format!("{refused:#}").contains("messaging.max_in_flight of at least 2"),
        "{refused:#}"
    );
}
