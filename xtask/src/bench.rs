//! `cargo xtask bench`: the order journey under load, on PostgreSQL, end to end.
//!
//! Builds the release binary, starts the monolith on a fresh database (loopback only),
//! creates products, places orders over HTTP with a fixed concurrency, and waits until
//! every order has its shipment. It reports what it measured:
//! - placement: orders accepted per second over HTTP, and request latency percentiles;
//! - journey: orders per second from the first placement to the last shipment created;
//! - latency from placement to `confirmed` and to the shipment's creation, from the
//!   timestamps the modules stored.
//!
//! Bounded in count and time: `--orders` orders, each run capped by `--timeout-secs`.

use std::time::{Duration, Instant};

use anyhow::bail;
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, Statement};

use crate::harness::{
    count, create_database, drop_database, loopback_only, order_body, percentile, seed, spawn,
    spawn_at, wait_ready,
};

#[derive(clap::Args, Debug, Clone)]
pub(crate) struct BenchArgs {
    /// Orders to place.
    #[arg(long, default_value_t = 5000)]
    pub(crate) orders: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 64)]
    pub(crate) concurrency: usize,
    /// Distinct products ordered (more spreads the stock rows' locks).
    #[arg(long, default_value_t = 50)]
    pub(crate) products: usize,
    /// Give up on a run after this long.
    #[arg(long, default_value_t = 300)]
    pub(crate) timeout_secs: u64,
    /// PostgreSQL server (loopback only).
    #[arg(long, default_value = "127.0.0.1")]
    pub(crate) pg_host: String,
    #[arg(long, default_value_t = 5432)]
    pub(crate) pg_port: u16,
    /// Skip `cargo build --release` (use the binaries already built).
    #[arg(long)]
    pub(crate) no_build: bool,
    /// Which topologies to measure, one after the other in this run.
    #[arg(long, value_enum, default_value = "both")]
    pub(crate) topology: Topology,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Topology {
    /// All modules in one process, in-process bus.
    Monolith,
    /// fulfillment extracted (a real `cargo xtask extract` in a scratch copy): two
    /// processes, Redis Streams between them, a database each.
    Extracted,
    Both,
}

/// One measured run.
#[derive(Debug, serde::Serialize)]
pub(crate) struct Report {
    pub(crate) topology: String,
    pub(crate) orders: usize,
    pub(crate) concurrency: usize,
    pub(crate) placement_per_sec: f64,
    pub(crate) placement_p50_ms: f64,
    pub(crate) placement_p99_ms: f64,
    pub(crate) journey_per_sec: f64,
    pub(crate) to_confirmed_p50_ms: f64,
    pub(crate) to_confirmed_p95_ms: f64,
    pub(crate) to_confirmed_p99_ms: f64,
    pub(crate) to_shipment_p50_ms: f64,
    pub(crate) to_shipment_p95_ms: f64,
    pub(crate) to_shipment_p99_ms: f64,
}

