//! The consumer's engine: the delivery loop of a subscription, in batches, each in one
//! transaction; attempts and crashes counted against `max_attempts`; each delivery settled
//! (acknowledged, retried, postponed or parked); and the dead letters an operator asked to
//! replay.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use contracts::Envelope;
use futures::{FutureExt, StreamExt};
use sea_orm::DbErr;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tracing::Instrument;
use uuid::Uuid;

use super::handler::{Handler, HandlerError};
use super::inbox::{already_processed, claim_inbox_keys};
use crate::bus::{Acker, Delivery, DeliveryTag, Subscription};
use crate::dead_letters;
use crate::faults::Faults;
use crate::outbox::Outbox;
use crate::progress::{self, Progress};
use crate::publish::Tx;
use crate::settings::MessagingSettings;
use store::ModuleDb;

/// Runs a module's handlers on its subscription.
pub struct Consumer {
    pub db: ModuleDb,
    pub outbox: Outbox,
    pub handlers: Vec<Arc<dyn Handler>>,
    pub settings: MessagingSettings,
    pub faults: Faults,
    /// Woken when an operator asks for a dead letter to be replayed.
    pub replays: Arc<Notify>,
    /// What the progress watchdog and readiness read.
    pub progress: Arc<Progress>,
}

/// A delivery whose envelope was read, with the handlers that take it.
pub(super) struct Ready {
    pub(super) delivery: Delivery,
    pub(super) envelope: Envelope,
    pub(super) handlers: Vec<Arc<dyn Handler>>,
}

enum Outcome {
    Retry(Duration, String),
    Dead(String),
}

const REPLAY_POLL: Duration = Duration::from_secs(1);

/// A consumer with work that settles nothing for this many leases is reported stalled.
const STALL_AFTER_LEASES: u32 = 3;

