//! The transactional outbox and its relay.
//!
//! A use case appends its events to the `outbox` table in the same transaction as the
//! change they announce, so both commit or neither does. The relay hands committed rows to
//! the bus in batches and deletes them (or marks them published) only after the bus accepted them.
//!
//! The relay never reads "after the last id it saw": it always takes the lowest unpublished
//! ids, so a row whose transaction committed late (with a lower id than rows already
//! published) is picked up on the next pass instead of being skipped. Only one
//! relay per module publishes at a time, under a lease renewed while it works, so events of
//! one key leave in the order their transactions committed; no instance republishes everything unfinished at start-up.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use contracts::Envelope;
use sea_orm::sea_query::ArrayType;
use sea_orm::{ConnectionTrait, DbBackend, DbErr, Value};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::bus::{EventBus, Outgoing};
use crate::faults::Faults;
use crate::settings::MessagingSettings;
use store::{ModuleDb, Rows, execute, insert_rows, now_ms, placeholders, query};

/// A module's outbox, as its relay and its publishing transactions share it: the relay
/// sleeps on it between polls, and a transaction that committed events wakes it (see
/// [`crate::Tx::commit`]).
#[derive(Clone, Debug)]
pub struct Outbox {
    module: &'static str,
    wake: Arc<Notify>,
}

impl Outbox {
    pub fn new(module: &'static str) -> Self {
        Self {
            module,
            wake: Arc::new(Notify::new()),
        }
    }

    pub fn module(&self) -> &'static str {
        self.module
    }

    /// Tells the relay that new events were committed.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Returns once events were committed (or [`Outbox::wake`] was called) since the
    /// last time it returned: what the relay waits for between polls.
    pub async fn woken(&self) {
        self.wake.notified().await
    }

    pub(crate) fn waker(&self) -> Arc<Notify> {
        self.wake.clone()
    }
}

/// Writes envelopes made elsewhere to the outbox, in the caller's transaction, starting
/// each one's `publish` span. Modules never call it: they publish through their
/// transaction ([`crate::Tx::publish`]), which writes its events on commit; this is for
/// the tests of the relay and the buses, which need rows of their own making.
pub async fn append(tx: &impl ConnectionTrait, events: &[Envelope]) -> Result<(), DbErr> {
    let mut events = events.to_vec();
    crate::trace::published(&mut events);
    insert(tx, &events).await
}

/// The outbox rows of `events`, in order, in one statement ([`store::insert_rows`]: on
/// PostgreSQL the same statement for any number of rows, which every pooled connection
/// keeps prepared).
pub(crate) async fn insert(tx: &impl ConnectionTrait, events: &[Envelope]) -> Result<(), DbErr> {
    insert_rows(tx, "outbox", outbox_rows(events), "").await?;
    Ok(())
}

/// The outbox rows of `events`, in order.
pub(crate) fn outbox_rows(events: &[Envelope]) -> Rows {
    let now = now_ms();
    Rows::new()
        .column(
            "event_id",
            ArrayType::Uuid,
            events.iter().map(|e| e.id.into()),
        )
        .column(
            "event_type",
            ArrayType::String,
            events.iter().map(|e| e.event_type.clone().into()),
        )
        .column(
            "ordering_key",
            ArrayType::String,
            events.iter().map(|e| e.key.clone().into()),
        )
        .column(
            "envelope",
            ArrayType::String,
            events
                .iter()
                .map(|e| String::from_utf8_lossy(&e.to_bytes()).into_owned().into()),
        )
        .column(
            "created_at",
            ArrayType::BigInt,
            events.iter().map(|_| now.into()),
        )
}

/// What waits in a module's outbox, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unpublished {
    pub count: u64,
    /// How long the oldest waiting event has waited; zero when none waits.
    pub oldest_age: Duration,
}

/// Counts the unpublished rows and dates the oldest. Both read the partial index on
/// unpublished ids only (the oldest is the lowest id: ids are given in insertion order),
/// so the cost follows the backlog, not the table.
pub async fn unpublished(db: &ModuleDb) -> Result<Unpublished, DbErr> {
    let conn = db.conn();
    let count = query(
        conn,
        "SELECT COUNT(*) AS n FROM outbox WHERE published_at IS NULL",
        vec![],
    )
    .await?;
    let count: i64 = match count.first() {
        Some(row) => row.try_get("", "n")?,
        None => 0,
    };
    let oldest = query(
        conn,
        "SELECT created_at FROM outbox WHERE published_at IS NULL ORDER BY id LIMIT 1",
        vec![],
    )
    .await?;
    let oldest_age = match oldest.first() {
        Some(row) => {
            let created_at: i64 = row.try_get("", "created_at")?;
            Duration::from_millis((now_ms() - created_at).max(0) as u64)
        }
        None => Duration::ZERO,
    };
    Ok(Unpublished {
        count: count.max(0) as u64,
        oldest_age,
    })
}

