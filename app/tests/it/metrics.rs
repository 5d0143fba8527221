//! `/metrics` after a journey: every family is there, on the admin port only, with values
//! that fit what happened and labels that stay bounded (route templates, never ids).
//!
//! The recorder is one per process and the tests of this binary run side by side, so
//! counters hold the sum of every app here: the checks are lower bounds.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use testkit::metrics::{Sample, at_least, parse, value};
use testkit::{Backend, eventually, on_both_backends};

use crate::shop::{Shop, WAIT};

on_both_backends!(a_journey_shows_in_every_metric_family);

async fn a_journey_shows_in_every_metric_family(backend: Backend) {
    let shop = Shop::open(backend).await;
    shop.product("METRIC-1", 300, 5).await;
    let order = shop.place(&[("METRIC-1", 1)], "tok_visa").await;
    shop.order_becomes(&order, "confirmed").await;
    let shipment = shop.shipment_becomes(&order, "ready").await;
    let shipment = shipment["id"].as_str().expect("an id").to_owned();
    shop.dispatch(&shipment).await.expect_status(200);
    shop.order_becomes(&order, "shipped").await;
    shop.settled().await;

    // The main port does not serve metrics.
    shop.app.get("/metrics").await.expect_status(404);
    // Paths holding ids, matched or not: neither may become a label.
    let unknown = uuid::Uuid::now_v7();
    shop.app
        .get(&format!("/api/checkout/orders/{unknown}"))
        .await
        .expect_status(404);
    shop.app
        .get(&format!("/api/checkout/orders/{order}/nowhere"))
        .await
        .expect_status(404);

    // The watchdog reports the backlog every third of a lease: wait for its first round.
    let reply = eventually(WAIT, "every consumer to report its backlog", || async {
        let reply = shop.app.scrape().await;
        let samples = parse(&reply.text);
        ["checkout", "catalog", "fulfillment"]
            .iter()
            .all(|m| value(&samples, "consumer_backlog", &[("module", m)]).is_some())
            .then_some(reply)
    })
    .await;
    reply.expect_status(200);
    assert!(
        reply
            .header("content-type")
            .is_some_and(|c| c.starts_with("text/plain")),
        "{:?}",
        reply.headers
    );
    let samples = parse(&reply.text);

    // HTTP, by route template and status class.
    let post = [
        ("method", "POST"),
        ("route", "/api/checkout/orders"),
        ("status", "2xx"),
    ];
    at_least(&samples, "http_requests_total", &post, 1.0);
    at_least(&samples, "http_request_duration_seconds_count", &post, 1.0);
    at_least(
        &samples,
        "http_request_duration_seconds_bucket",
        &[post[0], post[1], post[2], ("le", "+Inf")],
        1.0,
    );
    let get_order = [
        ("method", "GET"),
        ("route", "/api/checkout/orders/{id}"),
        ("status", "2xx"),
    ];
    at_least(&samples, "http_requests_total", &get_order, 1.0);
    at_least(
        &samples,
        "http_requests_total",
        &[
            ("method", "POST"),
            ("route", "/api/fulfillment/shipments/{id}/dispatch"),
            ("status", "2xx"),
        ],
        1.0,
    );
    at_least(
        &samples,
        "http_requests_total",
        &[
            ("method", "GET"),
            ("route", "/api/checkout/orders/{id}"),
            ("status", "4xx"),
        ],
        1.0,
    );
    at_least(
        &samples,
        "http_requests_total",
        &[("route", "unmatched"), ("status", "4xx")],
        1.0,
    );

    // Business counters.
    at_least(&samples, "checkout_orders_placed_total", &[], 1.0);
    at_least(&samples, "checkout_orders_confirmed_total", &[], 1.0);
    at_least(&samples, "fulfillment_shipments_dispatched_total", &[], 1.0);
    for reason in ["out_of_stock", "payment_declined"] {
        at_least(
            &samples,
            "checkout_orders_rejected_total",
            &[("reason", reason)],
            0.0,
        );
    }
    at_least(&samples, "checkout_orders_cancelled_total", &[], 0.0);
    at_least(&samples, "checkout_orders_overdue", &[], 0.0);
    at_least(&samples, "catalog_oversold_units_total", &[], 0.0);

    // The runtime of the background work.
    at_least(&samples, "tokio_workers", &[], 1.0);
    at_least(&samples, "tokio_alive_tasks", &[], 1.0);
    at_least(&samples, "tokio_global_queue_depth", &[], 0.0);

    // Per module: the outbox, the consumer, the pool.
    for module in ["catalog", "checkout", "fulfillment"] {
        let m = [("module", module)];
        at_least(&samples, "outbox_unpublished_events", &m, 0.0);
        at_least(&samples, "outbox_oldest_unpublished_age_seconds", &m, 0.0);
        at_least(&samples, "outbox_published_total", &m, 1.0);
        at_least(&samples, "relay_failures_total", &m, 0.0);
        at_least(&samples, "db_pool_max_connections", &m, 1.0);
        at_least(&samples, "db_begin_duration_seconds_count", &m, 1.0);
        for state in ["idle", "in_use"] {
            at_least(
                &samples,
                "db_pool_connections",
                &[("module", module), ("state", state)],
                0.0,
            );
        }
        // Every module here consumes something.
        at_least(&samples, "events_handled_total", &m, 1.0);
        at_least(&samples, "event_retries_total", &m, 0.0);
        at_least(&samples, "dead_letters_total", &m, 0.0);
        at_least(&samples, "consumer_backlog", &m, 0.0);
        at_least(&samples, "consumer_stalled", &m, 0.0);
        at_least(
            &samples,
            "consumer_batch_duration_seconds_count",
            &[("module", module), ("outcome", "ok")],
            1.0,
        );
    }

    // Bounded labels: no id anywhere, whole or as a path segment.
    for sample in &samples {
        for (key, value) in &sample.labels {
            assert!(
                !value
                    .split('/')
                    .chain([value.as_str()])
                    .any(|part| uuid::Uuid::parse_str(part).is_ok())
                    && !value.contains(&order)
                    && !value.contains(&shipment)
                    && !value.contains(&unknown.to_string()),
                "{}{{{key}={value:?}}} holds an id",
                sample.name
            );
        }
    }
}

