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
use sea_orm::{ConnectionTrait, DbErr, Value};
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
    let now = now_ms();
    let rows = Rows::new()
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
        );
    insert_rows(tx, "outbox", rows, "").await?;
    Ok(())
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
                Ok(Pass::Published(n)) => {
                    failures = 0;
                    n < self.settings.relay_batch
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
        // Hand the lease back so another instance can take over at once.
        let _ = execute(
            self.db.conn(),
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
        let rows = query(
            self.db.conn(),
            "SELECT id, event_id, event_type, ordering_key, envelope FROM outbox \
             WHERE published_at IS NULL ORDER BY id LIMIT $1",
            vec![(self.settings.relay_batch as i64).into()],
        )
        .await
        .context("failed to read the outbox")?;
        if rows.is_empty() {
            return Ok(Pass::Empty);
        }
        let mut ids = Vec::with_capacity(rows.len());
        let mut batch = Vec::with_capacity(rows.len());
        for row in rows {
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
        if self.bus.hands_over_directly() {
            let last = ids.iter().copied().max().unwrap_or_default();
            if last > held.handed_through {
                // Recorded before anything is handed over, and only while the lease is
                // ours: a relay that loses the lease hands nothing over.
                let recorded = execute(
                    self.db.conn(),
                    "UPDATE relay_lease SET handed_through = $1 WHERE name = $2 AND holder = $3",
                    vec![last.into(), LEASE_NAME.into(), self.instance.clone().into()],
                )
                .await
                .context("failed to record the handover")?;
                if recorded != 1 {
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
        self.published(&ids)
            .await
            .context("failed to delete or mark the events the bus took")?;
        for id in &ids {
            held.cut_short.remove(id);
        }
        metrics::counter!("outbox_published_total", "module" => self.db.module())
            .increment(ids.len() as u64);
        Ok(Pass::Published(ids.len()))
    }

    /// Done with rows the bus accepted: deleted, or, where the outbox keeps published
    /// events for a while (`outbox_retention_secs`), marked published.
    async fn published(&self, ids: &[i64]) -> Result<u64, DbErr> {
        let ids = store::padded(ids.iter().map(|id| Value::from(*id)).collect());
        if self.settings.outbox_retention_secs == 0 {
            // A delete leaves the row's index entries alone, where a mark writes a new
            // version of the row and of each of them.
            let sql = format!(
                "DELETE FROM outbox WHERE id IN ({})",
                placeholders(1, ids.len())
            );
            return execute(self.db.conn(), &sql, ids).await;
        }
        let sql = format!(
            "UPDATE outbox SET published_at = $1 WHERE id IN ({})",
            placeholders(2, ids.len())
        );
        let mut values: Vec<Value> = vec![now_ms().into()];
        values.extend(ids);
        execute(self.db.conn(), &sql, values).await
    }

    /// Takes or renews the module's relay lease: the highest outbox id handed over
    /// directly under it so far, or `None` when another instance holds it.
    async fn take_lease(&self, now: i64, lease: i64) -> anyhow::Result<Option<i64>> {
        let taken = query(
            self.db.conn(),
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
            self.db.conn(),
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
}

enum Pass {
    Published(usize),
    Empty,
    NotLeader,
}
