//! How a Redis Streams subscription behaves when things go wrong around it: a takeover
//! bigger than its capacity, a lease lost or not renewed in time, entries pending with
//! nothing to deliver them, a joining instance while the first one is busy, a connection
//! that stops answering, two processes under one instance name, and a real crash.
//!
//! Most tests drive a subscription by hand (receive, acknowledge) so they can see exactly
//! what it hands out; pending entries of a "dead" consumer are made with a raw
//! XREADGROUP, as a process that read them and died would leave them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::time::Instant;

use contracts::checkout::OrderPlacedV1;
use messaging::{Delivery, Subscription, partition_of};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::redis_only::{PrivateRedis, redis_bus, stream_length};
use super::*;

const PARTITIONS: u32 = 4;

fn lease() -> Duration {
    Duration::from_millis(settings().lease_ms)
}

async fn connect(url: &str) -> ::redis::aio::MultiplexedConnection {
    ::redis::Client::open(url)
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect")
}

fn streams(dbs: &Dbs) -> Vec<String> {
    (0..PARTITIONS)
        .map(|p| format!("{}:stream:{PRODUCER}:{p}", dbs.namespace))
        .collect()
}

/// The lease key of the partition `key` lands in.
fn lease_key(dbs: &Dbs, key: Uuid) -> String {
    format!(
        "{}:lease:{CONSUMER}:{}",
        dbs.namespace,
        partition_of(&key.to_string(), PARTITIONS)
    )
}

/// A key whose events go to `partition`.
fn key_in(partition: u32) -> Uuid {
    std::iter::repeat_with(Uuid::now_v7)
        .find(|key| partition_of(&key.to_string(), PARTITIONS) == partition)
        .expect("an endless supply of keys")
}

async fn publish(bus: &RedisBus, sent: &[Envelope]) {
    bus.publish(&sent.iter().map(outgoing).collect::<Vec<_>>())
        .await
        .expect("publish");
}

async fn subscribe(bus: &RedisBus, max_in_flight: usize) -> Subscription {
    bus.subscribe(SubscriberSpec {
        module: CONSUMER,
        event_types: vec![OrderConfirmedV1::TYPE],
        max_in_flight,
    })
    .await
    .expect("subscribe")
}

/// Reads every new entry of the consumer group as `consumer` and never acknowledges them:
/// what a process that died after reading leaves behind (or a reply that never arrived).
async fn read_as(dbs: &Dbs, url: &str, consumer: &str) -> usize {
    let mut conn = connect(url).await;
    let streams = streams(dbs);
    let reply: Option<::redis::streams::StreamReadReply> = ::redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(CONSUMER)
        .arg(consumer)
        .arg("COUNT")
        .arg(1000)
        .arg("STREAMS")
        .arg(&streams)
        .arg(vec![">"; streams.len()])
        .query_async(&mut conn)
        .await
        .expect("XREADGROUP");
    reply.map_or(0, |r| r.keys.iter().map(|k| k.ids.len()).sum())
}

/// Entries the consumer group has read and not acknowledged, over every partition.
async fn pending(dbs: &Dbs, url: &str) -> i64 {
    let mut conn = connect(url).await;
    let mut total = 0;
    for stream in streams(dbs) {
        let summary: Vec<::redis::Value> = ::redis::cmd("XPENDING")
            .arg(&stream)
            .arg(CONSUMER)
            .query_async(&mut conn)
            .await
            .expect("XPENDING");
        total += summary
            .first()
            .and_then(|v| ::redis::from_redis_value::<i64>(v.clone()).ok())
            .unwrap_or(0);
    }
    total
}