/// Publishes a module's outbox through the bus until cancelled.
pub struct Relay {
    pub db: ModuleDb,
    pub outbox: Outbox,
    pub bus: Arc<dyn EventBus>,
    pub settings: MessagingSettings,
    /// This process's name, as holder of the relay lease.
    pub instance: String,
    pub faults: Faults,
}

const LEASE_NAME: &str = "relay";

impl Relay {
    pub async fn run(self, cancel: CancellationToken) {
        let module = self.db.module();
        let poll = Duration::from_millis(self.settings.poll_interval_ms);
        let mut held = Held::default();
        let mut failures = 0_u32;
        // Present at zero from the start, so a rate over them reads 0 rather than nothing.
        metrics::counter!("relay_failures_total", "module" => module).increment(0);
        metrics::counter!("outbox_published_total", "module" => module).increment(0);
        loop {
            if cancel.is_cancelled() {
                break;
            }
            let outcome = self.pass(&mut held).await;
            let idle = match outcome {
                Ok(Pass::Published) => {
                    failures = 0;
                    false
                }
                Ok(Pass::Empty) => {
                    failures = 0;
                    true
                }
                Ok(Pass::NotLeader) => true,
                Err(e) => {
                    failures += 1;
                    let delay = self.settings.backoff(failures);
                    tracing::warn!(module, error = %format!("{e:#}"), attempt = failures, delay_ms = delay.as_millis() as u64, "relay pass failed; retrying");
                    metrics::counter!("relay_failures_total", "module" => module).increment(1);
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = tokio::time::sleep(delay) => {}
                    }
                    false
                }
            };
            if idle {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = self.outbox.woken() => {}
                    _ = tokio::time::sleep(poll) => {}
                }
            }
        }
        // What the bus took is done with; left, the next holder would publish it again.
        if let Err(e) = self.settle(&mut held).await {
            tracing::warn!(module, error = %format!("{e:#}"), "relay stopped with published events it could not delete or mark; they will be published again");
        }
        // Hand the lease back so another instance can take over at once.
        let _ = execute(
            self.db.writes(),
            "UPDATE relay_lease SET holder = NULL, held_until = 0 WHERE name = $1 AND holder = $2",
            vec![LEASE_NAME.into(), self.instance.clone().into()],
        )
        .await;
        tracing::debug!(module, "relay stopped");
    }

    async fn pass(&self, held: &mut Held) -> anyhow::Result<Pass> {
        let now = now_ms();
        let lease = self.settings.lease_ms as i64;
        if held.lease_until - now < lease / 2 {
            let holding = held.lease_until > now;
            let Some(handed_through) = self.take_lease(now, lease).await? else {
                held.lease_until = 0;
                // What the bus took under the lease is done with all the same: left, the
                // next holder would publish it again.
                self.settle(held).await?;
                return Ok(Pass::NotLeader);
            };
            if !holding {
                // Taken (back) from a holder that may have crashed in the middle of a
                // handover: whatever it recorded as handed and left unpublished may have
                // reached a consumer.
                held.predecessor_through = handed_through;
            }
            held.handed_through = held.handed_through.max(handed_through);
            held.lease_until = now + lease;
        }
        let direct = self.bus.hands_over_directly();
        let read = self
            .settle_and_read(held, direct)
            .await
            .context("failed to delete or mark the events the bus took, or to read the outbox")?;
        self.settled(held);
        if read.rows.is_empty() {
            return Ok(Pass::Empty);
        }
        let mut ids = Vec::with_capacity(read.rows.len());
        let mut batch = Vec::with_capacity(read.rows.len());
        for row in read.rows {
            let id = row.try_get::<i64>("", "id")?;
            ids.push(id);
            let event_type: String = row.try_get("", "event_type")?;
            batch.push(Outgoing {
                event_id: row.try_get("", "event_id")?,
                source: contracts::source_of(&event_type).to_owned(),
                event_type,
                key: row.try_get("", "ordering_key")?,
                envelope: Arc::from(row.try_get::<String>("", "envelope")?),
                handed_before: id <= held.predecessor_through || held.cut_short.contains(&id),
            });
        }
        if direct {
            let last = ids.iter().copied().max().unwrap_or_default();
            if last > held.handed_through {
                // Recorded before anything is handed over, by the statement that read the
                // batch, and only while the lease is ours: a relay that loses the lease
                // hands nothing over.
                if !read.recorded {
                    held.lease_until = 0;
                    return Ok(Pass::NotLeader);
                }
                held.handed_through = last;
            }
            // Until they are marked published: a failed publish may have handed some of
            // them over, and publishing them again counts that delivery.
            held.cut_short.extend(ids.iter().copied());
        }
        self.faults.point("relay.before_publish").await;
        self.bus
            .publish(&batch)
            .await
            .context("the bus did not accept the batch")?;
        self.faults.point("relay.after_publish").await;
        // Deleted or marked by the statement that reads the next batch, one round trip
        // and one commit for both.
        held.published = ids;
        Ok(Pass::Published)
    }

    /// In one statement (one transaction on SQLite): the rows the bus took last pass are
    /// done with (deleted, or marked published where the outbox keeps them for a while),
    /// the lowest unpublished ids after them are read, and, when they go directly to
    /// consumers (`direct`) past what was recorded, recorded as handed over, if the lease
    /// is still this relay's.
    async fn settle_and_read(&self, held: &Held, direct: bool) -> Result<Read, DbErr> {
        let batch = self.settings.relay_batch as i64;
        // Only what goes past the highest id recorded is recorded.
        let record_past = if direct {
            held.handed_through
        } else {
            i64::MAX
        };
        let conn = self.db.conn();
        if self.db.backend() != DbBackend::Postgres {
            return self.settle_and_read_sqlite(held, record_past).await;
        }
        let taken = store::array(
            ArrayType::BigInt,
            held.published.iter().map(|id| Value::from(*id)),
        );
        let mut values: Vec<Value> = vec![
            taken,
            batch.into(),
            LEASE_NAME.into(),
            self.instance.clone().into(),
            record_past.into(),
        ];
        let settle = self.settle_sql("= ANY($1)", "$6");
        if settle.marks {
            values.push(now_ms().into());
        }
        // The rows settled here are still unpublished in the statement's snapshot, hence
        // the `NOT IN`: a subquery, which PostgreSQL looks up in a hash table; `<> ALL($1)`
        // compared each row read with every settled id (a pass of 400 rows took 12 ms).
        // `next` is read once (named twice, it is materialized).
        let sql = format!(
            "WITH settled AS ({}), \
             next AS (SELECT id, event_id, event_type, ordering_key, envelope FROM outbox \
                      WHERE published_at IS NULL AND id NOT IN (SELECT unnest($1::bigint[])) \
                      ORDER BY id LIMIT $2), \
             recorded AS (UPDATE relay_lease SET handed_through = (SELECT MAX(id) FROM next) \
                          WHERE name = $3 AND holder = $4 AND (SELECT MAX(id) FROM next) > $5 \
                          RETURNING 1) \
             SELECT id, event_id, event_type, ordering_key, envelope, \
                    (SELECT COUNT(*) FROM recorded) AS recorded \
             FROM next ORDER BY id",
            settle.sql
        );
        let rows = query(conn, &sql, values).await?;
        let recorded = match rows.first() {
            Some(row) => row.try_get::<i64>("", "recorded")? == 1,
            None => false,
        };
        Ok(Read { rows, recorded })
    }

    /// [`Relay::settle_and_read`] on SQLite, which has no statements that change rows
    /// inside a `WITH`: the same three, in one write transaction when there is something
    /// to settle.
    async fn settle_and_read_sqlite(&self, held: &Held, record_past: i64) -> Result<Read, DbErr> {
        if held.published.is_empty() {
            return self.sqlite_steps(self.db.writes(), held, record_past).await;
        }
        let tx = self.db.begin().await?;
        let read = self.sqlite_steps(&tx, held, record_past).await?;
        tx.commit().await?;
        Ok(read)
    }

    async fn sqlite_steps(
        &self,
        conn: &impl ConnectionTrait,
        held: &Held,
        record_past: i64,
    ) -> Result<Read, DbErr> {
        self.settle_listed(conn, &held.published).await?;
        let n = held.published.len();
        let mut values = vec![(self.settings.relay_batch as i64).into()];
        values.extend(held.published.iter().map(|id| Value::from(*id)));
        let rows = query(
            conn,
            &format!(
                "SELECT id, event_id, event_type, ordering_key, envelope FROM outbox \
                 WHERE published_at IS NULL AND id NOT IN ({}) ORDER BY id LIMIT $1",
                placeholders(2, n)
            ),
            values,
        )
        .await?;
        let mut last = None;
        for row in &rows {
            last = last.max(Some(row.try_get::<i64>("", "id")?));
        }
        let mut recorded = false;
        if let Some(last) = last.filter(|last| *last > record_past) {
            recorded = execute(
                conn,
                "UPDATE relay_lease SET handed_through = $1 WHERE name = $2 AND holder = $3",
                vec![last.into(), LEASE_NAME.into(), self.instance.clone().into()],
            )
            .await?
                == 1;
        }
        Ok(Read { rows, recorded })
    }

    /// Settles what the bus took on its own, without reading on: when the relay stops or
    /// lost its lease.
    async fn settle(&self, held: &mut Held) -> anyhow::Result<()> {
        self.settle_listed(self.db.writes(), &held.published)
            .await
            .context("failed to delete or mark the events the bus took")?;
        self.settled(held);
        Ok(())
    }

    /// Settles `ids` with an `IN` list, on either backend; nothing for no ids.
    async fn settle_listed(&self, conn: &impl ConnectionTrait, ids: &[i64]) -> Result<(), DbErr> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut values = store::padded(ids.iter().map(|id| Value::from(*id)).collect());
        let n = values.len();
        let settle = self.settle_sql(
            &format!("IN ({})", placeholders(1, n)),
            &format!("${}", n + 1),
        );
        if settle.marks {
            values.push(now_ms().into());
        }
        execute(conn, &settle.sql, values).await?;
        Ok(())
    }

    /// The rows the bus took are deleted or marked: no longer cut short, and counted.
    fn settled(&self, held: &mut Held) {
        let took = std::mem::take(&mut held.published);
        for id in &took {
            held.cut_short.remove(id);
        }
        metrics::counter!("outbox_published_total", "module" => self.db.module())
            .increment(took.len() as u64);
    }

    /// The statement that settles rows the bus took, named by `ids` (`= ANY($1)`, `IN
    /// (..)`): deleted, or, where the outbox keeps published events for a while
    /// (`outbox_retention_secs`), marked published at the time bound to `now`.
    fn settle_sql(&self, ids: &str, now: &str) -> Settle {
        if self.settings.outbox_retention_secs == 0 {
            // A delete leaves the row's index entries alone, where a mark writes a new
            // version of the row and of each of them.
            return Settle {
                sql: format!("DELETE FROM outbox WHERE id {ids}"),
                marks: false,
            };
        }
        Settle {
            sql: format!("UPDATE outbox SET published_at = {now} WHERE id {ids}"),
            marks: true,
        }
    }

    /// Takes or renews the module's relay lease: the highest outbox id handed over
    /// directly under it so far, or `None` when another instance holds it.
    async fn take_lease(&self, now: i64, lease: i64) -> anyhow::Result<Option<i64>> {
        let taken = query(
            self.db.writes(),
            "UPDATE relay_lease SET holder = $1, held_until = $2 \
             WHERE name = $3 AND (holder = $1 OR holder IS NULL OR held_until < $4) \
             RETURNING handed_through",
            vec![
                self.instance.clone().into(),
                (now + lease).into(),
                LEASE_NAME.into(),
                now.into(),
            ],
        )
        .await
        .context("failed to renew the relay lease")?;
        if let Some(row) = taken.first() {
            return Ok(Some(row.try_get("", "handed_through")?));
        }
        // The first relay ever: create the lease row (a concurrent one may win; fine).
        let created = execute(
            self.db.writes(),
            "INSERT INTO relay_lease (name, holder, held_until) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING",
            vec![LEASE_NAME.into(), self.instance.clone().into(), (now + lease).into()],
        )
        .await
        .context("failed to create the relay lease")?;
        Ok((created == 1).then_some(0))
    }
}

/// What a relay knows of the lease it holds.
#[derive(Default)]
struct Held {
    /// Epoch ms; 0 while not held.
    lease_until: i64,
    /// The highest outbox id recorded as handed over, by this relay or a predecessor.
    handed_through: i64,
    /// What the holder before this relay recorded: unpublished rows up to it may have
    /// been handed out by a process that died.
    predecessor_through: i64,
    /// Rows this relay handed over and has not marked published yet.
    cut_short: HashSet<i64>,
    /// Rows the bus took, settled by the next pass (or when the relay stops).
    published: Vec<i64>,
}

enum Pass {
    /// A batch went to the bus: the next pass follows at once, settling it.
    Published,
    Empty,
    NotLeader,
}

/// What [`Relay::settle_and_read`] read.
struct Read {
    rows: Vec<sea_orm::QueryResult>,
    /// Whether the batch was recorded as handed over.
    recorded: bool,
}

/// A statement settling published rows, and whether it binds the time (last).
struct Settle {
    sql: String,
    marks: bool,
}
