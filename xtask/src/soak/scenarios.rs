//! The scenarios: what each injects, and the checks of its own it adds to the audit.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use sea_orm::{ConnectionTrait, Database, TransactionTrait};
use serde_json::json;

use super::load::{self, Outcome, normalize_id};
use super::{Ctx, Deployment, Loader, RunReport, Scenario, Shape, Store};
use crate::harness::{self, percentile, wait_ready_within};

/// What a scenario injects, in a sentence, and the shape it needs.
fn describe(ctx: &Ctx, scenario: Scenario, shape: Shape) -> (&'static str, String, Shape) {
    let a = &ctx.args;
    let mut shape = shape;
    let (name, injected) = match scenario {
        Scenario::Soak | Scenario::All => {
            shape.extracted = a.extracted;
            (
                "soak",
                match a.connections {
                    Some(n) => format!(
                        "nothing: {n} clients placing orders back to back for {} s",
                        a.secs
                    ),
                    None => format!("nothing: {} orders/s for {} s", a.rate, a.secs),
                },
            )
        }
        Scenario::PgRestart => {
            shape.private_pg = true;
            (
                "pg-restart",
                format!(
                    "a private PostgreSQL stopped (fast shutdown) for {} s under {} orders/s, then started again",
                    a.pg_outage_secs, a.rate
                ),
            )
        }
        Scenario::RedisOutage => {
            shape.private_redis = true;
            shape.extracted = !a.redis_outage_monolith;
            (
                "redis-outage",
                format!(
                    "a private Redis killed (SIGKILL, append-only file on) for {} s under {} orders/s, then started again",
                    a.redis_outage_secs, a.rate
                ),
            )
        }
        Scenario::Sigkill => (
            "sigkill",
            format!(
                "the monolith killed with SIGKILL under {} orders/s, restarted at once on the same database",
                a.rate
            ),
        ),
        Scenario::ReplicaKill => {
            shape.instances = 2;
            shape.lease_ms = Some(5000);
            (
                "replica-kill",
                format!(
                    "two instances (lease 5 s) under {} orders/s; one SIGKILLed while it held claimed deliveries, never restarted",
                    a.rate
                ),
            )
        }
        Scenario::SlowModule => (
            "slow-module",
            format!(
                "fulfillment's handler stalled for {} s (the harness holds a lock on fulfillment.shipments) under {} orders/s and {} product reads/s",
                a.phase_secs, a.rate, a.read_rate
            ),
        ),
        Scenario::PaymentOutage => {
            shape.fake_provider = true;
            (
                "payment-outage",
                format!(
                    "checkout on the HTTP payment adapter; the fake provider (127.0.0.1) answers every call 503 for {} s under {} orders/s, then recovers",
                    a.payment_outage_secs, a.rate
                ),
            )
        }
        Scenario::Races => (
            "races",
            format!(
                "40 concurrent reprices of one sku; {} orders whose cancel and dispatch are sent at the same instant",
                a.race_orders
            ),
        ),
    };
    (name, injected, shape)
}