async fn wait_until_nothing_pending(dbs: &Dbs, url: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let n = pending(dbs, url).await;
        if n == 0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{n} entries still pending"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reads and acknowledges every entry for each group but the consumer's, as those modules
/// would.
async fn acknowledge_for_other_groups(dbs: &Dbs) {
    let mut conn = connect(REDIS).await;
    for stream in streams(dbs) {
        for group in contracts::subscribers_of(PRODUCER) {
            if group == CONSUMER {
                continue;
            }
            let reply: Option<::redis::streams::StreamReadReply> = ::redis::cmd("XREADGROUP")
                .arg("GROUP")
                .arg(group)
                .arg("other")
                .arg("COUNT")
                .arg(1000)
                .arg("STREAMS")
                .arg(&stream)
                .arg(">")
                .query_async(&mut conn)
                .await
                .expect("XREADGROUP");
            let ids: Vec<String> = reply
                .map(|r| {
                    r.keys
                        .into_iter()
                        .flat_map(|k| k.ids)
                        .map(|i| i.id)
                        .collect()
                })
                .unwrap_or_default();
            if !ids.is_empty() {
                let _: i64 = ::redis::cmd("XACK")
                    .arg(&stream)
                    .arg(group)
                    .arg(ids)
                    .query_async(&mut conn)
                    .await
                    .expect("XACK");
            }
        }
    }
}

async fn next(subscription: &mut Subscription, within: Duration) -> Option<Delivery> {
    tokio::time::timeout(within, subscription.deliveries.next())
        .await
        .ok()
        .flatten()
}

/// The ordering key and sequence number a delivery carries.
fn seq(delivery: &Delivery) -> (String, i64) {
    let envelope = Envelope::from_bytes(&delivery.raw).expect("an envelope");
    let payload: OrderConfirmedV1 = envelope.decode().expect("order_confirmed");
    (envelope.key, payload.total_minor)
}

async fn ack(subscription: &Subscription, delivery: &Delivery) {
    subscription
        .acker
        .ack(std::slice::from_ref(&delivery.tag))
        .await
        .expect("ack");
}

/// Receives and acknowledges deliveries one at a time until `n` distinct entries came,
/// checking each key's sequence only grows; returns them in the order received.
async fn drain_in_order(subscription: &mut Subscription, n: usize) -> Vec<Delivery> {
    let mut got: Vec<Delivery> = Vec::new();
    let mut last: HashMap<String, i64> = HashMap::new();
    while got.len() < n {
        let delivery = next(subscription, WAIT)
            .await
            .unwrap_or_else(|| panic!("only {} of {n} deliveries came", got.len()));
        let (key, seq) = seq(&delivery);
        let previous = last.insert(key.clone(), seq).unwrap_or(0);
        assert!(seq > previous, "key {key}: seq {seq} after {previous}");
        ack(subscription, &delivery).await;
        got.push(delivery);
    }
    got
}

/// Stops a subscription as a killed process would: its reader is aborted before it can
/// see the stream closed, so nothing is handed back.
async fn crash(mut subscription: Subscription) {
    if let Some(reader) = subscription.reader.take() {
        reader.abort();
        let _ = reader.await;
    }
    drop(subscription);
}

/// A takeover is bounded by the subscription's free capacity; the rest of the pending
/// list follows as room frees up, each entry with its delivery counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taking_over_a_partition_hands_out_no_more_pending_entries_than_max_in_flight() {
    let dbs = open(Backend::Sqlite).await;
    let publisher = redis_bus(&dbs, REDIS, "publisher").await;
    let sent = events(12, 1);
    publish(&publisher, &sent).await;
    assert_eq!(read_as(&dbs, REDIS, "dead").await, sent.len());
    let b = redis_bus(&dbs, REDIS, "instance-b").await;
    let mut subscription = subscribe(&b, 3).await;
    let mut got = Vec::new();
    while let Some(d) = next(&mut subscription, lease()).await {
        got.push(d);
        assert!(got.len() <= sent.len());
    }
    assert_eq!(got.len(), 3, "three in flight at most after a takeover");
    assert!(
        got.iter().all(|d| d.attempt == 2),
        "a taken-over entry counts its earlier delivery"
    );
    for d in &got {
        ack(&subscription, d).await;
    }
    let rest = drain_in_order(&mut subscription, sent.len() - got.len()).await;
    let mut tags: std::collections::HashSet<_> = got.iter().map(|d| d.tag.clone()).collect();
    tags.extend(rest.iter().map(|d| d.tag.clone()));
    assert_eq!(tags.len(), sent.len(), "every pending entry came, once");
    wait_until_nothing_pending(&dbs, REDIS).await;
}

