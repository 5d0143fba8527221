//! The audit every soak scenario ends with. It reads each module's tables directly (not
//! the HTTP API, which could hide what it does not show) and checks the whole journey:
//! every accepted order reached an end, one live shipment per confirmed order, stock adds
//! up per sku, no dead letters, every outbox published, every queue and stream drained,
//! and each consumer handled every key's events in the order they were produced.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use anyhow::Context;
use sea_orm::{ConnectionTrait, Database, DatabaseBackend, DatabaseConnection, Statement};
use serde::Serialize;

pub(crate) const MODULES: [&str; 3] = ["catalog", "checkout", "fulfillment"];

/// Order statuses from which the journey goes no further by itself.
const FINAL: [&str; 4] = ["rejected", "cancelled", "shipped", "delivered"];
/// Orders that hold stock and have (or must get) a shipment.
const LIVE: [&str; 3] = ["confirmed", "shipped", "delivered"];

/// Where one module's tables are.
pub(crate) struct ModuleConn {
    pub(crate) module: &'static str,
    conn: DatabaseConnection,
    /// The schema to qualify table names with (PostgreSQL); SQLite has a file per module.
    schema: Option<&'static str>,
}

impl ModuleConn {
    pub(crate) fn table(&self, name: &str) -> String {
        match self.schema {
            Some(schema) => format!("{schema}.{name}"),
            None => name.to_owned(),
        }
    }

    /// An expression giving a UUID column as lowercase hex without dashes, whatever the
    /// backend stores (PostgreSQL: uuid; SQLite: 16-byte blob or text).
    pub(crate) fn id(&self, column: &str) -> String {
        match self.conn.get_database_backend() {
            DatabaseBackend::Postgres => format!("replace(CAST({column} AS text), '-', '')"),
            _ => format!(
                "CASE WHEN typeof({column}) = 'blob' THEN lower(hex({column})) \
                 ELSE lower(replace({column}, '-', '')) END"
            ),
        }
    }

    pub(crate) async fn rows(&self, sql: String) -> anyhow::Result<Vec<sea_orm::QueryResult>> {
        self.conn
            .query_all_raw(Statement::from_string(
                self.conn.get_database_backend(),
                sql.clone(),
            ))
            .await
            .with_context(|| format!("{}: {sql}", self.module))
    }

    pub(crate) async fn count(&self, sql: String) -> anyhow::Result<i64> {
        let rows = self.rows(sql).await?;
        let row = rows.first().context("no row")?;
        Ok(row.try_get_by_index::<i64>(0)?)
    }
}

/// The databases of a deployment under test.
pub(crate) struct Dbs(pub(crate) Vec<ModuleConn>);

/// Where a module's data lives.
#[derive(Clone, Debug)]
pub(crate) enum Place {
    /// A PostgreSQL database (as its superuser), the module in its own schema.
    Postgres { url: String },
    /// The folder of the module's SQLite file.
    Sqlite { dir: std::path::PathBuf },
}

impl Dbs {
    /// Opens each module's data; `place(module)` says where it is.
    pub(crate) async fn open(place: impl Fn(&str) -> Place) -> anyhow::Result<Self> {
        let mut out = Vec::new();
        for module in MODULES {
            let (url, schema) = match place(module) {
                Place::Postgres { url } => (url, Some(module)),
                Place::Sqlite { dir } => (
                    format!(
                        "sqlite://{}?mode=rw",
                        dir.join(format!("{module}.db")).display()
                    ),
                    None,
                ),
            };
            let mut options = sea_orm::ConnectOptions::new(url);
            options
                .max_connections(2)
                .sqlx_logging(false)
                .acquire_timeout(Duration::from_secs(5));
            let conn = Database::connect(options)
                .await
                .with_context(|| format!("opening {module}'s database for the audit"))?;
            out.push(ModuleConn {
                module,
                conn,
                schema,
            });
        }
        Ok(Self(out))
    }