/// What an extracted service is: the same host running one module. The real binary, with
/// only fulfillment enabled on the Redis bus, serves that module's families on its own
/// admin port, and nothing of the modules it does not run.
#[test]
fn a_process_running_one_module_serves_that_modules_families() {
    let data = tempfile::tempdir().expect("temp dir");
    let namespace = format!("test-metrics-{}", uuid::Uuid::new_v4().simple());
    let _keys = testkit::RedisKeys(namespace.clone());
    let mut child = crate::basics::binary(&[
        ("APP__SERVER__PORT", "0"),
        ("APP__SERVER__ADMIN_PORT", "0"),
        ("APP__MODULES__ENABLED", "fulfillment"),
        ("APP__BUS__KIND", "redis"),
        ("APP__BUS__REDIS__NAMESPACE", &namespace),
        ("APP__BUS__INSTANCE", &namespace),
        (
            "APP__DATABASE__SQLITE__DIR",
            data.path().to_str().expect("utf-8 path"),
        ),
    ])
    .stderr(Stdio::null())
    .spawn()
    .expect("the binary starts");
    let crate::basics::Started {
        listening,
        rest: lines,
        ..
    } = crate::basics::until_listening(&mut child);
    let address = listening["address"].as_str().expect("address").to_owned();
    let metrics = listening["metrics"].as_str().expect("metrics").to_owned();

    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let text = runtime.block_on(async {
        let client = module_api::tls::client_builder(None)
            .expect("a client builder")
            .build()
            .expect("a client");
        let staff = testkit::token(
            &testkit::test_settings(),
            &[testkit::Role::Staff],
            "staff-1",
        );
        let listed = client
            .get(format!("{address}/api/fulfillment/shipments"))
            .bearer_auth(staff)
            .send()
            .await
            .expect("reachable");
        assert_eq!(listed.status(), 200);
        // The request is counted as it is answered; the sampler's first round runs as the
        // process starts serving, so it may still be under way.
        eventually(WAIT, "the sampler's first round", || async {
            let text = client
                .get(&metrics)
                .send()
                .await
                .expect("the admin port answers")
                .text()
                .await
                .expect("a body");
            let samples = parse(&text);
            value(
                &samples,
                "outbox_unpublished_events",
                &[("module", "fulfillment")],
            )
            .is_some()
            .then_some(text)
        })
        .await
    });
    let samples = parse(&text);
    let module = [("module", "fulfillment")];
    for family in [
        "outbox_unpublished_events",
        "outbox_oldest_unpublished_age_seconds",
        "outbox_published_total",
        "events_handled_total",
        "event_retries_total",
        "dead_letters_total",
        "db_pool_max_connections",
    ] {
        at_least(&samples, family, &module, 0.0);
    }
    at_least(&samples, "fulfillment_shipments_dispatched_total", &[], 0.0);
    at_least(
        &samples,
        "http_requests_total",
        &[
            ("method", "GET"),
            ("route", "/api/fulfillment/shipments"),
            ("status", "2xx"),
        ],
        1.0,
    );
    let foreign: Vec<&Sample> = samples
        .iter()
        .filter(|s| {
            s.name.starts_with("checkout_")
                || s.name.starts_with("catalog_")
                || s.labels.get("module").is_some_and(|m| m != "fulfillment")
        })
        .collect();
    assert!(foreign.is_empty(), "{foreign:?}");

    let killed = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    assert!(killed.map(|s| s.success()).unwrap_or(false));
    for _ in lines {}
    let status = child.wait().expect("the binary exits");
    assert!(status.success(), "a clean exit after SIGTERM: {status:?}");
}