/// Settling a delivery never waits for the consumer to take its next ones: the consumer
/// is the one that would take them, so such a wait would never end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_does_not_wait_for_the_consumer_to_take_its_deliveries() {
    let dbs = open(Backend::Sqlite).await;
    let publisher = redis_bus(&dbs, REDIS, "publisher").await;
    // Six keys with two entries each, all pending with a dead consumer.
    let sent = events(6, 2);
    publish(&publisher, &sent).await;
    assert_eq!(read_as(&dbs, REDIS, "dead").await, sent.len());
    let b = redis_bus(&dbs, REDIS, "instance-b").await;
    let mut subscription = subscribe(&b, 2).await;
    let first = next(&mut subscription, WAIT).await.expect("a delivery");
    // Give the reader time to hand out whatever it would.
    tokio::time::sleep(Duration::from_millis(300)).await;
    tokio::time::timeout(
        Duration::from_secs(5),
        subscription.acker.ack(std::slice::from_ref(&first.tag)),
    )
    .await
    .expect("the ack returned")
    .expect("the ack succeeded");
    // Whatever was handed out meanwhile, then the rest, in order per key.
    let mut tags = std::collections::HashSet::from([first.tag.clone()]);
    while let Some(d) = next(&mut subscription, Duration::from_millis(100)).await {
        ack(&subscription, &d).await;
        tags.insert(d.tag);
    }
    let rest = drain_in_order(&mut subscription, sent.len() - tags.len()).await;
    tags.extend(rest.into_iter().map(|d| d.tag));
    assert_eq!(tags.len(), sent.len(), "every pending entry came, once");
}

/// A partition taken over is not read for new entries before its pending ones are
/// claimed: later entries of a key never overtake earlier ones, even when the claim takes
/// several passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_partition_delivers_its_pending_entries_before_newer_ones() {
    let dbs = open(Backend::Sqlite).await;
    let publisher = redis_bus(&dbs, REDIS, "publisher").await;
    let key = Uuid::now_v7();
    publish(&publisher, &[event(key, 1), event(key, 2)]).await;
    assert_eq!(read_as(&dbs, REDIS, "dead").await, 2);
    publish(&publisher, &[event(key, 3)]).await;
    let b = redis_bus(&dbs, REDIS, "instance-b").await;
    let mut subscription = subscribe(&b, 1).await;
    let got = drain_in_order(&mut subscription, 3).await;
    let attempts: Vec<u32> = got.iter().map(|d| d.attempt).collect();
    assert_eq!(attempts, [2, 2, 1]);
}

/// Once another instance holds a partition's lease, the instance that lost it hands out
/// nothing more of it, not even an entry that was waiting behind one it had handed out;
/// when the partition is free again it takes it back and delivers what was waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_whose_lease_another_instance_took_hands_out_nothing_more() {
    let dbs = open(Backend::Sqlite).await;
    let publisher = redis_bus(&dbs, REDIS, "publisher").await;
    let key = Uuid::now_v7();
    publish(&publisher, &[event(key, 1), event(key, 2)]).await;
    let a = redis_bus(&dbs, REDIS, "instance-a").await;
    let mut subscription = subscribe(&a, 10).await;
    let first = next(&mut subscription, WAIT).await.expect("a delivery");
    assert_eq!(seq(&first).1, 1);
    let mut conn = connect(REDIS).await;
    let _: () = ::redis::cmd("SET")
        .arg(lease_key(&dbs, key))
        .arg("intruder")
        .arg("PX")
        .arg(60_000)
        .query_async(&mut conn)
        .await
        .expect("SET");
    // A renews every third of a lease: by now it has seen the lease is not its own.
    tokio::time::sleep(lease()).await;
    ack(&subscription, &first).await;
    assert!(
        next(&mut subscription, lease()).await.is_none(),
        "nothing of a partition another instance holds is handed out"
    );
    let _: i64 = ::redis::cmd("DEL")
        .arg(lease_key(&dbs, key))
        .query_async(&mut conn)
        .await
        .expect("DEL");
    let second = next(&mut subscription, WAIT)
        .await
        .expect("the waiting entry comes once the partition is taken back");
    assert_eq!(seq(&second).1, 2);
    assert_eq!(second.attempt, 2, "its first delivery counts");
    ack(&subscription, &second).await;
    wait_until_nothing_pending(&dbs, REDIS).await;
}

