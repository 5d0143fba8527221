//! The payment worker: authorizes the payment of every order whose stock is held, outside
//! any database transaction, at most `max_concurrent` calls at a time (the bulkhead that
//! keeps a slow provider from holding up checkout's consumer or its HTTP requests).
//!
//! An attempt is claimed under a lease, the provider is called with the attempt's id as
//! idempotency key, and the outcome is recorded with the order's new status and events in
//! one transaction (several outcomes per transaction under load). A crash between the call
//! and the record lets the lease run out; the attempt is claimed again and the provider,
//! given the same key, answers as before. Failed calls are retried with backoff; after
//! `max_attempts` the payment counts as declined.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chrono::Utc;
use contracts::checkout::{
    AddressV1, CancelReasonV1, OrderCancelledV1, OrderConfirmedV1, OrderLineV1,
};
use contracts::{Cause, Envelope, Traceparent};
use futures::FutureExt;
use messaging::db::{execute, now_ms, placeholders, query};
use sea_orm::{DatabaseTransaction, Value};
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::State;
use crate::db::queries;
use crate::domain::{Order, OrderStatus, StatusReason};
use crate::payment::{Authorization, AuthorizeRequest, PaymentGateway, PaymentSettings};

pub(crate) struct PaymentWorker {
    pub(crate) state: State,
    pub(crate) gateway: Arc<dyn PaymentGateway>,
    pub(crate) settings: PaymentSettings,
    pub(crate) wake: Arc<Notify>,
    pub(crate) poll: Duration,
}

/// An attempt this worker holds, with what the provider needs to know of its order.
#[derive(Debug, Clone)]
struct Claimed {
    id: Uuid,
    order_id: Uuid,
    attempts: i32,
    cause: Cause,
    /// `None` when the order no longer waits for its payment.
    charge: Option<Charge>,
}

#[derive(Debug, Clone)]
struct Charge {
    amount_minor: i64,
    currency: String,
    token: String,
}

enum Called {
    Answered(Authorization),
    Failed(String),
    /// The order stopped waiting for its payment before the call: nothing was asked.
    NotNeeded,
}

const RECORD_BATCH: usize = 200;

impl PaymentWorker {
    fn lease(&self) -> i64 {
        (self.settings.timeout_ms as i64 * 2).max(10_000)
    }

    pub(crate) async fn run(self, cancel: CancellationToken) {
        let this = Arc::new(self);
        let permits = Arc::new(Semaphore::new(this.settings.max_concurrent));
        let (results_tx, mut results_rx) =
            mpsc::channel::<(Claimed, Called)>(this.settings.max_concurrent * 2);
        let mut calls = JoinSet::new();
        loop {
            let free = permits.available_permits();
            let mut full = false;
            if free > 0 {
                match this.claim(free.min(RECORD_BATCH)).await {
                    Ok(claimed) => {
                        full = claimed.len() == free.min(RECORD_BATCH);
                        for attempt in claimed {
                            let Ok(permit) = permits.clone().acquire_owned().await else {
                                break;
                            };
                            let worker = this.clone();
                            let results = results_tx.clone();
                            calls.spawn(async move {
                                let called = worker.call(&attempt).await;
                                let _ = results.send((attempt, called)).await;
                                drop(permit);
                            });
                        }
                    }
                    Err(e) => {
                        tracing::warn!(module = "checkout", error = %format!("{e:#}"), "claiming payments failed")
                    }
                }
            }
            while calls.try_join_next().is_some() {}
            if full {
                // More may be due: record what has come back, then claim again at once.
                let mut batch = Vec::new();
                while let Some(Some(r)) = results_rx.recv().now_or_never() {
                    batch.push(r);
                    if batch.len() >= RECORD_BATCH {
                        break;
                    }
                }
                if !batch.is_empty() {
                    this.record(batch).await;
                }
                tokio::task::yield_now().await;
                continue;
            }
            tokio::select! {
                _ = cancel.cancelled() => break,
                Some(first) = results_rx.recv() => {
                    let mut batch = vec![first];
                    while batch.len() < RECORD_BATCH {
                        match results_rx.recv().now_or_never() {
                            Some(Some(r)) => batch.push(r),
                            _ => break,
                        }
                    }
                    this.record(batch).await;
                }
                _ = this.wake.notified() => {}
                _ = tokio::time::sleep(this.poll) => {}
            }
        }
        // Shutdown: let calls in flight finish (bounded by their timeout) and record them;
        // anything left is claimed again after a restart.
        drop(results_tx);
        let drain = async {
            while calls.join_next().await.is_some() {}
            let mut batch = Vec::new();
            while let Some(r) = results_rx.recv().await {
                batch.push(r);
            }
            if !batch.is_empty() {
                this.record(batch).await;
            }
        };
        let timeout = Duration::from_millis(this.settings.timeout_ms + 1000);
        if tokio::time::timeout(timeout, drain).await.is_err() {
            tracing::warn!(
                module = "checkout",
                "payments in flight did not finish before shutdown; they will run again"
            );
        }
    }

