//! The in-process bus: for modules that run in the same process. It is still durable
//! (LESSONS 9): publishing writes each event into the `bus_queue` table of every subscribed
//! module, in that module's own database, before the relay marks the outbox row published;
//! a subscription claims queued rows under a lease, and only an acknowledgement deletes
//! them. A crash at any point leaves every event either in an outbox or in a queue.
//!
//! Per-key order: a row is not handed out while an earlier row with the same ordering key
//! is still in the queue (in flight, or waiting for its retry). Several instances of a
//! module (replicas sharing a PostgreSQL database) share a queue: claims skip rows another
//! instance holds, and a lease that is not renewed lets another instance take the rows of
//! a dead one.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use sea_orm::Value;
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use crate::bus::{
    Acker, BusError, Delivery, DeliveryTag, EventBus, Outgoing, SubscriberSpec, Subscription,
};
use crate::db::{ModuleDb, execute, now_ms, placeholders, query};
use crate::settings::MessagingSettings;

struct Queue {
    db: ModuleDb,
    wake: Arc<Notify>,
}

pub struct LocalBus {
    queues: HashMap<&'static str, Queue>,
    instance: String,
    settings: MessagingSettings,
}

const INSERT_CHUNK: usize = 500;

impl LocalBus {
    /// `instance` names this process: it holds the claims of its subscriptions. A restarted
    /// process with the same name takes its claims back at once.
    pub fn new(instance: impl Into<String>, settings: MessagingSettings) -> Self {
        Self {
            queues: HashMap::new(),
            instance: instance.into(),
            settings,
        }
    }

    /// Registers a module that consumes events in this process.
    pub fn add_consumer(&mut self, db: ModuleDb) {
        self.queues.insert(
            db.module(),
            Queue {
                db,
                wake: Arc::new(Notify::new()),
            },
        );
    }

    /// Checks that every module consuming what `producers` publish runs in this process.
    pub fn check_routes(&self, producers: &[&str]) -> Result<(), BusError> {
        for s in contracts::SUBSCRIPTIONS {
            if producers.contains(&contracts::source_of(s.event_type))
                && !self.queues.contains_key(s.consumer)
            {
                return Err(BusError::NoRoute {
                    event_type: s.event_type.to_owned(),
                    consumer: s.consumer.to_owned(),
                });
            }
        }
        Ok(())
    }

    async fn enqueue(&self, queue: &Queue, events: &[&Outgoing]) -> Result<(), BusError> {
        let now = now_ms();
        let tx = queue.db.begin().await?;
        for chunk in events.chunks(INSERT_CHUNK) {
            let mut values: Vec<Value> = Vec::with_capacity(chunk.len() * 6);
            let mut rows = Vec::with_capacity(chunk.len());
            for (i, e) in chunk.iter().enumerate() {
                let n = i * 6;
                rows.push(format!(
                    "(${}, ${}, ${}, ${}, ${}, ${})",
                    n + 1,
                    n + 2,
                    n + 3,
                    n + 4,
                    n + 5,
                    n + 6
                ));
                values.push(e.event_id.into());
                values.push(e.event_type.clone().into());
                values.push(format!("{}/{}", e.source, e.key).into());
                values.push(e.envelope.to_string().into());
                values.push(now.into());
                values.push(now.into());
            }
            let sql = format!(
                "INSERT INTO bus_queue (event_id, event_type, ordering_key, envelope, visible_at, enqueued_at) \
                 VALUES {} ON CONFLICT (event_id) DO NOTHING",
                rows.join(", ")
            );
            execute(&tx, &sql, values).await?;
        }
        tx.commit().await?;
        queue.wake.notify_one();
        Ok(())
    }
}