/// An instance that cannot renew its lease (Redis is away) stops handing out the
/// partition's entries once the lease ran out by its own clock, since another instance
/// may own it by then. An acknowledgement Redis refused meanwhile is sent again later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_whose_lease_could_not_be_renewed_is_not_delivered_from_after_it_ran_out() {
    let dbs = open(Backend::Sqlite).await;
    let mut redis = PrivateRedis::start();
    let publisher = redis_bus(&dbs, &redis.url(), "publisher").await;
    let key = Uuid::now_v7();
    publish(&publisher, &[event(key, 1), event(key, 2)]).await;
    let a = redis_bus(&dbs, &redis.url(), "instance-a").await;
    let mut subscription = subscribe(&a, 10).await;
    let first = next(&mut subscription, WAIT).await.expect("a delivery");
    assert_eq!(seq(&first).1, 1);
    redis.kill();
    tokio::time::sleep(lease() * 3 / 2).await;
    // The work is done; Redis does not take the acknowledgement.
    let refused = subscription
        .acker
        .ack(std::slice::from_ref(&first.tag))
        .await;
    assert!(refused.is_err(), "Redis is away");
    assert!(
        next(&mut subscription, lease() / 2).await.is_none(),
        "nothing is handed out of a partition whose lease ran out"
    );
    redis.spawn();
    let second = next(&mut subscription, WAIT)
        .await
        .expect("the waiting entry comes once the partition is taken back");
    assert_eq!(seq(&second).1, 2);
    assert_eq!(second.attempt, 2, "its first delivery counts");
    ack(&subscription, &second).await;
    wait_until_nothing_pending(&dbs, &redis.url()).await;
}

/// Entries pending in a partition this instance owns with nothing to deliver them (a
/// reply that never arrived, an acknowledgement of a foreign type that failed) are found
/// again: the event is delivered, the foreign one acknowledged, and the stream can be
/// trimmed to nothing afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_pending_with_nothing_to_deliver_them_are_read_again_and_the_stream_trims() {
    let dbs = open(Backend::Sqlite).await;
    let publisher = redis_bus(&dbs, REDIS, "publisher").await;
    let a = redis_bus(&dbs, REDIS, "instance-a").await;
    let mut subscription = subscribe(&a, 1).await;
    publish(&publisher, &events(1, 1)).await;
    // A holds one delivery with room for one: it reads nothing more for now.
    let held = next(&mut subscription, WAIT).await.expect("a delivery");
    let lost = event(Uuid::now_v7(), 1);
    let foreign = Outgoing {
        event_id: Uuid::now_v7(),
        event_type: OrderPlacedV1::TYPE.into(),
        source: PRODUCER.into(),
        key: Uuid::now_v7().to_string(),
        envelope: Arc::from("{}"),
        handed_before: false,
    };
    publisher
        .publish(&[outgoing(&lost), foreign])
        .await
        .expect("publish");
    // Read under A's own name, as a reply A never received would leave them.
    assert_eq!(read_as(&dbs, REDIS, "instance-a").await, 2);
    ack(&subscription, &held).await;
    let found = next(&mut subscription, lease() * 10)
        .await
        .expect("the entry nobody delivered comes");
    assert_eq!(
        Envelope::from_bytes(&found.raw).expect("envelope").id,
        lost.id
    );
    assert_eq!(found.attempt, 2, "the lost delivery counts");
    ack(&subscription, &found).await;
    wait_until_nothing_pending(&dbs, REDIS).await;
    // The other modules reading checkout's streams acknowledge everything too.
    acknowledge_for_other_groups(&dbs).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        publisher.trim_now(PRODUCER).await.expect("trim");
        if stream_length(&dbs).await == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the trim floor moved past everything"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Receives and acknowledges, after `hold`, every delivery of a subscription, recording
