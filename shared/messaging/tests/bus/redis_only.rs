//! What only the Redis Streams bus has to prove: trimming waits for every group, a
//! pending entry trimmed anyway does not stop anything, a Redis restart loses and repeats
//! nothing, and a joining instance takes its share of the partitions.

use std::process::{Child, Command, Stdio};

use contracts::checkout::OrderPlacedV1;

use super::*;

pub(crate) async fn redis_bus(dbs: &Dbs, url: &str, instance: &str) -> RedisBus {
    RedisBus::connect(
        RedisConfig {
            url: url.into(),
            username: None,
            password: None,
            namespace: dbs.namespace.clone(),
            partitions: 4,
            instance: instance.into(),
        },
        settings(),
    )
    .await
    .expect("Redis answers")
}

pub(crate) async fn stream_length(dbs: &Dbs) -> i64 {
    let client = ::redis::Client::open(REDIS).expect("url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let mut total = 0;
    for partition in 0..4 {
        let n: i64 = ::redis::cmd("XLEN")
            .arg(format!("{}:stream:{PRODUCER}:{partition}", dbs.namespace))
            .query_async(&mut conn)
            .await
            .expect("XLEN");
        total += n;
    }
    total
}

/// Entries stay in a stream until every group that reads it has acknowledged them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trimming_waits_for_every_group() {
    let dbs = open(Backend::Postgres).await;
    let publisher = redis_bus(&dbs, REDIS, "publisher").await;
    let running = start(
        Transport::Redis,
        &dbs,
        "instance-a",
        Faults::default(),
        false,
    )
    .await;
    let sent = events(4, 5);
    publisher
        .publish(&sent.iter().map(outgoing).collect::<Vec<_>>())
        .await
        .expect("publish");
    assert_exactly_once_in_order(&dbs, &sent).await;
    // fulfillment has acknowledged everything; catalog (which also reads checkout's
    // streams) has not read anything yet.
    publisher.trim_now(PRODUCER).await.expect("trim");
    assert_eq!(
        stream_length(&dbs).await,
        sent.len() as i64,
        "nothing trimmed"
    );

    // catalog reads (and, not taking order_confirmed, acknowledges) everything.
    let catalog = redis_bus(&dbs, REDIS, "catalog-a").await;
    let subscription = catalog
        .subscribe(SubscriberSpec {
            module: "catalog",
            event_types: vec![OrderPlacedV1::TYPE],
            max_in_flight: 100,
        })
        .await
        .expect("subscribe");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        publisher.trim_now(PRODUCER).await.expect("trim");
        if stream_length(&dbs).await == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "trimmed once every group acknowledged"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(subscription);
    running.stop().await;
}

/// A pending entry whose data was trimmed (by an operator, say) is acknowledged and
/// logged when its partition is claimed; the events after it are handled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trimmed_pending_entry_does_not_stop_the_partition() {
    let dbs = open(Backend::Postgres).await;
    let publisher = redis_bus(&dbs, REDIS, "publisher").await;
    let lost = events(2, 1);
    publisher
        .publish(&lost.iter().map(outgoing).collect::<Vec<_>>())
        .await
        .expect("publish");
    // A consumer reads them (they become pending) and dies without acknowledging.
    let reader = redis_bus(&dbs, REDIS, "instance-a").await;
    let mut subscription = reader
        .subscribe(SubscriberSpec {
            module: CONSUMER,
            event_types: vec![OrderConfirmedV1::TYPE],
            max_in_flight: 10,
        })
        .await
        .expect("subscribe");
    for _ in &lost {
        tokio::time::timeout(WAIT, subscription.deliveries.next())
            .await
            .expect("a delivery")
            .expect("open");
    }
    // Their data is removed while they are pending.
    let client = ::redis::Client::open(REDIS).expect("url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    for partition in 0..4 {
        let _: i64 = ::redis::cmd("XTRIM")
            .arg(format!("{}:stream:{PRODUCER}:{partition}", dbs.namespace))
            .arg("MAXLEN")
            .arg(0)
            .query_async(&mut conn)
            .await
            .expect("XTRIM");
    }
    drop(subscription);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let running = start(
        Transport::Redis,
        &dbs,
        "instance-b",
        Faults::default(),
        false,
    )
    .await;
    let after = events(3, 2);
    publisher
        .publish(&after.iter().map(outgoing).collect::<Vec<_>>())
        .await
        .expect("publish");
    assert_exactly_once_in_order(&dbs, &after).await;
    running.stop().await;
}