#[async_trait]
impl EventBus for LocalBus {
    fn kind(&self) -> &'static str {
        "local"
    }

    async fn publish(&self, batch: &[Outgoing]) -> Result<(), BusError> {
        // Events keep their order within each consumer's queue: rows are inserted in batch
        // order and queue ids increase.
        let mut routes: BTreeMap<&str, Vec<&Outgoing>> = BTreeMap::new();
        for event in batch {
            for consumer in contracts::consumers_of(&event.event_type) {
                routes.entry(consumer).or_default().push(event);
            }
        }
        for (consumer, events) in routes {
            let queue = self.queues.get(consumer).ok_or_else(|| BusError::NoRoute {
                event_type: events[0].event_type.clone(),
                consumer: consumer.to_owned(),
            })?;
            self.enqueue(queue, &events).await.map_err(|e| {
                BusError::Other(anyhow::anyhow!("{e}").context(format!("queue of {consumer}")))
            })?;
        }
        Ok(())
    }

    async fn subscribe(&self, spec: SubscriberSpec) -> Result<Subscription, BusError> {
        let queue = self.queues.get(spec.module).ok_or_else(|| {
            BusError::Other(anyhow::anyhow!(
                "module {} has no queue on this bus",
                spec.module
            ))
        })?;
        // Take back what this instance held before a restart: those deliveries were cut
        // short and come back now, not when their lease runs out.
        execute(
            queue.db.conn(),
            "UPDATE bus_queue SET locked_by = NULL, locked_until = NULL WHERE locked_by = $1",
            vec![self.instance.clone().into()],
        )
        .await?;
        let state = Arc::new(State {
            db: queue.db.clone(),
            instance: self.instance.clone(),
            wake: queue.wake.clone(),
            in_flight: Mutex::new(HashSet::new()),
            permits: Semaphore::new(spec.max_in_flight),
            settings: self.settings.clone(),
        });
        let (tx, rx) = mpsc::channel(spec.max_in_flight.max(1));
        let reader = tokio::spawn(read_queue(state.clone(), tx));
        Ok(Subscription {
            deliveries: Box::pin(ReceiverStream::new(rx)),
            acker: Arc::new(LocalAcker(state)),
            reader: Some(reader),
        })
    }

    /// The in-process bus has no dependency of its own: its queues live in the module
    /// databases, which readiness checks already.
    async fn check(&self) -> Result<(), BusError> {
        Ok(())
    }
}

struct State {
    db: ModuleDb,
    instance: String,
    wake: Arc<Notify>,
    in_flight: Mutex<HashSet<i64>>,
    permits: Semaphore,
    settings: MessagingSettings,
}

impl State {
    fn settle(&self, ids: &[i64]) {
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        let settled = ids.iter().filter(|id| in_flight.remove(id)).count();
        drop(in_flight);
        self.permits.add_permits(settled);
    }
}