/// `label` for each; returns the receiving task and the reader.
fn consume(
    mut subscription: Subscription,
    label: &'static str,
    hold: Duration,
    log: Arc<std::sync::Mutex<Vec<(&'static str, DeliveryTagOf)>>>,
) -> (
    JoinHandle<()>,
    Option<tokio_util::task::AbortOnDropHandle<()>>,
) {
    let reader = subscription.reader.take();
    let task = tokio::spawn(async move {
        while let Some(d) = subscription.deliveries.next().await {
            log.lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((label, d.tag.clone()));
            let acker = subscription.acker.clone();
            tokio::spawn(async move {
                tokio::time::sleep(hold).await;
                let _ = acker.ack(std::slice::from_ref(&d.tag)).await;
            });
        }
    });
    (task, reader)
}

type DeliveryTagOf = messaging::DeliveryTag;

fn count(log: &std::sync::Mutex<Vec<(&'static str, DeliveryTagOf)>>, label: &str) -> usize {
    log.lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|(l, _)| *l == label)
        .count()
}

/// An instance joining while the first one always has work in flight on every partition
/// still gets its share: the first stops reading the surplus partitions, lets what it
/// holds of them settle, and hands them back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_instance_hands_surplus_partitions_to_a_joining_one() {
    let dbs = open(Backend::Sqlite).await;
    let publisher = Arc::new(redis_bus(&dbs, REDIS, "publisher").await);
    let log = Arc::new(std::sync::Mutex::new(Vec::new()));
    let a = redis_bus(&dbs, REDIS, "instance-a").await;
    let (a_task, a_reader) = consume(
        subscribe(&a, 100).await,
        "a",
        Duration::from_millis(150),
        log.clone(),
    );
    // A steady load on every partition, bounded.
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let publisher = publisher.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            for _ in 0..600 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                publish(&publisher, &events(8, 1)).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    while count(&log, "a") < 20 {
        assert!(tokio::time::Instant::now() < deadline, "a works");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let b = redis_bus(&dbs, REDIS, "instance-b").await;
    let (b_task, b_reader) = consume(subscribe(&b, 100).await, "b", Duration::ZERO, log.clone());
    let deadline = tokio::time::Instant::now() + lease() * 10;
    while count(&log, "b") == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the joining instance got no work while the first was busy"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::SeqCst);
    let _ = load.await;
    for task in [a_task, b_task] {
        task.abort();
    }
    drop((a_reader, b_reader));
}

/// A TCP relay to the shared Redis that, once armed, freezes the next connection that
/// sends an XREADGROUP: it forwards nothing more either way and keeps the socket open,
/// as a half-open connection would. Armed with [`LOSE_REPLY`], it forwards that read
/// first, so Redis hands entries out in a reply that never arrives.
struct FreezingRelay {
    port: u16,
    armed: Arc<AtomicU8>,
    frozen: Arc<AtomicUsize>,
}

const FREEZE: u8 = 1;
const LOSE_REPLY: u8 = 2;

impl FreezingRelay {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("address").port();
        let armed = Arc::new(AtomicU8::new(0));
        let frozen = Arc::new(AtomicUsize::new(0));
        let (a, f) = (armed.clone(), frozen.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect("127.0.0.1:6379").await else {
                    continue;
                };
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                let stuck = Arc::new(AtomicBool::new(false));
                let (armed, frozen, stuck_up) = (a.clone(), f.clone(), stuck.clone());
                tokio::spawn(async move {
                    let mut buf = vec![0_u8; 64 * 1024];
                    while let Ok(n) = client_read.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        if stuck_up.load(Ordering::SeqCst) {
                            continue;
                        }
                        let chunk = &buf[..n];
                        if chunk.windows(10).any(|w| w == b"XREADGROUP") {
                            let mode = armed.swap(0, Ordering::SeqCst);
                            if mode != 0 {
                                stuck_up.store(true, Ordering::SeqCst);
                                if mode == LOSE_REPLY {
                                    let _ = server_write.write_all(chunk).await;
                                }
                                frozen.fetch_add(1, Ordering::SeqCst);
                                continue;
                            }
                        }
                        if server_write.write_all(chunk).await.is_err() {
                            break;
                        }
                    }
                });
                tokio::spawn(async move {
                    let mut buf = vec![0_u8; 64 * 1024];
                    while let Ok(n) = server_read.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        if stuck.load(Ordering::SeqCst) {
                            continue;
                        }
                        if client_write.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    // Keep the client's side open, whatever happens on the server's.
                    std::future::pending::<()>().await;
                });
            }
        });
        Self {
            port,
            armed,
            frozen,
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

/// A blocking read whose connection stops answering without closing is given up after a
/// while above its BLOCK time, on a new connection, and the reader goes on delivering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_whose_connection_stops_answering_reconnects() {
    let dbs = open(Backend::Sqlite).await;
    let relay = FreezingRelay::start().await;
    let publisher = redis_bus(&dbs, REDIS, "publisher").await;
    let a = redis_bus(&dbs, &relay.url(), "instance-a").await;
    let mut subscription = subscribe(&a, 10).await;
    publish(&publisher, &events(1, 1)).await;
    let first = next(&mut subscription, WAIT).await.expect("a delivery");
    ack(&subscription, &first).await;
    relay.armed.store(FREEZE, Ordering::SeqCst);
    let deadline = tokio::time::Instant::now() + WAIT;
    while relay.frozen.load(Ordering::SeqCst) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the reader reads again"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    publish(&publisher, &events(1, 1)).await;
    let second = next(&mut subscription, lease() * 10)
        .await
        .expect("delivered after the hung read was given up");
    ack(&subscription, &second).await;
}