/// `redis_errors_total` counts round trips to Redis that failed: the app runs on a private
/// `redis-server` of this test (on a free loopback port; the machine's Redis is never
/// touched), which is killed; the bus's readers and relays keep trying, and the counter
/// grows on `/metrics`, by what each round trip was for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_round_trips_to_redis_are_counted() {
    let mut redis = PrivateRedis::start();
    let url = redis.url();
    let app = testkit::Spawn::new(Backend::Sqlite, app::modules())
        .configure(|s| {
            s.bus.kind = runtime::config::BusKind::Redis;
            s.bus.redis.url = url.clone();
            s.bus.redis.namespace = "metrics".into();
        })
        .start()
        .await;
    // No other test of this binary talks to Redis in process: what is counted is ours.
    let errors = |text: &str| -> f64 {
        parse(text)
            .iter()
            .filter(|s| s.name == "redis_errors_total")
            .map(|s| s.value)
            .sum()
    };
    let before = errors(&app.scrape().await.text);
    app.post(
        "/api/catalog/products",
        &testkit::json!({"sku": "REDIS-1", "name": "Tea", "price_minor": 450, "currency": "EUR", "initial_stock": 5}),
    )
    .await
    .expect_status(201);

    redis.kill();
    // A product created while Redis is away: its event waits in the outbox, its relay's
    // publish fails.
    app.post(
        "/api/catalog/products",
        &testkit::json!({"sku": "REDIS-2", "name": "Tea", "price_minor": 450, "currency": "EUR", "initial_stock": 5}),
    )
    .await
    .expect_status(201);
    let text = eventually(WAIT, "failed round trips to be counted", || async {
        let text = app.scrape().await.text;
        // The relay's round trips: its groups made sure of, or its entries added.
        let relay = ["publish", "groups"].iter().any(|op| {
            value(&parse(&text), "redis_errors_total", &[("op", op)]).is_some_and(|v| v >= 1.0)
        });
        (errors(&text) > before && relay).then_some(text)
    })
    .await;
    // Only the fixed names of what a round trip was for.
    let ops = [
        "publish", "ack", "read", "claim", "retry", "leases", "groups", "trim", "check", "backlog",
        "connect",
    ];
    for sample in parse(&text)
        .iter()
        .filter(|s| s.name == "redis_errors_total")
    {
        let op = sample.labels.get("op").map(String::as_str).unwrap_or("");
        assert!(ops.contains(&op), "an unexpected op label: {sample:?}");
    }

    // Redis back (same port, same data): the app stops cleanly.
    redis.spawn();
    app.stop().await;
}

/// A `redis-server` of one test, on a free loopback port, its data in a folder of its own.
struct PrivateRedis {
    child: Option<std::process::Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl PrivateRedis {
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let mut redis = Self {
            child: None,
            port,
            dir: tempfile::tempdir().expect("temp dir"),
        };
        redis.spawn();
        redis
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--appendonly", "yes", "--save", ""])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `kill -9`.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}