/// Claims visible rows for this instance and hands them out, never more than the free
/// permits, renewing the claims of what is in flight.
async fn read_queue(state: Arc<State>, tx: mpsc::Sender<Delivery>) {
    let module = state.db.module();
    let poll = Duration::from_millis(state.settings.poll_interval_ms);
    let renew_every = Duration::from_millis(state.settings.lease_ms / 3);
    let mut last_renewal = tokio::time::Instant::now();
    let mut failures = 0_u32;
    loop {
        if tx.is_closed() {
            break;
        }
        if last_renewal.elapsed() >= renew_every {
            match renew(&state).await {
                Ok(()) => last_renewal = tokio::time::Instant::now(),
                Err(e) => {
                    tracing::warn!(module, error = %format!("{e:#}"), "renewing claims failed")
                }
            }
        }
        let free = state.permits.available_permits();
        let claimed = if free == 0 {
            Ok(Vec::new())
        } else {
            claim(&state, free.min(state.settings.consumer_batch * 2)).await
        };
        match claimed {
            Ok(rows) if !rows.is_empty() => {
                failures = 0;
                let Ok(permits) = state.permits.acquire_many(rows.len() as u32).await else {
                    break;
                };
                permits.forget();
                state
                    .in_flight
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .extend(rows.iter().filter_map(|d| match d.tag {
                        DeliveryTag::Row(id) => Some(id),
                        DeliveryTag::Entry { .. } => None,
                    }));
                for delivery in rows {
                    if tx.send(delivery).await.is_err() {
                        return;
                    }
                }
            }
            Ok(_) => {
                failures = 0;
                tokio::select! {
                    _ = tx.closed() => break,
                    _ = state.wake.notified() => {}
                    _ = tokio::time::sleep(poll.min(renew_every)) => {}
                }
            }
            Err(e) => {
                failures += 1;
                let delay = state.settings.backoff(failures);
                tracing::warn!(module, error = %format!("{e:#}"), delay_ms = delay.as_millis() as u64, "reading the queue failed; retrying");
                tokio::select! {
                    _ = tx.closed() => break,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
    tracing::debug!(module, "subscription closed");
}

async fn claim(state: &State, limit: usize) -> anyhow::Result<Vec<Delivery>> {
    let now = now_ms();
    let tx = state.db.begin().await.context("failed to begin")?;
    let rows = query(
        &tx,
        "UPDATE bus_queue SET locked_by = $1, locked_until = $2, deliveries = deliveries + 1 \
         WHERE id IN ( \
           SELECT q.id FROM bus_queue q \
           WHERE q.visible_at <= $3 AND (q.locked_until IS NULL OR q.locked_until < $3) \
             AND NOT EXISTS (SELECT 1 FROM bus_queue p WHERE p.ordering_key = q.ordering_key AND p.id < q.id) \
           ORDER BY q.id LIMIT $4 FOR UPDATE SKIP LOCKED) \
         RETURNING id, envelope, deliveries",
        vec![
            state.instance.clone().into(),
            (now + state.settings.lease_ms as i64).into(),
            now.into(),
            (limit as i64).into(),
        ],
    )
    .await
    .context("failed to claim queued events")?;
    tx.commit().await.context("failed to commit the claim")?;
    let mut deliveries = Vec::with_capacity(rows.len());
    for row in rows {
        let id: i64 = row.try_get("", "id")?;
        let envelope: String = row.try_get("", "envelope")?;
        let deliveries_so_far: i32 = row.try_get("", "deliveries")?;
        deliveries.push((
            id,
            Delivery {
                tag: DeliveryTag::Row(id),
                raw: Arc::from(envelope.into_bytes()),
                attempt: deliveries_so_far.max(1) as u32,
            },
        ));
    }
    deliveries.sort_by_key(|(id, _)| *id);
    Ok(deliveries.into_iter().map(|(_, d)| d).collect())
}

async fn renew(state: &State) -> anyhow::Result<()> {
    if state
        .in_flight
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .is_empty()
    {
        return Ok(());
    }
    execute(
        state.db.conn(),
        "UPDATE bus_queue SET locked_until = $1 WHERE locked_by = $2",
        vec![
            (now_ms() + state.settings.lease_ms as i64).into(),
            state.instance.clone().into(),
        ],
    )
    .await
    .context("failed to renew claims")?;
    Ok(())
}

struct LocalAcker(Arc<State>);

fn row_ids(tags: &[DeliveryTag]) -> Vec<i64> {
    tags.iter()
        .filter_map(|t| match t {
            DeliveryTag::Row(id) => Some(*id),
            DeliveryTag::Entry { .. } => None,
        })
        .collect()
}

#[async_trait]
impl Acker for LocalAcker {
    async fn ack(&self, tags: &[DeliveryTag]) -> Result<(), BusError> {
        let ids = row_ids(tags);
        if ids.is_empty() {
            return Ok(());
        }
        let sql = format!(
            "DELETE FROM bus_queue WHERE id IN ({})",
            placeholders(1, ids.len())
        );
        let values = ids.iter().map(|id| Value::from(*id)).collect();
        let tx = self.0.db.begin().await?;
        execute(&tx, &sql, values).await?;
        tx.commit().await?;
        self.0.settle(&ids);
        // Rows of the same keys may be free to go now.
        self.0.wake.notify_one();
        Ok(())
    }

    async fn retry(&self, tag: &DeliveryTag, delay: Duration, error: &str) -> Result<(), BusError> {
        let ids = row_ids(std::slice::from_ref(tag));
        let Some(id) = ids.first() else {
            return Ok(());
        };
        let tx = self.0.db.begin().await?;
        execute(
            &tx,
            "UPDATE bus_queue SET visible_at = $1, locked_by = NULL, locked_until = NULL, last_error = $2 WHERE id = $3",
            vec![
                (now_ms() + delay.as_millis() as i64).into(),
                error.chars().take(2000).collect::<String>().into(),
                (*id).into(),
            ],
        )
        .await?;
        tx.commit().await?;
        self.0.settle(&ids);
        Ok(())
    }
}