/// A second process started under an instance name already in use by a live process
/// takes no partition, even one whose lease lapsed, so the two never read one partition
/// under one consumer name; it takes over once the first one is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_with_the_same_instance_name_stays_idle_while_the_first_lives() {
    let dbs = open(Backend::Sqlite).await;
    let publisher = redis_bus(&dbs, REDIS, "publisher").await;
    let log = Arc::new(std::sync::Mutex::new(Vec::new()));
    let first = redis_bus(&dbs, REDIS, "instance-a").await;
    let mut subscription = subscribe(&first, 100).await;
    publish(&publisher, &events(1, 1)).await;
    let d = next(&mut subscription, WAIT).await.expect("a delivery");
    ack(&subscription, &d).await;
    let (first_task, first_reader) = consume(subscription, "first", Duration::ZERO, log.clone());
    // The first process's leases lapse (a pause, say) just as the second one starts.
    let mut conn = connect(REDIS).await;
    for p in 0..PARTITIONS {
        let _: i64 = ::redis::cmd("DEL")
            .arg(format!("{}:lease:{CONSUMER}:{p}", dbs.namespace))
            .query_async(&mut conn)
            .await
            .expect("DEL");
    }
    let second = redis_bus(&dbs, REDIS, "instance-a").await;
    let (second_task, second_reader) = consume(
        subscribe(&second, 100).await,
        "second",
        Duration::ZERO,
        log.clone(),
    );
    let sent = events(16, 1);
    publish(&publisher, &sent).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while count(&log, "first") + count(&log, "second") < sent.len() {
        assert!(tokio::time::Instant::now() < deadline, "every event came");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        count(&log, "second"),
        0,
        "the duplicate delivered nothing while the first lived"
    );
    // The first one crashes: the second takes over once its leases ran out.
    first_task.abort();
    if let Some(reader) = first_reader {
        reader.abort();
    }
    let more = events(4, 1);
    publish(&publisher, &more).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while count(&log, "second") < more.len() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the second process took over"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    second_task.abort();
    if let Some(reader) = second_reader {
        reader.abort();
    }
}