    pub(crate) fn module(&self, name: &str) -> &ModuleConn {
        self.0
            .iter()
            .find(|m| m.module == name)
            .expect("every module is opened")
    }

    pub(crate) async fn close(self) {
        for m in self.0 {
            let _ = m.conn.close().await;
        }
    }
}

/// The Redis Streams a deployment uses, if any.
#[derive(Clone, Debug)]
pub(crate) struct Streams {
    pub(crate) url: String,
    pub(crate) namespace: String,
}

/// One consumer group's position on one stream.
#[derive(Debug, Serialize)]
pub(crate) struct GroupState {
    pub(crate) stream: String,
    pub(crate) group: String,
    pub(crate) pending: u64,
    /// The stream has entries past what this group has been handed.
    pub(crate) behind: bool,
}

fn parse_id(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

fn field<T: redis::FromRedisValue>(reply: &HashMap<String, redis::Value>, name: &str) -> Option<T> {
    reply
        .get(name)
        .and_then(|v| redis::from_redis_value(v.clone()).ok())
}

impl Streams {
    /// Every group of every stream of the namespace.
    pub(crate) async fn groups(&self) -> anyhow::Result<Vec<GroupState>> {
        let client = redis::Client::open(self.url.as_str())?;
        let mut conn = tokio::time::timeout(
            Duration::from_secs(3),
            client.get_multiplexed_async_connection(),
        )
        .await
        .context("Redis did not answer")??;
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}:stream:*", self.namespace))
            .query_async(&mut conn)
            .await?;
        let mut out = Vec::new();
        for stream in keys {
            let info: HashMap<String, redis::Value> = redis::cmd("XINFO")
                .arg("STREAM")
                .arg(&stream)
                .query_async(&mut conn)
                .await?;
            let last = parse_id(&field::<String>(&info, "last-generated-id").unwrap_or_default());
            let groups: Vec<HashMap<String, redis::Value>> = redis::cmd("XINFO")
                .arg("GROUPS")
                .arg(&stream)
                .query_async(&mut conn)
                .await?;
            for g in groups {
                let delivered =
                    parse_id(&field::<String>(&g, "last-delivered-id").unwrap_or_default());
                out.push(GroupState {
                    stream: stream.clone(),
                    group: field(&g, "name").unwrap_or_default(),
                    pending: field(&g, "pending").unwrap_or(0),
                    behind: delivered < last,
                });
            }
        }
        Ok(out)
    }

    /// Pending entries per consumer whose name contains `instance`, over every group.
    pub(crate) async fn pending_of(&self, instance: &str) -> anyhow::Result<u64> {
        let client = redis::Client::open(self.url.as_str())?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        let mut total = 0;
        for g in self.groups().await? {
            let consumers: Vec<HashMap<String, redis::Value>> = redis::cmd("XINFO")
                .arg("CONSUMERS")
                .arg(&g.stream)
                .arg(&g.group)
                .query_async(&mut conn)
                .await?;
            for c in consumers {
                let name: String = field(&c, "name").unwrap_or_default();
                if name.contains(instance) {
                    total += field::<u64>(&c, "pending").unwrap_or(0);
                }
            }
        }
        Ok(total)
    }
}

/// What is still to do: all zero (and every accepted order stored) means drained.
#[derive(Debug, Default, Clone, Serialize)]
pub(crate) struct Backlog {
    pub(crate) orders: i64,
    pub(crate) pending_orders: i64,
    pub(crate) live_orders: i64,
    pub(crate) live_shipments: i64,
    pub(crate) unpublished: i64,
    pub(crate) queued: i64,
    pub(crate) stream_pending: u64,
    pub(crate) streams_behind: usize,
}

impl Backlog {
    pub(crate) fn drained(&self, accepted: usize) -> bool {
        self.orders >= accepted as i64
            && self.pending_orders == 0
            && self.live_orders == self.live_shipments
            && self.unpublished == 0
            && self.queued == 0
            && self.stream_pending == 0
            && self.streams_behind == 0
    }
}