/// Runs one scenario on a fresh deployment and returns its report.
pub(crate) async fn run(ctx: &Ctx, scenario: Scenario, shape: Shape) -> RunReport {
    let (name, injected, shape) = describe(ctx, scenario, shape);
    let mut report = RunReport::new(name, &shape.variant(), &injected);
    let mut d = match ctx.deploy(shape).await {
        Ok(d) => d,
        Err(e) => {
            report.check("the deployment started", false, format!("{e:#}"));
            return report;
        }
    };
    let outcome = match scenario {
        Scenario::Soak | Scenario::All => soak(ctx, &mut d, &mut report).await,
        Scenario::PgRestart => pg_restart(ctx, &mut d, &mut report).await,
        Scenario::RedisOutage => redis_outage(ctx, &mut d, &mut report).await,
        Scenario::Sigkill => sigkill(ctx, &mut d, &mut report).await,
        Scenario::ReplicaKill => replica_kill(ctx, &mut d, &mut report).await,
        Scenario::SlowModule => slow_module(ctx, &mut d, &mut report).await,
        Scenario::Races => races(ctx, &mut d, &mut report).await,
        Scenario::PaymentOutage => payment_outage(ctx, &mut d, &mut report).await,
    };
    if let Err(e) = outcome {
        report.check("the scenario ran to its end", false, format!("{e:#}"));
    }
    report.passed = report.checks.iter().all(|c| c.ok);
    let keep = ctx.args.keep || !report.passed;
    report.run_dir = d.tear_down(keep).await;
    report
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// The ports that take orders: every node, but an extracted fulfillment service (it has
/// no placement route).
fn ports(d: &Deployment) -> Vec<u16> {
    d.nodes
        .iter()
        .filter(|n| n.name != super::SERVICE_NODE)
        .map(|n| n.port)
        .collect()
}

/// Stops the load, drains, audits; `fault_end` is when the injection ended.
async fn finish(
    ctx: &Ctx,
    d: &mut Deployment,
    report: &mut RunReport,
    loader: Loader,
    fault_end: Instant,
) -> anyhow::Result<load::Run> {
    let t0 = loader.started;
    let (run, load_secs) = loader.finish().await?;
    report.record_load(&run, load_secs);
    let accepted = run.accepted();
    d.drain(report, accepted.len(), fault_end, secs(ctx.args.drain_secs))
        .await;
    d.audit(report, &accepted).await?;
    let after = fault_end.duration_since(t0).as_secs_f64();
    report.notes.push(format!(
        "{} orders accepted after the fault ended; achieved {:.0} orders/s accepted",
        run.outcomes
            .iter()
            .filter(|o| o.status == 201 && o.at > after)
            .count(),
        accepted.len() as f64 / load_secs.max(0.001)
    ));
    Ok(run)
}

/// Whether orders were accepted again after `from` (seconds since the load began).
fn accepted_after(report: &mut RunReport, run: &load::Run, from: f64) {
    let n = run
        .outcomes
        .iter()
        .filter(|o| o.status == 201 && o.at > from)
        .count();
    report.check(
        "orders accepted again after the fault, without intervention",
        n > 0,
        format!("{n} placements answered 201 after the fault ended"),
    );
}

async fn soak(ctx: &Ctx, d: &mut Deployment, report: &mut RunReport) -> anyhow::Result<()> {
    let loader = Loader::start(
        ctx,
        d.plan(ports(d), Instant::now()),
        f64::from(ctx.args.rate),
    );
    tokio::time::sleep(secs(ctx.args.secs)).await;
    let t0 = loader.started;
    let (run, load_secs) = loader.finish().await?;
    let stopped = Instant::now();
    report.record_load(&run, load_secs);
    let accepted = run.accepted();
    report.notes.push(format!(
        "achieved {:.0} orders/s accepted over {:.0} s",
        accepted.len() as f64 / load_secs.max(0.001),
        stopped.duration_since(t0).as_secs_f64()
    ));
    d.drain(report, accepted.len(), stopped, secs(ctx.args.drain_secs))
        .await;
    d.audit(report, &accepted).await
}

/// Polls `/readyz` every 250 ms for `length`; counts the answers per status (0: none).
async fn readiness_during(
    client: &reqwest::Client,
    port: u16,
    length: Duration,
) -> BTreeMap<u16, usize> {
    let mut seen = BTreeMap::new();
    let end = Instant::now() + length;
    while Instant::now() < end {
        let status = client
            .get(format!("http://127.0.0.1:{port}/readyz"))
            .timeout(Duration::from_secs(3))
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0);
        *seen.entry(status).or_default() += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    seen
}

fn show(counts: &BTreeMap<u16, usize>) -> String {
    counts
        .iter()
        .map(|(s, n)| {
            if *s == 0 {
                format!("{n} × no answer")
            } else {
                format!("{n} × {s}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

async fn pg_restart(ctx: &Ctx, d: &mut Deployment, report: &mut RunReport) -> anyhow::Result<()> {
    let port = d.nodes[0].port;
    let loader = Loader::start(
        ctx,
        d.plan(ports(d), Instant::now()),
        f64::from(ctx.args.rate),
    );
    tokio::time::sleep(secs(ctx.args.warmup_secs)).await;
    let pg =
        d.pg.as_ref()
            .context("pg-restart needs its private PostgreSQL")?;
    pg.stop()?;
    let readiness = readiness_during(&ctx.client, port, secs(ctx.args.pg_outage_secs)).await;
    pg.start()?;
    let fault_end = Instant::now();
    let back = wait_ready_within(&ctx.client, port, secs(60)).await;
    report.check(
        "readiness reported the outage",
        readiness.get(&503).copied().unwrap_or(0) > 0 && !readiness.contains_key(&200),
        format!("/readyz while PostgreSQL was down: {}", show(&readiness)),
    );
    report.check(
        "ready again after the restart",
        back.is_ok(),
        format!(
            "ready {:.1} s after PostgreSQL was back",
            fault_end.elapsed().as_secs_f64()
        ),
    );
    tokio::time::sleep(secs(ctx.args.after_secs)).await;
    let t0 = loader.started;
    let run = finish(ctx, d, report, loader, fault_end).await?;
    accepted_after(report, &run, fault_end.duration_since(t0).as_secs_f64());
    Ok(())
}

async fn redis_outage(ctx: &Ctx, d: &mut Deployment, report: &mut RunReport) -> anyhow::Result<()> {
    let port = d.nodes[0].port;
    // Orders go to the monolith only (the extracted service has no placement route).
    let loader = Loader::start(
        ctx,
        d.plan(vec![port], Instant::now()),
        f64::from(ctx.args.rate),
    );
    let t0 = loader.started;
    tokio::time::sleep(secs(ctx.args.warmup_secs)).await;
    let redis = d
        .redis
        .as_mut()
        .context("redis-outage needs its private Redis")?;
    redis.kill();
    let down = t0.elapsed().as_secs_f64();
    let readiness = readiness_during(&ctx.client, port, secs(ctx.args.redis_outage_secs)).await;
    redis.start()?;
    let fault_end = Instant::now();
    let up = fault_end.duration_since(t0).as_secs_f64();
    report.notes.push(format!(
        "the monolith's /readyz while Redis was down: {}",
        show(&readiness)
    ));
    tokio::time::sleep(secs(ctx.args.after_secs)).await;
    let run = finish(ctx, d, report, loader, fault_end).await?;
    let during: Vec<&Outcome> = run
        .outcomes
        .iter()
        .filter(|o| o.at >= down && o.at < up)
        .collect();
    let ok = during.iter().filter(|o| o.status == 201).count();
    let mut statuses = BTreeMap::new();
    for o in &during {
        *statuses.entry(o.status).or_insert(0) += 1;
    }
    report.check(
        "the monolith kept answering 201 while Redis was down",
        !during.is_empty() && ok == during.len(),
        format!(
            "{ok} of {} placements during the outage answered 201 ({})",
            during.len(),
            show(&statuses)
        ),
    );
    accepted_after(report, &run, up);
    Ok(())
}

/// Deliveries an instance holds: claimed queue rows (in-process bus) or pending stream
/// entries (Redis).
async fn held_by(d: &Deployment, instance: &str) -> anyhow::Result<i64> {
    if let Some(streams) = &d.streams {
        return Ok(streams.pending_of(instance).await? as i64);
    }
    let mut held = 0;
    for m in &d.dbs.0 {
        held += m
            .count(format!(
                "SELECT COUNT(*) FROM {} WHERE locked_by LIKE '%{instance}%'",
                m.table("bus_queue")
            ))
            .await?;
    }
    Ok(held)
}

async fn sigkill(ctx: &Ctx, d: &mut Deployment, report: &mut RunReport) -> anyhow::Result<()> {
    let loader = Loader::start(
        ctx,
        d.plan(ports(d), Instant::now()),
        f64::from(ctx.args.rate),
    );
    let t0 = loader.started;
    tokio::time::sleep(secs(ctx.args.warmup_secs)).await;
    let held = held_by(d, "soak-a").await.unwrap_or(-1);
    let node = &mut d.nodes[0];
    node.kill();
    let killed = Instant::now();
    node.start()?;
    let back = wait_ready_within(&ctx.client, node.port, secs(90)).await;
    let fault_end = Instant::now();
    report.check(
        "the killed monolith restarted on the same database",
        back.is_ok(),
        format!(
            "ready {:.1} s after the kill (it held {held} claimed deliveries when killed)",
            killed.elapsed().as_secs_f64()
        ),
    );
    tokio::time::sleep(secs(ctx.args.after_secs)).await;
    let run = finish(ctx, d, report, loader, fault_end).await?;
    accepted_after(report, &run, fault_end.duration_since(t0).as_secs_f64());
    Ok(())
}

async fn replica_kill(ctx: &Ctx, d: &mut Deployment, report: &mut RunReport) -> anyhow::Result<()> {
    let plan = d.plan(ports(d), Instant::now());
    let targets = plan.ports.clone();
    let loader = Loader::start(ctx, plan, f64::from(ctx.args.rate));
    tokio::time::sleep(secs(ctx.args.warmup_secs)).await;
    // Kill it at an instant it holds work, so the other must take that work over.
    let deadline = Instant::now() + secs(15);
    let mut held = 0;
    while Instant::now() < deadline {
        held = held_by(d, "soak-a").await.unwrap_or(0);
        if held > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let victim = d.nodes[0].port;
    d.nodes[0].kill();
    let fault_end = Instant::now();
    targets
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|p| *p != victim);
    report.check(
        "the killed instance held work when it died",
        held > 0,
        format!("soak-a held {held} claimed deliveries at the kill"),
    );
    tokio::time::sleep(secs(ctx.args.after_secs)).await;
    let run = finish(ctx, d, report, loader, fault_end).await?;
    let left = held_by(d, "soak-a").await.unwrap_or(-1);
    report.check(
        "the survivor took over the dead instance's work",
        left == 0,
        format!("{left} deliveries still claimed by the dead instance after the drain"),
    );
    let _ = run;
    Ok(())
}

/// A p99 is unmoved if it did not more than double and grew by less than 50 ms: loose
/// enough for a shared two-core machine, tight enough to catch a route that waits for the
/// slowed module (that would add seconds).
fn unmoved(base: f64, slow: f64) -> bool {
    slow <= (2.0 * base).max(base + 50.0)
}

async fn slow_module(ctx: &Ctx, d: &mut Deployment, report: &mut RunReport) -> anyhow::Result<()> {
    let Store::Postgres {
        host,
        port,
        database,
    } = &d.store
    else {
        bail!("slow-module runs on PostgreSQL (it stalls the handler with a row lock)");
    };
    let url = format!("postgres://postgres@{host}:{port}/{database}");
    let phase = secs(ctx.args.phase_secs);
    let app = d.nodes[0].port;
    let loader = Loader::start(
        ctx,
        d.plan(ports(d), Instant::now()),
        f64::from(ctx.args.rate),
    );
    let t0 = loader.started;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reads = {
        let client = ctx.client.clone();
        let skus = d.skus.clone();
        let stop = stop.clone();
        let rate = f64::from(ctx.args.read_rate);
        let max = ctx.args.max_in_flight;
        tokio::spawn(async move {
            load::open_loop(rate, t0 + secs(1800), stop, max, move |i| {
                load::read_product(&client, app, &skus[i % skus.len()], t0)
            })
            .await
        })
    };
    tokio::time::sleep(phase).await;
    let fulfillment = d.dbs.module("fulfillment");
    let checkout = d.dbs.module("checkout");
    let shipments = format!("SELECT COUNT(*) FROM {}", fulfillment.table("shipments"));
    let confirmed = format!(
        "SELECT COUNT(*) FROM {} WHERE status <> 'pending'",
        checkout.table("orders")
    );
    let holder = Database::connect(url).await?;
    let tx = holder.begin().await?;
    // Every shipment insert now waits: fulfillment's handler takes as long as the lock.
    tx.execute_unprepared("LOCK TABLE fulfillment.shipments IN EXCLUSIVE MODE")
        .await?;
    let locked_at = t0.elapsed().as_secs_f64();
    let (ships_before, decided_before) = (
        fulfillment.count(shipments.clone()).await?,
        checkout.count(confirmed.clone()).await?,
    );
    tokio::time::sleep(phase).await;
    let (ships_after, decided_after) = (
        fulfillment.count(shipments).await?,
        checkout.count(confirmed).await?,
    );
    let unlocked_at = t0.elapsed().as_secs_f64();
    tx.commit().await?;
    let fault_end = Instant::now();
    holder.close().await?;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let reads = reads.await?;
    report.check(
        "the injected slowness took effect",
        ships_after == ships_before && decided_after > decided_before,
        format!(
            "while stalled, fulfillment created {} shipments and checkout decided {} orders",
            ships_after - ships_before,
            decided_after - decided_before
        ),
    );
    let run = finish(ctx, d, report, loader, fault_end).await?;
    // The first second of each phase is left out: it holds the switch.
    let base = (1.0, locked_at);
    let slow = (locked_at + 1.0, unlocked_at);
    for (what, run, ok) in [("product reads", &reads, 200), ("placements", &run, 201)] {
        let mut b = run.latencies(ok, base.0, base.1);
        let mut s = run.latencies(ok, slow.0, slow.1);
        let (pb, ps) = (percentile(&mut b, 99.0), percentile(&mut s, 99.0));
        report.check(
            &format!("{what}' p99 unmoved by the slow module"),
            !b.is_empty() && !s.is_empty() && unmoved(pb, ps),
            format!(
                "p99 {pb:.1} ms over {} requests before, {ps:.1} ms over {} while fulfillment was stalled (bound: max(2×, +50 ms))",
                b.len(),
                s.len()
            ),
        );
        let failed = run
            .outcomes
            .iter()
            .filter(|o| o.at >= slow.0 && o.at < slow.1 && o.status != ok)
            .count();
        report.check(
            &format!("{what} kept succeeding while the module was slow"),
            failed == 0,
            format!("{failed} {what} failed while fulfillment was stalled"),
        );
    }
    Ok(())
}

async fn races(ctx: &Ctx, d: &mut Deployment, report: &mut RunReport) -> anyhow::Result<()> {
    let port = d.nodes[0].port;
    let client = &ctx.client;
    let base = format!("http://127.0.0.1:{port}");
    let mut accepted = Vec::new();

    // Concurrent reprices of one sku.
    let sku = "RACE-PRICE".to_owned();
    harness::create_products(client, port, std::slice::from_ref(&sku), 1000).await?;
    d.on_hand.insert(sku.clone(), 1000);
    harness::wait_priced(client, port, std::slice::from_ref(&sku), secs(60)).await?;
    let reprices = futures::future::join_all((0..40).map(|i| {
        let client = client.clone();
        let url = format!("{base}/api/catalog/products/{sku}");
        async move {
            client
                .patch(url)
                .json(&json!({"price_minor": 101 + i}))
                .timeout(secs(30))
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        }
    }))
    .await;
    let changed = reprices.iter().filter(|s| **s == 200).count() as i64;
    let catalog = d.dbs.module("catalog");
    let checkout = d.dbs.module("checkout");
    let rows = catalog
        .rows(format!(
            "SELECT price_minor, version FROM {} WHERE sku = '{sku}'",
            catalog.table("products")
        ))
        .await?;
    let row = rows.first().context("the repriced product is gone")?;
    let (price, version): (i64, i64) = (row.try_get_by_index(0)?, row.try_get_by_index(1)?);
    report.check(
        "every reprice bumped the version",
        version == 1 + changed,
        format!(
            "{changed} reprices answered 200 ({} other), catalog's version is {version} (expected {})",
            reprices.len() as i64 - changed,
            1 + changed
        ),
    );
    let deadline = Instant::now() + secs(30);
    let seen = loop {
        let rows = checkout
            .rows(format!(
                "SELECT price_minor, version FROM {} WHERE sku = '{sku}'",
                checkout.table("prices")
            ))
            .await?;
        let seen: Option<(i64, i64)> = match rows.first() {
            Some(r) => Some((r.try_get_by_index(0)?, r.try_get_by_index(1)?)),
            None => None,
        };
        if seen == Some((price, version)) || Instant::now() > deadline {
            break seen;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let order = client
        .post(format!("{base}/api/checkout/orders"))
        .json(&harness::order_body(0, &sku, 2, "tok_visa"))
        .send()
        .await?;
    anyhow::ensure!(
        order.status().as_u16() == 201,
        "placing an order: {}",
        order.status()
    );
    let order: serde_json::Value = order.json().await?;
    accepted.extend(order["id"].as_str().map(normalize_id));
    let charged = order["total_minor"].as_i64().unwrap_or(-1);
    report.check(
        "checkout ends with the final price",
        seen == Some((price, version)) && charged == 2 * price,
        format!(
            "catalog: {price} at version {version}; checkout's copy after 30 s at most: {seen:?}; an order of 2 was charged {charged}"
        ),
    );

    // Cancels crossing dispatches: each confirmed order gets both at the same instant.
    let mut orders = Vec::new();
    for i in 0..ctx.args.race_orders {
        let sku = &d.skus[i % d.skus.len()];
        let r = client
            .post(format!("{base}/api/checkout/orders"))
            .json(&harness::order_body(i, sku, 1, "tok_visa"))
            .send()
            .await?;
        anyhow::ensure!(
            r.status().as_u16() == 201,
            "placing an order: {}",
            r.status()
        );
        let body: serde_json::Value = r.json().await?;
        let id = body["id"]
            .as_str()
            .context("an order without id")?
            .to_owned();
        accepted.push(normalize_id(&id));
        orders.push(id);
    }
    let deadline = Instant::now() + secs(60);
    let mut shipments = HashMap::new();
    for id in &orders {
        loop {
            let list: serde_json::Value = client
                .get(format!("{base}/api/fulfillment/shipments?order_id={id}"))
                .send()
                .await?
                .json()
                .await?;
            if let Some(s) = list["items"][0]["id"].as_str() {
                shipments.insert(id.clone(), s.to_owned());
                break;
            }
            if Instant::now() > deadline {
                bail!("order {id} got no shipment within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let outcomes = Arc::new(Mutex::new(Vec::new()));
    futures::future::join_all(orders.iter().map(|id| {
        let client = client.clone();
        let cancel = format!("{base}/api/checkout/orders/{id}/cancel");
        let dispatch = format!(
            "{base}/api/fulfillment/shipments/{}/dispatch",
            shipments[id]
        );
        let outcomes = outcomes.clone();
        let id = id.clone();
        async move {
            let status = |r: Result<reqwest::Response, reqwest::Error>| {
                r.map(|r| r.status().as_u16()).unwrap_or(0)
            };
            let (c, s) = tokio::join!(
                client.post(cancel).timeout(secs(30)).send(),
                client.post(dispatch).timeout(secs(30)).send()
            );
            outcomes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((id, status(c), status(s)));
        }
    }))
    .await;
    let outcomes = std::mem::take(&mut *outcomes.lock().unwrap_or_else(|e| e.into_inner()));
    report.sent = accepted.len();
    report.accepted = accepted.len();
    let stopped = Instant::now();
    d.drain(report, accepted.len(), stopped, secs(ctx.args.drain_secs))
        .await;
    d.audit(report, &accepted).await?;

    let orders_now = super::audit::order_statuses(d.dbs.module("checkout")).await?;
    let fulfillment = d.dbs.module("fulfillment");
    let mut shipped_now: HashMap<String, String> = HashMap::new();
    for row in fulfillment
        .rows(format!(
            "SELECT {}, status FROM {}",
            fulfillment.id("order_id"),
            fulfillment.table("shipments")
        ))
        .await?
    {
        shipped_now.insert(row.try_get_by_index(0)?, row.try_get_by_index(1)?);
    }
    let (mut dispatch_won, mut cancel_won, mut crossed, mut wrong) = (0, 0, 0, Vec::new());
    for (id, cancel, dispatch) in &outcomes {
        let key = normalize_id(id);
        let order = orders_now.get(&key).map_or("?", String::as_str);
        let shipment = shipped_now.get(&key).map_or("?", String::as_str);
        let consistent = match dispatch {
            200 => {
                dispatch_won += 1;
                crossed += usize::from(*cancel == 200);
                order == "shipped" && shipment == "dispatched"
            }
            409 => {
                cancel_won += 1;
                *cancel == 200 && order == "cancelled" && shipment == "cancelled"
            }
            _ => false,
        };
        if !consistent {
            wrong.push(format!(
                "{id}: cancel {cancel}, dispatch {dispatch}, order {order}, shipment {shipment}"
            ));
        }
    }
    report.check(
        "every cancel/dispatch race ends consistent",
        wrong.is_empty(),
        format!(
            "{} races: dispatch won {dispatch_won} (of which {crossed} after checkout had accepted the cancel), cancel won {cancel_won}, {} inconsistent{}",
            outcomes.len(),
            wrong.len(),
            if wrong.is_empty() {
                String::new()
            } else {
                format!(": {}", wrong.iter().take(5).cloned().collect::<Vec<_>>().join("; "))
            }
        ),
    );
    Ok(())
}

/// The sum of the series of `name` whose labels include `label` (`to="open"`), from a
/// node's `/metrics`.
async fn metric(
    client: &reqwest::Client,
    admin_port: u16,
    name: &str,
    label: &str,
) -> anyhow::Result<f64> {
    let text = client
        .get(format!("http://127.0.0.1:{admin_port}/metrics"))
        .timeout(Duration::from_secs(5))
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    Ok(text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(series, _)| series.split('{').next() == Some(name) && series.contains(label))
        .filter_map(|(_, value)| value.trim().parse::<f64>().ok())
        .sum())
}

/// Checkout pays through its HTTP adapter; the provider goes down (503 on every call)
/// for `--payment-outage-secs` while orders flow, then recovers. Besides the audit (every
/// order ends, stock adds up, nothing dead-lettered): no order is declined but those paid
/// with `tok_decline`, orders placed during the outage are confirmed after it, and the
/// circuit breaker opened and closed again (its transitions on `/metrics`).
async fn payment_outage(
    ctx: &Ctx,
    d: &mut Deployment,
    report: &mut RunReport,
) -> anyhow::Result<()> {
    let admin = d.nodes[0].admin_port;
    let transitions = |to: &'static str| {
        let client = ctx.client.clone();
        async move {
            metric(
                &client,
                admin,
                "payment_circuit_breaker_transitions_total",
                &format!("to=\"{to}\""),
            )
            .await
        }
    };
    let loader = Loader::start(
        ctx,
        d.plan(ports(d), Instant::now()),
        f64::from(ctx.args.rate),
    );
    let t0 = loader.started;
    tokio::time::sleep(secs(ctx.args.warmup_secs)).await;
    let (opened0, closed0) = (transitions("open").await?, transitions("closed").await?);
    let provider = d
        .provider
        .as_ref()
        .context("payment-outage needs its fake provider")?;
    provider.set_down(true);
    let tally = provider.tally.clone();
    let down = t0.elapsed().as_secs_f64();
    // The breaker's state, seen every 250 ms while the provider is down.
    let mut open_seen = 0;
    let end = Instant::now() + secs(ctx.args.payment_outage_secs);
    while Instant::now() < end {
        let open = metric(
            &ctx.client,
            admin,
            "payment_circuit_breaker_state",
            "state=\"open\"",
        )
        .await
        .unwrap_or(0.0);
        if open >= 1.0 {
            open_seen += 1;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    if let Some(provider) = &d.provider {
        provider.set_down(false);
    }
    let fault_end = Instant::now();
    let up = fault_end.duration_since(t0).as_secs_f64();
    let refused = tally.refused.load(std::sync::atomic::Ordering::Relaxed);
    tokio::time::sleep(secs(ctx.args.after_secs)).await;
    let run = finish(ctx, d, report, loader, fault_end).await?;
    accepted_after(report, &run, up);

    report.check(
        "the provider was down and refused calls",
        refused > 0,
        format!("{refused} calls answered 503 during the outage"),
    );
    // Every order's end, from checkout's own table.
    let checkout = d
        .dbs
        .0
        .iter()
        .find(|m| m.module == "checkout")
        .context("checkout's database")?;
    let rows = checkout
        .rows(format!(
            "SELECT {} AS id, status, COALESCE(status_reason, '') AS reason, payment_token FROM {}",
            checkout.id("id"),
            checkout.table("orders")
        ))
        .await?;
    let mut orders: HashMap<String, (String, String, String)> = HashMap::new();
    for row in rows {
        orders.insert(
            row.try_get("", "id")?,
            (
                row.try_get("", "status")?,
                row.try_get("", "reason")?,
                row.try_get("", "payment_token")?,
            ),
        );
    }
    let declined = |(_, reason, _): &&(String, String, String)| reason == "payment_declined";
    let wrongly: Vec<&String> = orders
        .iter()
        .filter(|(_, o)| declined(o) && o.2 != "tok_decline")
        .map(|(id, _)| id)
        .collect();
    let rightly = orders
        .values()
        .filter(|o| declined(o) && o.2 == "tok_decline")
        .count();
    report.check(
        "no order declined but those paid with tok_decline",
        wrongly.is_empty() && rightly > 0,
        format!(
            "{rightly} orders declined with tok_decline (the provider declined {} keys); {} others declined{}",
            tally.declined_keys(),
            wrongly.len(),
            wrongly
                .first()
                .map_or(String::new(), |id| format!(", such as {id}"))
        ),
    );
    // Orders placed while the provider was down: the customer's card was good, so each
    // ends confirmed (or further), unless its customer cancelled it or stock ran out.
    let during: Vec<&(String, String, String)> = run
        .outcomes
        .iter()
        .filter(|o| o.status == 201 && o.at >= down && o.at < up)
        .filter_map(|o| orders.get(o.order_id.as_deref()?))
        .filter(|o| o.2 == "tok_visa")
        .collect();
    let paid = during
        .iter()
        .filter(|o| ["confirmed", "shipped", "delivered"].contains(&o.0.as_str()))
        .count();
    let otherwise: BTreeMap<String, usize> = during
        .iter()
        .filter(|o| !["confirmed", "shipped", "delivered"].contains(&o.0.as_str()))
        .fold(BTreeMap::new(), |mut m, o| {
            *m.entry(format!("{} {}", o.0, o.1)).or_default() += 1;
            m
        });
    let unexplained: usize = otherwise
        .iter()
        .filter(|(k, _)| !(k.starts_with("cancelled") || k.ends_with("out_of_stock")))
        .map(|(_, n)| n)
        .sum();
    report.check(
        "orders placed during the outage were paid once it ended",
        paid > 0 && unexplained == 0,
        format!(
            "{} placed with a good card during the outage: {paid} confirmed or further; others: {otherwise:?}",
            during.len()
        ),
    );
    let (opened, closed) = (
        transitions("open").await? - opened0,
        transitions("closed").await? - closed0,
    );
    let closed_now = metric(
        &ctx.client,
        admin,
        "payment_circuit_breaker_state",
        "state=\"closed\"",
    )
    .await?;
    report.check(
        "the circuit breaker opened during the outage and closed after it",
        opened >= 1.0 && closed >= 1.0 && closed_now >= 1.0,
        format!(
            "from /metrics: opened {opened} times, closed {closed} times since the outage began, closed now: {}; seen open in {open_seen} polls during the outage",
            closed_now >= 1.0
        ),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_p99_counts_as_unmoved_within_double_or_fifty_milliseconds() {
        assert!(unmoved(10.0, 55.0));
        assert!(unmoved(100.0, 200.0));
        assert!(!unmoved(10.0, 70.0));
        assert!(!unmoved(100.0, 2000.0));
    }
}