    async fn claim(&self, limit: usize) -> anyhow::Result<Vec<Claimed>> {
        let now = now_ms();
        let tx = self.state.db.begin().await.context("failed to begin")?;
        let rows = query(
            &tx,
            "UPDATE payment_attempts SET locked_until = $1 WHERE id IN ( \
               SELECT id FROM payment_attempts \
               WHERE status = 'pending' AND next_attempt_at <= $2 AND locked_until < $2 \
               ORDER BY next_attempt_at LIMIT $3 FOR UPDATE SKIP LOCKED) \
             RETURNING id, order_id, attempts, correlation_id, traceparent",
            vec![
                (now + self.lease()).into(),
                now.into(),
                (limit as i64).into(),
            ],
        )
        .await
        .context("failed to claim payment attempts")?;
        tx.commit().await.context("failed to commit the claim")?;
        let mut claimed = rows
            .into_iter()
            .map(|r| {
                let correlation: Option<Uuid> = r.try_get("", "correlation_id")?;
                let traceparent: Option<String> = r.try_get("", "traceparent")?;
                Ok(Claimed {
                    id: r.try_get("", "id")?,
                    order_id: r.try_get("", "order_id")?,
                    attempts: r.try_get("", "attempts")?,
                    cause: Cause {
                        correlation_id: correlation.unwrap_or_else(Uuid::now_v7),
                        causation_id: None,
                        traceparent: traceparent
                            .as_deref()
                            .and_then(Traceparent::parse)
                            .unwrap_or_else(Traceparent::new_root),
                    },
                    charge: None,
                })
            })
            .collect::<anyhow::Result<Vec<Claimed>>>()?;
        let ids: Vec<Uuid> = claimed.iter().map(|c| c.order_id).collect();
        let orders = queries::load_orders(self.state.db.conn(), &ids, false).await?;
        for attempt in &mut claimed {
            attempt.charge = orders
                .get(&attempt.order_id)
                .filter(|o| o.status == OrderStatus::Pending)
                .map(|o| Charge {
                    amount_minor: o.total_minor,
                    currency: o.currency.clone(),
                    token: o.payment_token.clone(),
                });
        }
        Ok(claimed)
    }

    async fn call(&self, attempt: &Claimed) -> Called {
        let Some(charge) = &attempt.charge else {
            return Called::NotNeeded;
        };
        let request = AuthorizeRequest {
            idempotency_key: attempt.id,
            order_id: attempt.order_id,
            amount_minor: charge.amount_minor,
            currency: charge.currency.clone(),
            token: charge.token.clone(),
        };
        let timeout = Duration::from_millis(self.settings.timeout_ms);
        match tokio::time::timeout(timeout, self.gateway.authorize(&request)).await {
            Ok(Ok(answer)) => Called::Answered(answer),
            Ok(Err(e)) => Called::Failed(e.to_string()),
            Err(_) => Called::Failed(format!("no answer within {} ms", timeout.as_millis())),
        }
    }