pub(crate) async fn backlog(dbs: &Dbs, streams: Option<&Streams>) -> anyhow::Result<Backlog> {
    let checkout = dbs.module("checkout");
    let fulfillment = dbs.module("fulfillment");
    let orders = checkout.table("orders");
    let mut b = Backlog {
        orders: checkout.count(format!("SELECT COUNT(*) FROM {orders}")).await?,
        pending_orders: checkout
            .count(format!(
                "SELECT COUNT(*) FROM {orders} WHERE status = 'pending'"
            ))
            .await?,
        live_orders: checkout
            .count(format!(
                "SELECT COUNT(*) FROM {orders} WHERE status IN ('confirmed', 'shipped', 'delivered')"
            ))
            .await?,
        live_shipments: fulfillment
            .count(format!(
                "SELECT COUNT(*) FROM {} WHERE status <> 'cancelled'",
                fulfillment.table("shipments")
            ))
            .await?,
        ..Backlog::default()
    };
    for m in &dbs.0 {
        b.unpublished += m
            .count(format!(
                "SELECT COUNT(*) FROM {} WHERE published_at IS NULL",
                m.table("outbox")
            ))
            .await?;
        b.queued += m
            .count(format!("SELECT COUNT(*) FROM {}", m.table("bus_queue")))
            .await?;
    }
    if let Some(streams) = streams {
        for g in streams.groups().await? {
            b.stream_pending += g.pending;
            b.streams_behind += usize::from(g.behind);
        }
    }
    Ok(b)
}