impl Consumer {
    pub async fn run(self, subscription: Subscription, cancel: CancellationToken) {
        let Subscription {
            mut deliveries,
            acker,
            reader,
        } = subscription;
        // Every counter of the subscription exists from the start, at zero, so a rate over
        // it reads 0 rather than nothing until the first retry or dead letter.
        let module = self.db.module();
        for family in [
            "events_handled_total",
            "event_retries_total",
            "dead_letters_total",
        ] {
            metrics::counter!(family, "module" => module).increment(0);
        }
        let lease = Duration::from_millis(self.settings.lease_ms);
        // Ends with this task, however it ends (an abort included): it holds the acker,
        // and with it what the subscription holds.
        let watchdog = AbortOnDropHandle::new(tokio::spawn(progress::watch(
            self.progress.clone(),
            acker.clone(),
            lease / 3,
            lease * STALL_AFTER_LEASES,
            cancel.child_token(),
        )));
        let mut replay_tick = tokio::time::interval(REPLAY_POLL);
        replay_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let first = tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                _ = self.replays.notified() => { self.replay().await; continue }
                _ = replay_tick.tick() => { self.replay().await; continue }
                next = deliveries.next() => match next {
                    Some(d) => d,
                    None => break,
                },
            };
            let mut batch = vec![first];
            while batch.len() < self.settings.consumer_batch {
                match deliveries.next().now_or_never() {
                    Some(Some(d)) => batch.push(d),
                    _ => break,
                }
            }
            self.progress.started_batch();
            self.process(batch, acker.as_ref()).await;
            self.progress.settled();
        }
        drop(watchdog);
        // Close the subscription and let the bus's reader hand back what it holds.
        drop(deliveries);
        if let Some(reader) = reader
            && tokio::time::timeout(Duration::from_secs(5), reader)
                .await
                .is_err()
        {
            tracing::warn!(
                module = self.db.module(),
                "the bus reader did not stop in time"
            );
        }
        tracing::debug!(module = self.db.module(), "consumer stopped");
    }

    async fn process(&self, batch: Vec<Delivery>, acker: &dyn Acker) {
        let module = self.db.module();
        let mut done: Vec<DeliveryTag> = Vec::with_capacity(batch.len());
        let mut ready = Vec::with_capacity(batch.len());
        for delivery in batch {
            let envelope = match Envelope::from_bytes(&delivery.raw) {
                Ok(e) => e,
                Err(reason) => {
                    let error = format!("undecodable envelope: {reason}");
                    if self.park(&delivery, None, &[], &error, acker).await {
                        done.push(delivery.tag);
                    }
                    continue;
                }
            };
            let handlers = self.handlers_of(&envelope);
            if handlers.is_empty() {
                done.push(delivery.tag);
                continue;
            }
            let contract = contracts::event_type_named(&envelope.event_type)
                .map(|t| (t.check)(&envelope))
                .unwrap_or_else(|| {
                    Err(contracts::ContractError::Undecodable {
                        event_type: envelope.event_type.clone(),
                        reason: "unknown event type".into(),
                    })
                });
            if let Err(e) = contract {
                if self
                    .park(&delivery, Some(&envelope), &handlers, &e.to_string(), acker)
                    .await
                {
                    done.push(delivery.tag);
                }
                continue;
            }
            if delivery.attempt > self.settings.max_attempts {
                // Every earlier delivery ended without a settlement: the consumer crashed
                // or lost its claim each time. A crash counts as an attempt, so an event
                // that kills its consumer ends here instead of coming back for ever.
                let item = Ready {
                    delivery,
                    envelope,
                    handlers,
                };
                match already_processed(&self.db, &item).await {
                    Ok(true) => done.push(item.delivery.tag),
                    Ok(false) => {
                        let error = format!(
                            "delivered {} times without being settled (the consumer crashed or lost its claim each time)",
                            item.delivery.attempt - 1
                        );
                        if self
                            .park(
                                &item.delivery,
                                Some(&item.envelope),
                                &item.handlers,
                                &error,
                                acker,
                            )
                            .await
                        {
                            done.push(item.delivery.tag);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(module, error = %format!("{e:#}"), "reading the inbox failed; the event will come back");
                        self.retry_later(&item.delivery, &format!("{e:#}"), acker)
                            .await;
                    }
                }
                continue;
            }
            ready.push(Ready {
                delivery,
                envelope,
                handlers,
            });
        }
        if !ready.is_empty() {
            match self.handle(&ready).await {
                Ok(()) => {
                    metrics::counter!("events_handled_total", "module" => module)
                        .increment(ready.len() as u64);
                    done.extend(ready.into_iter().map(|r| r.delivery.tag));
                }
                Err(e) if is_unavailable(&e) => {
                    // The module's own database is out of reach: no event is at fault, so
                    // the batch is not split (each event alone would wait out its own
                    // connection timeout) and nobody is parked; all come back later.
                    tracing::warn!(module, error = %e, size = ready.len(), "the database is out of reach; the batch will be retried");
                    for item in &ready {
                        let delay = self.settings.backoff(item.delivery.attempt);
                        if let Err(e) = acker
                            .postpone(&item.delivery.tag, delay, &e.to_string())
                            .await
                        {
                            tracing::warn!(module, error = %e, "postponing the event failed; it will come back when its claim lapses");
                        }
                    }
                }
                Err(e) if ready.len() == 1 => {
                    if let Some(tag) = self.settle_failure(&ready[0], e, acker).await {
                        done.push(tag);
                    }
                }
                Err(e) => {
                    tracing::debug!(module, error = %e, size = ready.len(), "batch failed; handling its events one by one");
                    for item in &ready {
                        let outcome = match self.handle(std::slice::from_ref(item)).await {
                            Ok(()) => {
                                metrics::counter!("events_handled_total", "module" => module)
                                    .increment(1);
                                Some(item.delivery.tag.clone())
                            }
                            Err(e) => self.settle_failure(item, e, acker).await,
                        };
                        done.extend(outcome);
                    }
                }
            }
        }
        if !done.is_empty()
            && let Err(e) = acker.ack(&done).await
        {
            tracing::warn!(module, error = %e, count = done.len(), "acknowledging failed; the events will come back and be skipped as duplicates");
        }
    }

    /// Decides what a failed event's delivery becomes; the tag when it is settled here.
    async fn settle_failure(
        &self,
        item: &Ready,
        error: HandlerError,
        acker: &dyn Acker,
    ) -> Option<DeliveryTag> {
        let module = self.db.module();
        let attempt = item.delivery.attempt;
        if is_unavailable(&error) {
            let delay = self.settings.backoff(attempt);
            tracing::warn!(module, event_id = %item.envelope.id, error = %error, "the database is out of reach; the event will be retried");
            if let Err(e) = acker
                .postpone(&item.delivery.tag, delay, &error.to_string())
                .await
            {
                tracing::warn!(module, error = %e, "postponing the event failed; it will come back when its claim lapses");
            }
            return None;
        }
        let outcome = match error {
            HandlerError::Reject(reason) => Outcome::Dead(reason),
            HandlerError::Retry(e) if attempt >= self.settings.max_attempts => {
                Outcome::Dead(format!("{e:#}"))
            }
            HandlerError::Retry(e) => {
                Outcome::Retry(self.settings.backoff(attempt), format!("{e:#}"))
            }
        };
        let envelope = &item.envelope;
        match outcome {
            Outcome::Retry(delay, error) => {
                tracing::warn!(
                    module, event_id = %envelope.id, event_type = %envelope.event_type,
                    trace_id = envelope.trace_id().unwrap_or_default(), attempt,
                    delay_ms = delay.as_millis() as u64, error = %error,
                    "handling failed; retrying later"
                );
                metrics::counter!("event_retries_total", "module" => module).increment(1);
                if let Err(e) = acker.retry(&item.delivery.tag, delay, &error).await {
                    tracing::warn!(module, error = %e, "scheduling the retry failed; the event will come back when its claim expires");
                }
                None
            }
            Outcome::Dead(error) => {
                if self
                    .park(
                        &item.delivery,
                        Some(envelope),
                        &item.handlers,
                        &error,
                        acker,
                    )
                    .await
                {
                    Some(item.delivery.tag.clone())
                } else {
                    None
                }
            }
        }
    }

    /// Schedules a delivery to come back after a backoff; if even that fails, the bus
    /// has settled it anyway and it comes back when its claim lapses.
    async fn retry_later(&self, delivery: &Delivery, error: &str, acker: &dyn Acker) {
        let delay = self.settings.backoff(delivery.attempt);
        if let Err(e) = acker.retry(&delivery.tag, delay, error).await {
            tracing::warn!(module = self.db.module(), error = %e, "scheduling the retry failed; the event will come back when its claim lapses");
        }
    }

    /// Records a dead letter; false if even that failed (the delivery is then scheduled
    /// to come back, and parked on a later delivery).
    async fn park(
        &self,
        delivery: &Delivery,
        envelope: Option<&Envelope>,
        handlers: &[Arc<dyn Handler>],
        error: &str,
        acker: &dyn Acker,
    ) -> bool {
        let module = self.db.module();
        let names: Vec<&str> = handlers.iter().map(|h| h.name()).collect();
        let letter = dead_letters::NewDeadLetter {
            event_id: envelope.map(|e| e.id),
            event_type: envelope.map(|e| e.event_type.clone()),
            handlers: names.join(","),
            raw: delivery.raw.to_vec(),
            attempts: delivery.attempt as i32,
            error: error.to_owned(),
        };
        match dead_letters::record(&self.db, letter).await {
            Ok(id) => {
                tracing::error!(
                    module, dead_letter_id = id,
                    event_id = %envelope.map(|e| e.id.to_string()).unwrap_or_default(),
                    event_type = %envelope.map(|e| e.event_type.as_str()).unwrap_or("?"),
                    attempts = delivery.attempt, error,
                    "event parked in the dead-letter store"
                );
                metrics::counter!("dead_letters_total", "module" => module).increment(1);
                true
            }
            Err(e) => {
                tracing::error!(module, error = %format!("{e:#}"), "recording a dead letter failed; the event will come back");
                self.retry_later(delivery, &format!("{e:#}"), acker).await;
                false
            }
        }
    }

    /// [`Self::handle_in_one`], timed: the `consumer_batch_duration_seconds` histogram.
    async fn handle(&self, items: &[Ready]) -> Result<(), HandlerError> {
        let started = Instant::now();
        let result = self.handle_in_one(items).await;
        let outcome = if result.is_ok() { "ok" } else { "failed" };
        metrics::histogram!("consumer_batch_duration_seconds", "module" => self.db.module(), "outcome" => outcome)
            .record(started.elapsed().as_secs_f64());
        result
    }

    /// Handles events in one transaction: inbox keys, handlers, their events, then commit.
    async fn handle_in_one(&self, items: &[Ready]) -> Result<(), HandlerError> {
        let envelopes: Vec<&Envelope> = items.iter().map(|i| &i.envelope).collect();
        let span = crate::trace::consume_span(self.db.module(), &envelopes);
        self.handle_in_one_traced(items).instrument(span).await
    }

    async fn handle_in_one_traced(&self, items: &[Ready]) -> Result<(), HandlerError> {
        let tx = self.db.begin().await?;
        let fresh = claim_inbox_keys(&tx, items).await?;
        self.faults.point("consumer.before_handler").await;
        let mut tx = Tx::new(tx, None, self.outbox.waker());
        self.run_handlers(&mut tx, items, fresh).await?;
        tx.write_outbox().await?;
        self.faults.point("consumer.before_commit").await;
        let committed = tx.commit_written().await?;
        self.faults.point("consumer.after_commit").await;
        committed.run();
        Ok(())
    }

    /// Runs each handler once (each registration: a name that serves two event types has
    /// one for each), on the events of this batch it has not processed before, in batch
    /// order. A copy of an event within the batch runs once.
    async fn run_handlers(
        &self,
        tx: &mut Tx,
        items: &[Ready],
        mut fresh: HashSet<(Uuid, &'static str)>,
    ) -> Result<(), HandlerError> {
        for handler in &self.handlers {
            let events: Vec<&Envelope> = items
                .iter()
                .filter(|item| item.handlers.iter().any(|h| Arc::ptr_eq(h, handler)))
                .filter(|item| fresh.remove(&(item.envelope.id, handler.name())))
                .map(|item| &item.envelope)
                .collect();
            if events.is_empty() {
                continue;
            }
            if events.iter().any(|e| self.faults.fails(e)) {
                return Err(HandlerError::Retry(anyhow::anyhow!("injected failure")));
            }
            if let Some(delay) = events.iter().filter_map(|e| self.faults.slowness(e)).max() {
                tokio::time::sleep(delay).await;
            }
            handler.handle(tx, &events).await?;
        }
        Ok(())
    }

    /// The handlers of `envelope`'s event type, in registration order.
    fn handlers_of(&self, envelope: &Envelope) -> Vec<Arc<dyn Handler>> {
        self.handlers
            .iter()
            .filter(|h| h.event_types().contains(&envelope.event_type.as_str()))
            .cloned()
            .collect()
    }

    /// Handles the dead letters an operator asked to replay. A replayed event runs after
    /// later events of its key already ran; handlers tolerate that. It still goes through
    /// the inbox, so one that had in fact been processed is not processed again.
    async fn replay(&self) {
        let module = self.db.module();
        let requested = match dead_letters::requested(&self.db, 50).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(module, error = %format!("{e:#}"), "reading replay requests failed");
                return;
            }
        };
        for (id, raw) in requested {
            let outcome = match Envelope::from_bytes(&raw) {
                Err(reason) => Err(format!("undecodable envelope: {reason}")),
                Ok(envelope) => {
                    let handlers = self.handlers_of(&envelope);
                    let item = Ready {
                        delivery: Delivery {
                            tag: DeliveryTag::new(ReplayedLetter(id)),
                            raw: Arc::from(raw.clone()),
                            attempt: 1,
                        },
                        envelope,
                        handlers,
                    };
                    self.replay_one(id, &item).await.map_err(|e| e.to_string())
                }
            };
            match outcome {
                Ok(()) => tracing::info!(module, dead_letter_id = id, "dead letter replayed"),
                Err(error) => {
                    tracing::warn!(module, dead_letter_id = id, error = %error, "replay failed; the letter stays dead");
                    if let Err(e) = dead_letters::replay_failed(&self.db, id, &error).await {
                        tracing::warn!(module, error = %format!("{e:#}"), "recording the failed replay failed");
                    }
                }
            }
        }
    }

    async fn replay_one(&self, id: i64, item: &Ready) -> Result<(), HandlerError> {
        if let Some(t) = contracts::event_type_named(&item.envelope.event_type) {
            (t.check)(&item.envelope).map_err(|e| HandlerError::Reject(e.to_string()))?;
        }
        let items = std::slice::from_ref(item);
        let tx = self.db.begin().await?;
        let fresh = claim_inbox_keys(&tx, items).await?;
        let mut tx = Tx::new(tx, None, self.outbox.waker());
        self.run_handlers(&mut tx, items, fresh).await?;
        dead_letters::mark_replayed(&tx, id).await?;
        tx.commit().await?;
        Ok(())
    }
}

/// What the tag of a replayed dead letter holds (its id): the delivery is made up here,
/// and no bus ever sees its tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct ReplayedLetter(i64);

/// True for an error that says the module's database cannot be reached at all (no
/// connection to be had), as opposed to an error of this event's work.
fn is_unavailable(error: &HandlerError) -> bool {
    let HandlerError::Retry(e) = error else {
        return false;
    };
    e.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<DbErr>(),
            Some(DbErr::ConnectionAcquire(_) | DbErr::Conn(_))
        )
    })
}