    async fn record(&self, batch: Vec<(Claimed, Called)>) {
        let all = self.record_in_one(&batch).await;
        let voids = match all {
            Ok(voids) => voids,
            Err(e) => {
                tracing::warn!(module = "checkout", error = %format!("{e:#}"), size = batch.len(), "recording payments failed; recording them one by one");
                let mut voids = Vec::new();
                for item in batch {
                    match self.record_in_one(std::slice::from_ref(&item)).await {
                        Ok(v) => voids.extend(v),
                        Err(e) => {
                            tracing::error!(module = "checkout", order_id = %item.0.order_id, error = %format!("{e:#}"), "recording a payment failed; it will be tried again when its lease runs out")
                        }
                    }
                }
                voids
            }
        };
        for reference in voids {
            if let Err(e) = self.gateway.void(&reference).await {
                tracing::warn!(module = "checkout", reference, error = %e, "voiding an unneeded authorization failed");
            }
        }
    }

    /// Records outcomes in one transaction, a few statements for the whole batch; returns
    /// the authorizations to void.
    async fn record_in_one(&self, batch: &[(Claimed, Called)]) -> anyhow::Result<Vec<String>> {
        let tx = self.state.db.begin().await.context("failed to begin")?;
        let ids: Vec<Uuid> = batch.iter().map(|(a, _)| a.order_id).collect();
        let orders = queries::load_orders(&tx, &ids, true).await?;
        let mut outcome = Outcome::default();
        for (attempt, called) in batch {
            let order = orders
                .get(&attempt.order_id)
                .with_context(|| format!("order {} is missing", attempt.order_id))?;
            match called {
                Called::NotNeeded => outcome.finish(attempt.id, "voided", None, None),
                Called::Answered(Authorization::Approved { reference }) => {
                    if order.status.on_payment(true).is_some() {
                        outcome.confirmed.push(order.id);
                        outcome.events.push(confirmed(order, &attempt.cause)?);
                        outcome.finish(attempt.id, "approved", Some(reference), None);
                    } else {
                        // Cancelled while the provider was answering: release the money.
                        outcome.finish(attempt.id, "voided", Some(reference), None);
                        outcome.voids.push(reference.clone());
                    }
                }
                Called::Answered(Authorization::Declined { reason }) => {
                    outcome.decline(order, attempt, reason)?;
                }
                Called::Failed(error) => {
                    let attempts = attempt.attempts + 1;
                    if attempts >= self.settings.max_attempts {
                        tracing::error!(module = "checkout", order_id = %order.id, attempts, error, "the payment provider kept failing; the payment counts as declined");
                        outcome.decline(order, attempt, error)?;
                    } else {
                        let delay = backoff(attempts);
                        tracing::warn!(module = "checkout", order_id = %order.id, attempts, error, delay_ms = delay.as_millis() as u64, "the payment call failed; retrying");
                        outcome
                            .retries
                            .push((attempt.id, attempts, delay, error.clone()));
                    }
                }
            }
        }
        queries::set_statuses(&tx, &outcome.confirmed, OrderStatus::Confirmed, None).await?;
        queries::set_statuses(
            &tx,
            &outcome.declined,
            OrderStatus::Rejected,
            Some(StatusReason::PaymentDeclined),
        )
        .await?;
        finish_many(&tx, &outcome.finished).await?;
        for (id, attempts, delay, error) in outcome.retries {
            execute(
                &tx,
                "UPDATE payment_attempts SET attempts = $1, next_attempt_at = $2, locked_until = 0, last_error = $3, updated_at = $4 WHERE id = $5",
                vec![
                    attempts.into(),
                    (now_ms() + delay.as_millis() as i64).into(),
                    error.into(),
                    Utc::now().into(),
                    id.into(),
                ],
            )
            .await?;
        }
        if !outcome.confirmed.is_empty() {
            tracing::info!(
                module = "checkout",
                orders = outcome.confirmed.len(),
                "payments approved; orders confirmed"
            );
        }
        self.state.outbox.append(&tx, &outcome.events).await?;
        self.state
            .outbox
            .commit(tx)
            .await
            .context("failed to commit payment outcomes")?;
        Ok(outcome.voids)
    }
}