/// Polls the backlog until it is drained or `bound` has passed since `from`; returns how
/// long after `from` it drained, and the last backlog seen.
pub(crate) async fn wait_drained(
    dbs: &Dbs,
    streams: Option<&Streams>,
    accepted: usize,
    from: Instant,
    bound: Duration,
) -> (Option<Duration>, Backlog) {
    let mut last = Backlog::default();
    loop {
        // A database or Redis that is still coming back is only a slower drain.
        if let Ok(b) = backlog(dbs, streams).await {
            if b.drained(accepted) {
                return (Some(from.elapsed()), b);
            }
            last = b;
        }
        if from.elapsed() > bound {
            return (None, last);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// One named check and what it found.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Check {
    pub(crate) name: String,
    pub(crate) ok: bool,
    pub(crate) detail: String,
}

impl Check {
    pub(crate) fn new(name: &str, ok: bool, detail: impl Into<String>) -> Self {
        Self {
            name: name.to_owned(),
            ok,
            detail: detail.into(),
        }
    }
}

/// What the audit must expect from the scenario.
pub(crate) struct Expect<'a> {
    /// Ids of the orders answered 201 (normalized).
    pub(crate) accepted: &'a [String],
    /// Units each sku must have on hand (what was created and restocked).
    pub(crate) on_hand: &'a HashMap<String, i64>,
    /// Dead letters the scenario made on purpose.
    pub(crate) dead_letters: i64,
}

/// Shows up to five items of a list.
fn sample<T: std::fmt::Display>(items: &[T]) -> String {
    let shown: Vec<String> = items.iter().take(5).map(ToString::to_string).collect();
    let more = items.len().saturating_sub(5);
    if more > 0 {
        format!("{} (and {more} more)", shown.join("; "))
    } else {
        shown.join("; ")
    }
}

/// Every order checkout stored, by id, with its status.
pub(crate) async fn order_statuses(
    checkout: &ModuleConn,
) -> anyhow::Result<HashMap<String, String>> {
    let mut status = HashMap::new();
    for row in checkout
        .rows(format!(
            "SELECT {}, status FROM {}",
            checkout.id("id"),
            checkout.table("orders")
        ))
        .await?
    {
        status.insert(row.try_get_by_index(0)?, row.try_get_by_index(1)?);
    }
    Ok(status)
}

/// Every check, in a fixed order, each with numbers.
pub(crate) async fn audit(
    dbs: &Dbs,
    streams: Option<&Streams>,
    expect: &Expect<'_>,
) -> anyhow::Result<Vec<Check>> {
    let mut checks = Vec::new();
    let checkout = dbs.module("checkout");
    let catalog = dbs.module("catalog");
    let fulfillment = dbs.module("fulfillment");

    // Orders, as checkout stored them.
    let status = order_statuses(checkout).await?;
    let mut lines: HashMap<String, Vec<(String, i64)>> = HashMap::new();
    for row in checkout
        .rows(format!(
            "SELECT {}, sku, quantity FROM {}",
            checkout.id("order_id"),
            checkout.table("order_lines")
        ))
        .await?
    {
        lines
            .entry(row.try_get_by_index(0)?)
            .or_default()
            .push((row.try_get_by_index(1)?, row.try_get_by_index(2)?));
    }
    let missing: Vec<&String> = expect
        .accepted
        .iter()
        .filter(|id| !status.contains_key(*id))
        .collect();
    checks.push(Check::new(
        "accepted orders are stored",
        missing.is_empty(),
        format!(
            "{} accepted, {} stored, {} accepted but missing{}",
            expect.accepted.len(),
            status.len(),
            missing.len(),
            if missing.is_empty() {
                String::new()
            } else {
                format!(": {}", sample(&missing))
            }
        ),
    ));

    // Shipments, as fulfillment stored them.
    let mut shipments: HashMap<String, Vec<String>> = HashMap::new();
    for row in fulfillment
        .rows(format!(
            "SELECT {}, status FROM {}",
            fulfillment.id("order_id"),
            fulfillment.table("shipments")
        ))
        .await?
    {
        shipments
            .entry(row.try_get_by_index(0)?)
            .or_default()
            .push(row.try_get_by_index(1)?);
    }
    let live_shipments = |id: &str| -> Vec<&str> {
        shipments
            .get(id)
            .map(|s| {
                s.iter()
                    .map(String::as_str)
                    .filter(|s| *s != "cancelled")
                    .collect()
            })
            .unwrap_or_default()
    };

    // Terminal: a final status, or confirmed with its shipment (the end of the journey
    // that needs no one to act).
    let mut by_status: BTreeMap<&str, usize> = BTreeMap::new();
    let mut stuck = Vec::new();
    for (id, s) in &status {
        *by_status.entry(s.as_str()).or_default() += 1;
        let done =
            FINAL.contains(&s.as_str()) || (s == "confirmed" && live_shipments(id).len() == 1);
        if !done {
            stuck.push(format!("{id} {s}"));
        }
    }
    checks.push(Check::new(
        "every order is terminal",
        stuck.is_empty(),
        format!(
            "{} not terminal of {} ({}){}",
            stuck.len(),
            status.len(),
            by_status
                .iter()
                .map(|(s, n)| format!("{s} {n}"))
                .collect::<Vec<_>>()
                .join(", "),
            if stuck.is_empty() {
                String::new()
            } else {
                format!(": {}", sample(&stuck))
            }
        ),
    ));

    // Shipments per order, counted (not trusted to a UNIQUE constraint), and agreeing
    // with the order's status.
    let mut wrong = Vec::new();
    let mut orphans = Vec::new();
    let (mut none, mut several, mut live_for_dead) = (0, 0, 0);
    for (id, s) in &status {
        let live = live_shipments(id);
        if LIVE.contains(&s.as_str()) {
            match live.len() {
                0 => none += 1,
                1 => {
                    let expected = match s.as_str() {
                        "confirmed" => "ready",
                        "shipped" => "dispatched",
                        _ => "delivered",
                    };
                    if live[0] != expected {
                        wrong.push(format!("{id}: order {s}, shipment {}", live[0]));
                    }
                }
                _ => several += 1,
            }
        } else if !live.is_empty() {
            live_for_dead += 1;
            wrong.push(format!("{id}: order {s}, live shipment {}", live[0]));
        }
    }
    for id in shipments.keys() {
        if !status.contains_key(id) {
            orphans.push(id.clone());
        }
    }
    checks.push(Check::new(
        "one live shipment per confirmed order",
        none == 0 && several == 0 && live_for_dead == 0 && wrong.is_empty() && orphans.is_empty(),
        format!(
            "{} live orders; {none} without a shipment, {several} with several, \
             {live_for_dead} rejected/cancelled with a live one, {} status mismatches, \
             {} shipments of unknown orders{}",
            status
                .values()
                .filter(|s| LIVE.contains(&s.as_str()))
                .count(),
            wrong.len(),
            orphans.len(),
            if wrong.is_empty() {
                String::new()
            } else {
                format!(": {}", sample(&wrong))
            }
        ),
    ));

    // Stock: on hand = free + held, and what is held is exactly what live orders hold.
    let mut levels: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    for row in catalog
        .rows(format!(
            "SELECT sku, on_hand, reserved FROM {}",
            catalog.table("stock_levels")
        ))
        .await?
    {
        levels.insert(
            row.try_get_by_index(0)?,
            (row.try_get_by_index(1)?, row.try_get_by_index(2)?),
        );
    }
    let mut holds: HashMap<String, String> = HashMap::new();
    for row in catalog
        .rows(format!(
            "SELECT {}, status FROM {}",
            catalog.id("order_id"),
            catalog.table("order_holds")
        ))
        .await?
    {
        holds.insert(row.try_get_by_index(0)?, row.try_get_by_index(1)?);
    }
    let mut reserved_by_hold: HashMap<String, i64> = HashMap::new();
    let mut reservations_of_unheld = 0;
    for row in catalog
        .rows(format!(
            "SELECT {}, sku, quantity FROM {}",
            catalog.id("order_id"),
            catalog.table("stock_reservations")
        ))
        .await?
    {
        let order: String = row.try_get_by_index(0)?;
        let sku: String = row.try_get_by_index(1)?;
        let quantity: i64 = row.try_get_by_index(2)?;
        if holds.get(&order).map(String::as_str) == Some("reserved") {
            *reserved_by_hold.entry(sku).or_default() += quantity;
        } else {
            reservations_of_unheld += 1;
        }
    }
    let mut held_by_live: HashMap<String, i64> = HashMap::new();
    let (mut live_unheld, mut dead_held) = (Vec::new(), Vec::new());
    for (id, s) in &status {
        let hold = holds.get(id).map(String::as_str);
        if LIVE.contains(&s.as_str()) {
            for (sku, quantity) in lines.get(id).into_iter().flatten() {
                *held_by_live.entry(sku.clone()).or_default() += quantity;
            }
            if hold != Some("reserved") {
                live_unheld.push(format!("{id} {s} hold {hold:?}"));
            }
        } else if FINAL.contains(&s.as_str()) && hold == Some("reserved") {
            dead_held.push(format!("{id} {s}"));
        }
    }
    let mut bad_skus = Vec::new();
    for (sku, (on_hand, reserved)) in &levels {
        let expected = expect.on_hand.get(sku).copied();
        let by_hold = reserved_by_hold.get(sku).copied().unwrap_or(0);
        let by_live = held_by_live.get(sku).copied().unwrap_or(0);
        let free = on_hand - reserved;
        if expected.is_some_and(|e| e != *on_hand)
            || *reserved != by_hold
            || *reserved != by_live
            || free < 0
        {
            bad_skus.push(format!(
                "{sku}: on hand {on_hand} (expected {}), free {free}, reserved {reserved}, \
                 reservations of held orders {by_hold}, lines of live orders {by_live}",
                expected.map_or("?".to_owned(), |e| e.to_string())
            ));
        }
    }
    for sku in expect.on_hand.keys() {
        if !levels.contains_key(sku) {
            bad_skus.push(format!("{sku}: no stock level"));
        }
    }
    checks.push(Check::new(
        "stock adds up per sku",
        bad_skus.is_empty() && reservations_of_unheld == 0,
        format!(
            "{} skus, {} off{}; {reservations_of_unheld} reservation rows of orders not held",
            levels.len(),
            bad_skus.len(),
            if bad_skus.is_empty() {
                String::new()
            } else {
                format!(": {}", sample(&bad_skus))
            }
        ),
    ));
    checks.push(Check::new(
        "stock is held exactly for live orders",
        live_unheld.is_empty() && dead_held.is_empty(),
        format!(
            "{} live orders not held{}, {} rejected/cancelled orders still held{}",
            live_unheld.len(),
            if live_unheld.is_empty() {
                String::new()
            } else {
                format!(" ({})", sample(&live_unheld))
            },
            dead_held.len(),
            if dead_held.is_empty() {
                String::new()
            } else {
                format!(" ({})", sample(&dead_held))
            }
        ),
    ));

    // Messaging tables of every module.
    let now = chrono::Utc::now().timestamp_millis();
    let (mut letters, mut unpublished, mut queued, mut lapsed) = (0, 0, 0, 0);
    let (mut letter_detail, mut outbox_detail, mut queue_detail) =
        (Vec::new(), Vec::new(), Vec::new());
    for m in &dbs.0 {
        let n = m
            .count(format!("SELECT COUNT(*) FROM {}", m.table("dead_letters")))
            .await?;
        letters += n;
        if n > 0 {
            let first = m
                .rows(format!(
                    "SELECT COALESCE(event_type, '?'), last_error FROM {} ORDER BY id LIMIT 1",
                    m.table("dead_letters")
                ))
                .await?;
            let (kind, error): (String, String) = match first.first() {
                Some(r) => (r.try_get_by_index(0)?, r.try_get_by_index(1)?),
                None => Default::default(),
            };
            letter_detail.push(format!("{} {n} (first: {kind}: {error})", m.module));
        }
        let n = m
            .count(format!(
                "SELECT COUNT(*) FROM {} WHERE published_at IS NULL",
                m.table("outbox")
            ))
            .await?;
        unpublished += n;
        if n > 0 {
            outbox_detail.push(format!("{} {n}", m.module));
        }
        let n = m
            .count(format!("SELECT COUNT(*) FROM {}", m.table("bus_queue")))
            .await?;
        let stale = m
            .count(format!(
                "SELECT COUNT(*) FROM {} WHERE locked_by IS NOT NULL AND locked_until < {now}",
                m.table("bus_queue")
            ))
            .await?;
        let locked = m
            .count(format!(
                "SELECT COUNT(*) FROM {} WHERE locked_by IS NOT NULL",
                m.table("bus_queue")
            ))
            .await?;
        queued += n;
        lapsed += stale;
        if n > 0 {
            queue_detail.push(format!(
                "{} {n} rows ({locked} claimed, {stale} of them with a lapsed lease, {} unclaimed)",
                m.module,
                n - locked
            ));
        }
    }
    checks.push(Check::new(
        "no dead letters",
        letters == expect.dead_letters,
        format!(
            "{letters} dead letters, {} expected{}",
            expect.dead_letters,
            if letter_detail.is_empty() {
                String::new()
            } else {
                format!(": {}", letter_detail.join("; "))
            }
        ),
    ));
    checks.push(Check::new(
        "outboxes fully published",
        unpublished == 0,
        format!("{unpublished} unpublished {}", outbox_detail.join("; ")),
    ));
    checks.push(Check::new(
        "in-process queues empty",
        queued == 0,
        format!(
            "{queued} rows queued, {lapsed} claimed under a lapsed lease {}",
            queue_detail.join("; ")
        ),
    ));
    if let Some(streams) = streams {
        let groups = streams.groups().await?;
        let busy: Vec<String> = groups
            .iter()
            .filter(|g| g.pending > 0 || g.behind)
            .map(|g| {
                format!(
                    "{} {}: {} pending{}",
                    g.stream,
                    g.group,
                    g.pending,
                    if g.behind { ", behind" } else { "" }
                )
            })
            .collect();
        checks.push(Check::new(
            "Redis groups drained",
            busy.is_empty() && !groups.is_empty(),
            format!(
                "{} groups, {} with pending entries or lag{}",
                groups.len(),
                busy.len(),
                if busy.is_empty() {
                    String::new()
                } else {
                    format!(": {}", sample(&busy))
                }
            ),
        ));
    }
    checks.push(per_key_order(dbs).await?);
    Ok(checks)
}

/// A consuming module, a producing module, an ordering key.
type Stream<'a> = (&'a str, &'a str, String);

/// Each consuming module handled each key's events from one producer in the order the
/// producer committed them (outbox id order): the processing times in its inbox never go
/// backwards along a key.
async fn per_key_order(dbs: &Dbs) -> anyhow::Result<Check> {
    // event id -> (producer, ordering key, outbox id)
    let mut produced: HashMap<String, (&'static str, String, i64)> = HashMap::new();
    for m in &dbs.0 {
        for row in m
            .rows(format!(
                "SELECT {}, ordering_key, id FROM {}",
                m.id("event_id"),
                m.table("outbox")
            ))
            .await?
        {
            produced.insert(
                row.try_get_by_index(0)?,
                (m.module, row.try_get_by_index(1)?, row.try_get_by_index(2)?),
            );
        }
    }
    let mut sequences: HashMap<Stream<'_>, Vec<(i64, i64)>> = HashMap::new();
    let mut handled = 0;
    for m in &dbs.0 {
        // An event with several handlers in one module counts once, at its first.
        let mut first: HashMap<String, i64> = HashMap::new();
        for row in m
            .rows(format!(
                "SELECT {}, processed_at FROM {}",
                m.id("event_id"),
                m.table("inbox")
            ))
            .await?
        {
            let event: String = row.try_get_by_index(0)?;
            let at: i64 = row.try_get_by_index(1)?;
            let earliest = first.entry(event).or_insert(at);
            *earliest = (*earliest).min(at);
        }
        for (event, at) in first {
            if let Some((producer, key, id)) = produced.get(&event) {
                handled += 1;
                sequences
                    .entry((m.module, producer, key.clone()))
                    .or_default()
                    .push((*id, at));
            }
        }
    }
    let mut broken = Vec::new();
    for ((consumer, producer, key), mut seq) in sequences {
        seq.sort();
        for pair in seq.windows(2) {
            if pair[1].1 < pair[0].1 {
                broken.push(format!(
                    "{consumer} handled {producer}'s key {key}: outbox row {} at {} ms before row {} at {} ms",
                    pair[1].0, pair[1].1, pair[0].0, pair[0].1
                ));
            }
        }
    }
    Ok(Check::new(
        "per-key order kept",
        // None checked would say nothing: the outboxes were emptied.
        broken.is_empty() && handled > 0,
        format!(
            "{handled} handled events checked, {} out of order{}",
            broken.len(),
            if broken.is_empty() {
                String::new()
            } else {
                format!(": {}", sample(&broken))
            }
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backlog_is_drained_only_when_every_count_is_zero_and_every_order_is_stored() {
        let empty = Backlog {
            orders: 10,
            live_orders: 7,
            live_shipments: 7,
            ..Backlog::default()
        };
        assert!(empty.drained(10));
        assert!(!empty.drained(11), "an accepted order is missing");
        for busy in [
            Backlog {
                pending_orders: 1,
                ..empty.clone()
            },
            Backlog {
                live_shipments: 6,
                ..empty.clone()
            },
            Backlog {
                unpublished: 1,
                ..empty.clone()
            },
            Backlog {
                queued: 1,
                ..empty.clone()
            },
            Backlog {
                stream_pending: 1,
                ..empty.clone()
            },
            Backlog {
                streams_behind: 1,
                ..empty.clone()
            },
        ] {
            assert!(!busy.drained(10), "{busy:?}");
        }
    }

    #[test]
    fn stream_ids_compare_by_time_then_sequence() {
        assert!(parse_id("5-2") < parse_id("5-10"));
        assert!(parse_id("5-10") < parse_id("6-0"));
        assert_eq!(parse_id("0-0"), (0, 0));
    }
}