/// A private Redis with an append-only file, so it can be killed and started again.
pub(crate) struct PrivateRedis {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl PrivateRedis {
    pub(crate) fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let dir = tempfile::tempdir().expect("temp dir");
        let mut redis = Self {
            child: None,
            port,
            dir,
        };
        redis.spawn();
        redis
    }

    pub(crate) fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `kill -9`.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Redis is killed with SIGKILL while events flow and started again: every event is
/// applied exactly once, in order per key (Redis keeps its data in its append-only file;
/// the outbox holds what Redis never took), and the private Redis ends with nothing
/// pending or unread. The lease is 5 s, not the suite's 1 s: what is tested is what the
/// restart loses or repeats, not how a reader starved on a loaded machine loses its
/// partitions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_loses_and_repeats_nothing() {
    let dbs = open(Backend::Postgres).await;
    let mut redis = PrivateRedis::start();
    let mut longer = settings();
    longer.lease_ms = 5_000;
    let bus: Arc<dyn EventBus> = Arc::new(
        RedisBus::connect(
            RedisConfig {
                url: redis.url(),
                username: None,
                password: None,
                namespace: dbs.namespace.clone(),
                partitions: 4,
                instance: "instance-a".into(),
            },
            longer.clone(),
        )
        .await
        .expect("Redis answers"),
    );
    let running = start_configured(bus, &dbs, "instance-a", Faults::default(), true, longer).await;
    let sent = events(8, 12);
    let outbox = Outbox::new(PRODUCER);
    let (before, after) = sent.split_at(sent.len() / 2);
    for chunk in before.chunks(8) {
        commit(&dbs, &outbox, chunk).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    redis.kill();
    for chunk in after.chunks(8) {
        commit(&dbs, &outbox, chunk).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    redis.spawn();
    assert_exactly_once_in_order(&dbs, &sent).await;
    let settled = drained_at(&dbs, &redis.url()).await;
    assert_eq!(settled.applied, sent.len() as i64);
    running.stop().await;
}

/// An instance that joins takes a share of the partitions from the one already there,
/// and both handle events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_instance_takes_its_share() {
    let dbs = open(Backend::Postgres).await;
    let seen: Seen = Default::default();
    let spy = |instance: &str, bus: RedisBus| {
        Arc::new(Spy {
            inner: Arc::new(bus),
            instance: instance.into(),
            seen: seen.clone(),
            published: Default::default(),
            retries: Default::default(),
        })
    };
    let a = start_on(
        spy("instance-a", redis_bus(&dbs, REDIS, "instance-a").await),
        &dbs,
        "instance-a",
        Faults::default(),
        true,
    )
    .await;
    let first = events(8, 2);
    commit(&dbs, &Outbox::new(PRODUCER), &first).await;
    wait_applied(&dbs, first.len() as i64).await;
    let b = start_on(
        spy("instance-b", redis_bus(&dbs, REDIS, "instance-b").await),
        &dbs,
        "instance-b",
        Faults::default(),
        false,
    )
    .await;
    // Give the instances a few lease renewals to rebalance.
    tokio::time::sleep(Duration::from_millis(settings().lease_ms * 2)).await;
    let second = events(40, 2);
    commit(&dbs, &Outbox::new(PRODUCER), &second).await;
    let mut all = first.clone();
    all.extend(second);
    assert_exactly_once_in_order(&dbs, &all).await;
    let seen = seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let by_b = seen.iter().filter(|(i, _, _, _)| i == "instance-b").count();
    let by_a_late = seen
        .iter()
        .skip(first.len())
        .filter(|(i, _, _, _)| i == "instance-a")
        .count();
    assert!(
        by_b > 0 && by_a_late > 0,
        "both instances work: b={by_b}, a after b joined={by_a_late}"
    );
    a.stop().await;
    b.stop().await;
}