pub(crate) fn pg_vars(args: &BenchArgs, database: &str) -> Vec<(String, String)> {
    [
        ("APP__DATABASE__BACKEND", "postgres".to_owned()),
        ("APP__DATABASE__POSTGRES__HOST", args.pg_host.clone()),
        ("APP__DATABASE__POSTGRES__PORT", args.pg_port.to_string()),
        ("APP__DATABASE__POSTGRES__DATABASE", database.to_owned()),
        ("APP__DATABASE__POSTGRES__SSL_MODE", "disable".to_owned()),
        ("APP__DATABASE__POSTGRES__MAX_CONNECTIONS", "10".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// Places `orders` orders with `concurrency` requests in flight; returns the request
/// latencies and the wall time.
pub(crate) async fn place_orders(
    client: &reqwest::Client,
    checkout: u16,
    skus: &[String],
    orders: usize,
    concurrency: usize,
) -> anyhow::Result<(Vec<f64>, Duration)> {
    use futures::StreamExt;
    let url = format!("http://127.0.0.1:{checkout}/api/checkout/orders");
    let started = Instant::now();
    let results: Vec<anyhow::Result<f64>> = futures::stream::iter(0..orders)
        .map(|i| {
            let sku = &skus[i % skus.len()];
            let body = order_body(i, sku, 1, "tok_visa");
            let client = client.clone();
            let url = url.clone();
            async move {
                let t = Instant::now();
                let r = client.post(&url).json(&body).send().await?;
                anyhow::ensure!(
                    r.status().as_u16() == 201,
                    "placing an order: {}",
                    r.status()
                );
                Ok(t.elapsed().as_secs_f64() * 1000.0)
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let elapsed = started.elapsed();
    let latencies = results.into_iter().collect::<anyhow::Result<Vec<f64>>>()?;
    Ok((latencies, elapsed))
}

/// Epoch-ms timestamps per order: created, confirmed (checkout), shipment created.
pub(crate) async fn timeline(
    checkout: &DatabaseConnection,
    fulfillment: &DatabaseConnection,
) -> anyhow::Result<Vec<(f64, f64, f64)>> {
    let orders = checkout
        .query_all_raw(Statement::from_string(
            checkout.get_database_backend(),
            "SELECT id::text AS id, (EXTRACT(EPOCH FROM created_at) * 1000)::float8 AS created, \
             (EXTRACT(EPOCH FROM updated_at) * 1000)::float8 AS confirmed FROM checkout.orders WHERE status = 'confirmed'"
                .to_owned(),
        ))
        .await?;
    let shipments = fulfillment
        .query_all_raw(Statement::from_string(
            fulfillment.get_database_backend(),
            "SELECT order_id::text AS id, (EXTRACT(EPOCH FROM created_at) * 1000)::float8 AS shipped FROM fulfillment.shipments"
                .to_owned(),
        ))
        .await?;
    let mut shipped = std::collections::HashMap::new();
    for row in shipments {
        let id: String = row.try_get("", "id")?;
        let at: f64 = row.try_get("", "shipped")?;
        shipped.insert(id, at);
    }
    let mut out = Vec::new();
    for row in orders {
        let id: String = row.try_get("", "id")?;
        let created: f64 = row.try_get("", "created")?;
        let confirmed: f64 = row.try_get("", "confirmed")?;
        if let Some(s) = shipped.get(&id) {
            out.push((created, confirmed, *s));
        }
    }
    Ok(out)
}

pub(crate) fn report(
    topology: &str,
    args: &BenchArgs,
    mut latencies: Vec<f64>,
    placed_in: Duration,
    timeline: &[(f64, f64, f64)],
) -> Report {
    let first = timeline.iter().map(|t| t.0).fold(f64::INFINITY, f64::min);
    let last = timeline
        .iter()
        .map(|t| t.2)
        .fold(f64::NEG_INFINITY, f64::max);
    let mut confirmed: Vec<f64> = timeline.iter().map(|t| t.1 - t.0).collect();
    let mut shipped: Vec<f64> = timeline.iter().map(|t| t.2 - t.0).collect();
    Report {
        topology: topology.to_owned(),
        orders: args.orders,
        concurrency: args.concurrency,
        placement_per_sec: args.orders as f64 / placed_in.as_secs_f64(),
        placement_p50_ms: percentile(&mut latencies, 50.0),
        placement_p99_ms: percentile(&mut latencies, 99.0),
        journey_per_sec: timeline.len() as f64 / ((last - first) / 1000.0),
        to_confirmed_p50_ms: percentile(&mut confirmed, 50.0),
        to_confirmed_p95_ms: percentile(&mut confirmed, 95.0),
        to_confirmed_p99_ms: percentile(&mut confirmed, 99.0),
        to_shipment_p50_ms: percentile(&mut shipped, 50.0),
        to_shipment_p95_ms: percentile(&mut shipped, 95.0),
        to_shipment_p99_ms: percentile(&mut shipped, 99.0),
    }
}

pub(crate) async fn wait_for_shipments(
    conn: &DatabaseConnection,
    orders: usize,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let shipped = count(conn, "SELECT COUNT(*) FROM fulfillment.shipments").await?;
        if shipped as usize >= orders {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("only {shipped} of {orders} orders reached a shipment in time");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The monolith on PostgreSQL with the in-process bus.
pub(crate) async fn monolith(args: &BenchArgs) -> anyhow::Result<Report> {
    loopback_only(&args.pg_host)?;
    let database = format!("bench_monolith_{}", std::process::id());
    create_database(&args.pg_host, args.pg_port, &database).await?;
    let result = async {
        let (process, port) = spawn("app", &pg_vars(args, &database))?;
        let client = crate::harness::client_builder()?
            .pool_max_idle_per_host(args.concurrency)
            .build()?;
        wait_ready(&client, port).await?;
        let stock = (args.orders / args.products + 10) as i64;
        let skus = seed(&client, port, port, args.products, stock).await?;
        let (latencies, placed_in) =
            place_orders(&client, port, &skus, args.orders, args.concurrency).await?;
        let conn = Database::connect(format!(
            "postgres://postgres@{}:{}/{database}",
            args.pg_host, args.pg_port
        ))
        .await?;
        wait_for_shipments(&conn, args.orders, Duration::from_secs(args.timeout_secs)).await?;
        let timeline = timeline(&conn, &conn).await?;
        drop(process);
        Ok(report("monolith", args, latencies, placed_in, &timeline))
    }
    .await;
    drop_database(&args.pg_host, args.pg_port, &database).await;
    result
}

/// A line of the report: its label, and how to read it off a run.
type Row = (&'static str, fn(&Report) -> f64);

pub(crate) fn print(reports: &[Report]) {
    let rows: [Row; 10] = [
        ("placement, orders/s", |r: &Report| r.placement_per_sec),
        ("placement p50, ms", |r: &Report| r.placement_p50_ms),
        ("placement p99, ms", |r: &Report| r.placement_p99_ms),
        (
            "journey (placed → shipment created), orders/s",
            |r: &Report| r.journey_per_sec,
        ),
        ("placement → confirmed p50, ms", |r: &Report| {
            r.to_confirmed_p50_ms
        }),
        ("placement → confirmed p95, ms", |r: &Report| {
            r.to_confirmed_p95_ms
        }),
        ("placement → confirmed p99, ms", |r: &Report| {
            r.to_confirmed_p99_ms
        }),
        ("placement → shipment p50, ms", |r: &Report| {
            r.to_shipment_p50_ms
        }),
        ("placement → shipment p95, ms", |r: &Report| {
            r.to_shipment_p95_ms
        }),
        ("placement → shipment p99, ms", |r: &Report| {
            r.to_shipment_p99_ms
        }),
    ];
    let mut out = format!("{:<48}", "");
    for r in reports {
        out.push_str(&format!("{:>14}", r.topology));
    }
    out.push('\n');
    for (label, value) in rows {
        out.push_str(&format!("{label:<48}"));
        for r in reports {
            out.push_str(&format!("{:>14.1}", value(r)));
        }
        out.push('\n');
    }
    eprint!("{out}");
    if let Ok(json) = serde_json::to_string_pretty(reports) {
        eprintln!("{json}");
    }
}

/// fulfillment as a service of its own, generated by `cargo xtask extract` in a scratch copy
/// of this workspace; the monolith runs catalog and checkout; Redis Streams between them.
pub(crate) async fn extracted(args: &BenchArgs) -> anyhow::Result<Report> {
    loopback_only(&args.pg_host)?;
    let (scratch, service_binary) = crate::harness::extracted_service(args.no_build)?;
    let (monolith_db, service_db) = (
        format!("bench_mono_{}", std::process::id()),
        format!("bench_ful_{}", std::process::id()),
    );
    for db in [&monolith_db, &service_db] {
        create_database(&args.pg_host, args.pg_port, db).await?;
    }
    let namespace = format!("bench-{}", std::process::id());
    let result = async {
        let mut mono_vars = pg_vars(args, &monolith_db);
        mono_vars.extend([
            (
                "APP__MODULES__ENABLED".to_owned(),
                "catalog,checkout".to_owned(),
            ),
            ("APP__BUS__KIND".to_owned(), "redis".to_owned()),
            ("APP__BUS__REDIS__NAMESPACE".to_owned(), namespace.clone()),
            ("APP__BUS__INSTANCE".to_owned(), "bench-monolith".to_owned()),
        ]);
        let mut svc_vars = pg_vars(args, &service_db);
        svc_vars.extend([
            ("APP__BUS__REDIS__NAMESPACE".to_owned(), namespace.clone()),
            (
                "APP__BUS__INSTANCE".to_owned(),
                "bench-fulfillment".to_owned(),
            ),
        ]);
        let (monolith, port) = spawn("app", &mono_vars)?;
        let (service, service_port) = spawn_at(&service_binary, scratch.path(), &svc_vars)?;
        let client = crate::harness::client_builder()?
            .pool_max_idle_per_host(args.concurrency)
            .build()?;
        wait_ready(&client, port).await?;
        wait_ready(&client, service_port).await?;
        let stock = (args.orders / args.products + 10) as i64;
        let skus = seed(&client, port, port, args.products, stock).await?;
        let (latencies, placed_in) =
            place_orders(&client, port, &skus, args.orders, args.concurrency).await?;
        let url = |db: &str| format!("postgres://postgres@{}:{}/{db}", args.pg_host, args.pg_port);
        let checkout = Database::connect(url(&monolith_db)).await?;
        let fulfillment = Database::connect(url(&service_db)).await?;
        wait_for_shipments(
            &fulfillment,
            args.orders,
            Duration::from_secs(args.timeout_secs),
        )
        .await?;
        let timeline = timeline(&checkout, &fulfillment).await?;
        drop(service);
        drop(monolith);
        Ok(report("extracted", args, latencies, placed_in, &timeline))
    }
    .await;
    for db in [&monolith_db, &service_db] {
        drop_database(&args.pg_host, args.pg_port, db).await;
    }
    crate::harness::clear_namespace("redis://127.0.0.1:6379/0", &namespace).await;
    result
}