/// What a batch of payment outcomes changes.
#[derive(Default)]
struct Outcome {
    confirmed: Vec<Uuid>,
    declined: Vec<Uuid>,
    finished: Vec<Finished>,
    retries: Vec<(Uuid, i32, Duration, String)>,
    events: Vec<Envelope>,
    voids: Vec<String>,
}

impl Outcome {
    fn finish(
        &mut self,
        id: Uuid,
        status: &'static str,
        reference: Option<&String>,
        error: Option<&str>,
    ) {
        self.finished.push(Finished {
            id,
            status,
            reference: reference.cloned(),
            error: error.map(str::to_owned),
        });
    }

    /// A declined payment rejects the order (if it still waits) and releases its stock.
    fn decline(&mut self, order: &Order, attempt: &Claimed, reason: &str) -> anyhow::Result<()> {
        if order.status.on_payment(false).is_some() {
            self.declined.push(order.id);
            self.events.push(Envelope::new(
                &OrderCancelledV1 {
                    order_id: order.id,
                    reason: CancelReasonV1::PaymentDeclined,
                },
                &attempt.cause,
            )?);
            tracing::info!(module = "checkout", order_id = %order.id, reason, "payment declined; order rejected");
        }
        self.finish(attempt.id, "declined", None, Some(reason));
        Ok(())
    }
}

/// A payment attempt's final state.
struct Finished {
    id: Uuid,
    status: &'static str,
    reference: Option<String>,
    error: Option<String>,
}

/// Records final states of many attempts in one statement.
async fn finish_many(tx: &DatabaseTransaction, finished: &[Finished]) -> anyhow::Result<()> {
    if finished.is_empty() {
        return Ok(());
    }
    let mut values: Vec<Value> = Vec::with_capacity(finished.len() * 5 + 1);
    let (mut status, mut reference, mut error) = (String::new(), String::new(), String::new());
    for (i, f) in finished.iter().enumerate() {
        let n = i * 4;
        status.push_str(&format!(" WHEN ${} THEN ${}", n + 1, n + 2));
        reference.push_str(&format!(" WHEN ${} THEN ${}", n + 1, n + 3));
        error.push_str(&format!(" WHEN ${} THEN ${}", n + 1, n + 4));
        values.push(f.id.into());
        values.push(f.status.into());
        values.push(Value::String(f.reference.clone()));
        values.push(Value::String(f.error.clone()));
    }
    let now = values.len() + 1;
    values.push(Utc::now().into());
    let first = values.len() + 1;
    values.extend(finished.iter().map(|f| Value::from(f.id)));
    let sql = format!(
        "UPDATE payment_attempts SET status = CASE id{status} END, \
         reference = COALESCE(CASE id{reference} END, reference), \
         last_error = COALESCE(CASE id{error} END, last_error), updated_at = ${now} \
         WHERE id IN ({})",
        placeholders(first, finished.len())
    );
    execute(tx, &sql, values)
        .await
        .context("failed to record payment attempts")?;
    Ok(())
}

fn confirmed(order: &Order, cause: &Cause) -> anyhow::Result<Envelope> {
    let a = &order.shipping_address;
    Ok(Envelope::new(
        &OrderConfirmedV1 {
            order_id: order.id,
            lines: order
                .lines
                .iter()
                .map(|l| OrderLineV1 {
                    sku: l.sku.clone(),
                    quantity: l.quantity,
                    unit_price_minor: l.unit_price_minor,
                })
                .collect(),
            currency: order.currency.clone(),
            total_minor: order.total_minor,
            customer_email: order.customer_email.clone(),
            shipping_address: AddressV1 {
                name: a.name.clone(),
                line1: a.line1.clone(),
                line2: a.line2.clone(),
                city: a.city.clone(),
                postal_code: a.postal_code.clone(),
                country: a.country.clone(),
            },
        },
        cause,
    )?)
}

/// Delay before retry `attempt` of a failed call: 100 ms doubling, full jitter, capped at
/// 30 s.
fn backoff(attempt: i32) -> Duration {
    let exponent = (attempt.max(1) - 1).min(20) as u32;
    let ceiling = (100_u64 << exponent).min(30_000);
    Duration::from_millis(fastrand::u64(0..=ceiling))
}