/// After a real crash (nothing handed back), another instance takes the partition only
/// once the crashed one's lease expired, and the entry comes with its attempt one higher.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_instance_s_partition_is_taken_over_only_after_its_lease_expired() {
    let dbs = open(Backend::Sqlite).await;
    let publisher = redis_bus(&dbs, REDIS, "publisher").await;
    // The event's partition is the first one instance-b tries to take, so a take that
    // ignored a live lease would happen at once, not by chance (with a random key, b's
    // first share of partitions missed it half the time, until the crashed instance's
    // membership lapsed along with its lease).
    let key = key_in(partition_of("instance-b", PARTITIONS));
    publish(&publisher, &[event(key, 1)]).await;
    let a = redis_bus(&dbs, REDIS, "instance-a").await;
    let mut subscription = subscribe(&a, 10).await;
    let first = next(&mut subscription, WAIT).await.expect("a delivery");
    assert_eq!(first.attempt, 1);
    crash(subscription).await;
    let mut conn = connect(REDIS).await;
    let left: i64 = ::redis::cmd("PTTL")
        .arg(lease_key(&dbs, key))
        .query_async(&mut conn)
        .await
        .expect("PTTL");
    assert!(left > 0, "the crashed instance's lease is still there");
    let expires = Instant::now() + Duration::from_millis(left as u64);
    let b = redis_bus(&dbs, REDIS, "instance-b").await;
    let mut subscription = subscribe(&b, 10).await;
    let again = next(&mut subscription, WAIT).await.expect("taken over");
    assert!(
        Instant::now() + Duration::from_millis(50) >= expires,
        "taken over {:?} before the lease expired",
        expires - Instant::now()
    );
    assert_eq!(again.tag, first.tag);
    assert_eq!(again.attempt, 2);
    ack(&subscription, &again).await;
}

/// A delivery retried after its partition went to another instance is not claimed back
/// when its delay is over: the new owner keeps it, and the old one hands it out no more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_does_not_take_an_entry_back_from_the_partition_s_new_owner() {
    let dbs = open(Backend::Sqlite).await;
    let publisher = redis_bus(&dbs, REDIS, "publisher").await;
    let key = Uuid::now_v7();
    publish(&publisher, &[event(key, 1)]).await;
    let a = redis_bus(&dbs, REDIS, "instance-a").await;
    let mut subscription = subscribe(&a, 10).await;
    let first = next(&mut subscription, WAIT).await.expect("a delivery");
    subscription
        .acker
        .retry(&first.tag, lease() * 2, "failed")
        .await
        .expect("retry");
    // Meanwhile another instance takes the partition and claims the entry.
    let mut conn = connect(REDIS).await;
    let _: () = ::redis::cmd("SET")
        .arg(lease_key(&dbs, key))
        .arg("instance-b")
        .arg("PX")
        .arg(60_000)
        .query_async(&mut conn)
        .await
        .expect("SET");
    let (stream, id) = RedisBus::stream_entry(&first.tag).expect("a stream entry");
    let _: ::redis::Value = ::redis::cmd("XCLAIM")
        .arg(stream)
        .arg(CONSUMER)
        .arg("instance-b")
        .arg(0)
        .arg(id)
        .query_async(&mut conn)
        .await
        .expect("XCLAIM");
    assert!(
        next(&mut subscription, lease() * 3).await.is_none(),
        "the old owner hands the entry out no more"
    );
    let rows: Vec<(String, String, u64, usize)> = ::redis::cmd("XPENDING")
        .arg(stream)
        .arg(CONSUMER)
        .arg("-")
        .arg("+")
        .arg(10)
        .query_async(&mut conn)
        .await
        .expect("XPENDING");
    assert_eq!(rows.len(), 1);
    assert_eq!(
        rows[0].1, "instance-b",
        "the new owner still holds the entry"
    );
}

/// Entries Redis handed out in a reply that never arrived are delivered before anything
/// newer of their key: after a failed read, the reader looks through its pending entries
/// before it reads new ones from those streams.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_of_a_lost_reply_come_before_newer_entries_of_their_key() {
    let dbs = open(Backend::Sqlite).await;
    let relay = FreezingRelay::start().await;
    let publisher = redis_bus(&dbs, REDIS, "publisher").await;
    let a = redis_bus(&dbs, &relay.url(), "instance-a").await;
    let mut subscription = subscribe(&a, 10).await;
    publish(&publisher, &events(1, 1)).await;
    let warm = next(&mut subscription, WAIT).await.expect("a delivery");
    ack(&subscription, &warm).await;
    let key = Uuid::now_v7();
    relay.armed.store(LOSE_REPLY, Ordering::SeqCst);
    let deadline = tokio::time::Instant::now() + WAIT;
    while relay.frozen.load(Ordering::SeqCst) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the reader reads again"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    publish(&publisher, &[event(key, 1)]).await;
    // Redis handed it to A in the reply that is lost.
    let deadline = tokio::time::Instant::now() + WAIT;
    while pending(&dbs, REDIS).await == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the lost read took the entry"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    publish(&publisher, &[event(key, 2)]).await;
    let first = next(&mut subscription, WAIT).await.expect("a delivery");
    assert_eq!(seq(&first), (key.to_string(), 1), "the lost entry first");
    assert_eq!(first.attempt, 2, "the lost delivery counts");
    ack(&subscription, &first).await;
    let second = next(&mut subscription, WAIT).await.expect("a delivery");
    assert_eq!(seq(&second), (key.to_string(), 2));
    ack(&subscription, &second).await;
    wait_until_nothing_pending(&dbs, REDIS).await;
}

/// Entries the consumer's group read and has not acknowledged yet are kept by a trim,
/// although every other group is done with them and the group has read past them; once
/// acknowledged, they are trimmed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trim_keeps_the_entries_a_group_read_and_has_not_acknowledged() {
    let dbs = open(Backend::Sqlite).await;
    let publisher = redis_bus(&dbs, REDIS, "publisher").await;
    let sent = events(4, 1);
    publish(&publisher, &sent).await;
    acknowledge_for_other_groups(&dbs).await;
    let a = redis_bus(&dbs, REDIS, "instance-a").await;
    let mut subscription = subscribe(&a, 10).await;
    let mut pending = Vec::new();
    for _ in &sent {
        pending.push(next(&mut subscription, WAIT).await.expect("a delivery"));
    }
    publisher.trim_now(PRODUCER).await.expect("trim");
    let length = |dbs: &Dbs| {
        let streams = streams(dbs);
        async move {
            let mut conn = connect(REDIS).await;
            let mut total = 0_i64;
            for stream in streams {
                let n: i64 = ::redis::cmd("XLEN")
                    .arg(stream)
                    .query_async(&mut conn)
                    .await
                    .expect("XLEN");
                total += n;
            }
            total
        }
    };
    assert_eq!(
        length(&dbs).await,
        sent.len() as i64,
        "pending entries are not trimmed"
    );
    for delivery in &pending {
        ack(&subscription, delivery).await;
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        publisher.trim_now(PRODUCER).await.expect("trim");
        if length(&dbs).await == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "acknowledged entries were trimmed in the end"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    crash(subscription).await;
}
