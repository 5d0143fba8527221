//! The payment worker: authorizes the payment of every order whose stock is held, outside
//! any database transaction, at most `max_concurrent` calls at a time (the bulkhead that
//! keeps a slow provider from holding up checkout's consumer or its HTTP requests).
//!
//! An attempt is claimed under a lease, the provider is called with the attempt's id as
//! idempotency key, and the outcome is recorded with the order's new status and events in
//! one transaction (several outcomes per transaction under load). A crash between the call
//! and the record lets the lease run out; the attempt is claimed again and the provider,
//! given the same key, answers as before.
//!
//! A transient failure (no answer in `timeout_ms`, the provider unavailable) is retried
//! on messaging's backoff, or later if the provider asked for later, and never declines
//! the order by itself: an order is declined by the provider's answer or its refusal of
//! the request, not by its outage. Transient failures count against the circuit breaker;
//! while it is open nothing is claimed, so orders whose stock is held wait, pending, and
//! proceed once it lets calls through again. The order watchdog reports orders that wait
//! past their deadline.
//!
//! An outcome is recorded only if its attempt is still pending under the very claim that
//! asked for it (the claim's lease end is its fence). An outcome that comes back after
//! its lease ran out and another claim took the attempt over is dropped: the newer claim
//! records the same answer, so an attempt settles once and an order confirmed by its
//! payment is never voided by a late copy of that payment.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chrono::Utc;
use contracts::checkout::{AddressV1, CancelReasonV1, OrderCancelledV1, OrderConfirmedV1};
use contracts::{Cause, Envelope, Traceparent};
use futures::FutureExt;
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use crate::State;
use crate::db::payments::{self, Finished};
use crate::db::queries;
use crate::domain::{
    Order, OrderStatus, PaymentAnswer, PaymentStatus, Resolution, Settlement, StatusReason, Target,
    resolve,
};
use crate::payment::breaker::Breaker;
use crate::payment::{
    Authorization, AuthorizeRequest, GatewayError, PaymentGateway, PaymentSettings,
};

pub(crate) struct PaymentWorker {
    pub(crate) state: State,
    pub(crate) gateway: Arc<dyn PaymentGateway>,
    pub(crate) breaker: Arc<Breaker>,
    pub(crate) settings: PaymentSettings,
    pub(crate) wake: Arc<Notify>,
    pub(crate) poll: Duration,
    /// How long a claim lasts (see [`PaymentSettings::lease_ms`]).
    pub(crate) lease_ms: i64,
}

/// An attempt this worker holds, with what the provider needs to know of its order.
#[derive(Debug, Clone)]
struct Claimed {
    id: Uuid,
    order_id: Uuid,
    attempts: i32,
    /// The lease end this claim wrote: the attempt is still this claim's while its
    /// `locked_until` holds this value (every claim writes a later one).
    fence: i64,
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
    /// A transient failure: retried after the delay.
    Failed {
        error: String,
        retry_after: Option<Duration>,
    },
    /// The provider refused the request itself: the payment counts as declined.
    Refused(String),
    /// The order stopped waiting for its payment before the call: nothing was asked.
    NotNeeded,
    /// The circuit breaker opened between the claim and the call: nothing was asked, and
    /// the attempt is released as it was.
    Held,
}

impl Called {
    /// The answer as the payment's rules know it.
    fn answer(&self) -> PaymentAnswer {
        match self {
            Called::Answered(Authorization::Approved { .. }) => PaymentAnswer::Approved,
            Called::Answered(Authorization::Declined { .. }) | Called::Refused(_) => {
                PaymentAnswer::Declined
            }
            Called::Failed { .. } => PaymentAnswer::Unavailable,
            Called::NotNeeded => PaymentAnswer::NotAsked,
            Called::Held => PaymentAnswer::Held,
        }
    }
}

const RECORD_BATCH: usize = 200;

/// Milliseconds since the epoch: how attempts store their times.
fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

impl PaymentWorker {
    pub(crate) async fn run(self, cancel: CancellationToken) {
        let this = Arc::new(self);
        let permits = Arc::new(Semaphore::new(this.settings.max_concurrent));
        let (results_tx, results_rx) =
            mpsc::channel::<(Claimed, Called)>(this.settings.max_concurrent * 2);
        // Outcomes are recorded by a task of their own, while this loop claims and calls:
        // claiming and recording each cost a few round trips, and done one after the other
        // they bounded the worker to one batch per round, which a busy machine (every
        // await queued behind the HTTP requests) slowed below the rate orders arrive at.
        // An outcome waits for its record at most the channel's length; while the channel
        // is full, calls cannot hand theirs over and keep their permit, so nothing more is
        // claimed: outcomes never pile up until their lease runs out.
        let recorder = tokio::spawn(this.clone().record_all(results_rx));
        let mut calls = JoinSet::new();
        loop {
            // The bulkhead's free places, and no more calls than the breaker lets through.
            let free = permits
                .available_permits()
                .min(this.breaker.admits())
                .min(RECORD_BATCH);
            let mut full = false;
            if free > 0 {
                match this.claim(free).await {
                    Ok(claimed) => {
                        full = claimed.len() == free;
                        for attempt in claimed {
                            let Ok(permit) = permits.clone().acquire_owned().await else {
                                break;
                            };
                            let worker = this.clone();
                            let results = results_tx.clone();
                            calls.spawn(async move {
                                let mut attempt = attempt;
                                let span = payment_span(&mut attempt);
                                let called = worker.call(&attempt).instrument(span).await;
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
            if full || permits.available_permits() == 0 {
                // More may be due: claim again as soon as a place in the bulkhead is free.
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    place = permits.acquire() => {
                        drop(place);
                        continue;
                    }
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = this.wake.notified() => {}
                _ = tokio::time::sleep(this.poll) => {}
            }
        }
        // Shutdown: let calls in flight finish (bounded by their timeout) and record them;
        // anything left is claimed again after a restart.
        drop(results_tx);
        let drain = async {
            while calls.join_next().await.is_some() {}
            let _ = recorder.await;
        };
        let timeout = Duration::from_millis(this.settings.timeout_ms + 1000);
        if tokio::time::timeout(timeout, drain).await.is_err() {
            tracing::warn!(
                module = "checkout",
                "payments in flight did not finish before shutdown; they will run again"
            );
        }
    }

    /// Records outcomes as they come back, as many per transaction as are waiting (up to
    /// [`RECORD_BATCH`]), until every call has handed its outcome over.
    async fn record_all(self: Arc<Self>, mut results: mpsc::Receiver<(Claimed, Called)>) {
        while let Some(first) = results.recv().await {
            let mut batch = vec![first];
            while batch.len() < RECORD_BATCH {
                match results.recv().now_or_never() {
                    Some(Some(r)) => batch.push(r),
                    _ => break,
                }
            }
            self.record(batch).await;
        }
    }

    async fn claim(&self, limit: usize) -> anyhow::Result<Vec<Claimed>> {
        let now = now_ms();
        // Only attempts whose lease ended before `now` are claimed, and this lease ends
        // after it: each claim of an attempt writes a lease end of its own, its fence.
        let fence = now + self.lease_ms.max(1);
        let tx = self.state.db.begin().await.context("failed to begin")?;
        let rows = payments::claim(&tx, fence, now, limit).await?;
        tx.commit().await.context("failed to commit the claim")?;
        let mut claimed: Vec<Claimed> = rows
            .into_iter()
            .map(|r| Claimed {
                id: r.id,
                order_id: r.order_id,
                attempts: r.attempts,
                fence,
                cause: Cause {
                    correlation_id: r.correlation_id.unwrap_or_else(Uuid::now_v7),
                    causation_id: None,
                    traceparent: r
                        .traceparent
                        .as_deref()
                        .and_then(Traceparent::parse)
                        .unwrap_or_else(Traceparent::new_root),
                },
                charge: None,
            })
            .collect();
        let ids: Vec<Uuid> = claimed.iter().map(|c| c.order_id).collect();
        let orders = queries::load_orders(self.state.db.conn(), &ids, false).await?;
        for attempt in &mut claimed {
            attempt.charge = orders
                .get(&attempt.order_id)
                .filter(|o| o.status.awaits_payment())
                .map(|o| Charge {
                    amount_minor: o.total.minor(),
                    currency: o.total.currency().to_string(),
                    token: o.payment_token.clone(),
                });
        }
        Ok(claimed)
    }

    async fn call(&self, attempt: &Claimed) -> Called {
        let called = self.ask(attempt).await;
        tracing::Span::current().record(
            "outcome",
            match &called {
                Called::Answered(Authorization::Approved { .. }) => "approved",
                Called::Answered(Authorization::Declined { .. }) => "declined",
                Called::Failed { .. } => "failed",
                Called::Refused(_) => "refused",
                Called::NotNeeded => "not_needed",
                Called::Held => "held",
            },
        );
        called
    }

    async fn ask(&self, attempt: &Claimed) -> Called {
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
        let Some(pass) = self.breaker.pass() else {
            return Called::Held;
        };
        let timeout = Duration::from_millis(self.settings.timeout_ms);
        let called = match tokio::time::timeout(timeout, self.gateway.authorize(&request)).await {
            Ok(Ok(answer)) => Called::Answered(answer),
            Ok(Err(GatewayError::Refused(reason))) => Called::Refused(reason),
            Ok(Err(e @ GatewayError::Unavailable { .. })) => Called::Failed {
                error: e.to_string(),
                retry_after: match e {
                    GatewayError::Unavailable { retry_after, .. } => retry_after,
                    GatewayError::Refused(_) => None,
                },
            },
            Err(_) => Called::Failed {
                error: format!("no answer within {} ms", timeout.as_millis()),
                retry_after: None,
            },
        };
        self.breaker
            .record(pass, !matches!(called, Called::Failed { .. }));
        called
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
        // Bounded like every call to the provider: a hanging void must not stop the worker.
        let timeout = Duration::from_millis(self.settings.timeout_ms);
        for reference in voids {
            match tokio::time::timeout(timeout, self.gateway.void(&reference)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(module = "checkout", reference, error = %e, "voiding an unneeded authorization failed")
                }
                Err(_) => {
                    tracing::warn!(
                        module = "checkout",
                        reference,
                        timeout_ms = self.settings.timeout_ms,
                        "voiding an unneeded authorization got no answer in time"
                    )
                }
            }
        }
    }

    /// Records outcomes in one transaction, a few statements for the whole batch; returns
    /// the authorizations to void.
    async fn record_in_one(&self, batch: &[(Claimed, Called)]) -> anyhow::Result<Vec<String>> {
        let tx = self.state.db.begin().await.context("failed to begin")?;
        let ids: Vec<Uuid> = batch.iter().map(|(a, _)| a.order_id).collect();
        // Orders first, then attempts: the order every writer of both locks them in.
        let orders = queries::load_orders(&tx, &ids, true).await?;
        let claims: Vec<Uuid> = batch.iter().map(|(a, _)| a.id).collect();
        let current = payments::lock_pending(&tx, &claims).await?;
        let mut outcome = Outcome::default();
        for (attempt, called) in batch {
            if !current.contains(&(attempt.id, attempt.fence)) {
                tracing::info!(module = "checkout", order_id = %attempt.order_id, "a payment outcome came back after its claim was taken over or settled; dropped");
                continue;
            }
            let order = orders
                .get(&attempt.order_id)
                .with_context(|| format!("order {} is missing", attempt.order_id))?;
            match resolve(order.status, called.answer()) {
                Resolution::Retry => {
                    let Called::Failed { error, retry_after } = called else {
                        anyhow::bail!("only a call that failed is asked again");
                    };
                    let attempts = attempt.attempts + 1;
                    let delay = self.settings.retry_delay(attempts, *retry_after);
                    tracing::warn!(module = "checkout", order_id = %order.id, attempts, error, delay_ms = delay.as_millis() as u64, "the payment call failed; retrying");
                    outcome
                        .retries
                        .push((attempt.id, attempts, delay, error.clone()));
                }
                Resolution::Release => outcome.held.push(attempt.id),
                Resolution::Settle(settled) => {
                    let (reference, reason) = match called {
                        Called::Answered(Authorization::Approved { reference }) => {
                            (Some(reference), None)
                        }
                        Called::Answered(Authorization::Declined { reason }) => {
                            (None, Some(reason.as_str()))
                        }
                        Called::Refused(reason) => {
                            tracing::error!(module = "checkout", order_id = %order.id, reason, "the payment provider refused the request; the payment counts as declined");
                            (None, Some(reason.as_str()))
                        }
                        _ => (None, None),
                    };
                    outcome.settle(order, attempt, settled, reference, reason)?;
                }
            }
        }
        for ((status, reason), ids) in &outcome.moved {
            queries::set_statuses(&tx, ids, *status, *reason).await?;
        }
        payments::finish_many(&tx, &outcome.finished, Utc::now()).await?;
        payments::release(&tx, &outcome.held).await?;
        for (id, attempts, delay, error) in &outcome.retries {
            let due = now_ms() + delay.as_millis() as i64;
            payments::retry(&tx, *id, *attempts, due, error, Utc::now()).await?;
        }
        let confirmed = outcome.count(OrderStatus::Confirmed, None);
        let declined = outcome.count(OrderStatus::Rejected, Some(StatusReason::PaymentDeclined));
        if confirmed > 0 {
            tracing::info!(
                module = "checkout",
                orders = confirmed,
                "payments approved; orders confirmed"
            );
        }
        self.state.outbox.append(&tx, &outcome.events).await?;
        self.state
            .outbox
            .commit(tx)
            .await
            .context("failed to commit payment outcomes")?;
        crate::counters::orders_confirmed(confirmed);
        crate::counters::orders_rejected(StatusReason::PaymentDeclined, declined);
        Ok(outcome.voids)
    }
}

/// The span one payment attempt runs under: a child of the span that published the
/// reservation it follows (stored with the attempt), and the span its outcome's events are
/// published under, so the trace goes on through the payment to fulfillment. The worker's
/// own task span lives as long as the process and is never exported; nothing of an order's
/// trace may hang under it.
fn payment_span(attempt: &mut Claimed) -> tracing::Span {
    let span = tracing::info_span!(
        "payment authorize",
        module = "checkout",
        otel.kind = "client",
        order_id = %attempt.order_id,
        attempt = attempt.attempts + 1,
        outcome = tracing::field::Empty,
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
    );
    messaging::trace::adopt(&span, &attempt.cause.traceparent);
    if let Some(own) = messaging::trace::traceparent_of(&span) {
        attempt.cause.traceparent = own;
    }
    span
}

/// What a batch of payment outcomes changes.
#[derive(Default)]
struct Outcome {
    /// The orders moved, by where they went: one statement each.
    moved: Vec<(Target, Vec<Uuid>)>,
    finished: Vec<Finished>,
    retries: Vec<(Uuid, i32, Duration, String)>,
    /// Attempts released untouched: claimable again at once.
    held: Vec<Uuid>,
    events: Vec<Envelope>,
    voids: Vec<String>,
}

impl Outcome {
    fn finish(
        &mut self,
        id: Uuid,
        status: PaymentStatus,
        reference: Option<&String>,
        error: Option<&str>,
    ) -> anyhow::Result<()> {
        // Only attempts still pending under this claim get here (they were locked so).
        anyhow::ensure!(
            PaymentStatus::Pending.may_become(status),
            "a pending payment attempt cannot become {}",
            status.as_str()
        );
        self.finished.push(Finished {
            id,
            status,
            reference: reference.cloned(),
            error: error.map(str::to_owned),
        });
        Ok(())
    }

    /// Orders moved to `status` for `reason` in this batch.
    fn count(&self, status: OrderStatus, reason: Option<StatusReason>) -> u64 {
        self.moved
            .iter()
            .filter(|(to, _)| *to == (status, reason))
            .map(|(_, ids)| ids.len() as u64)
            .sum()
    }

    fn moves(&mut self, to: Target, order: Uuid) {
        match self.moved.iter_mut().find(|(t, _)| *t == to) {
            Some((_, ids)) => ids.push(order),
            None => self.moved.push((to, vec![order])),
        }
    }

    /// Applies how an answer settled an attempt: a confirmed order is announced; a
    /// declined one is rejected and its stock released (`order_cancelled`); an approval
    /// the order no longer needs (cancelled while the provider was answering) is voided.
    fn settle(
        &mut self,
        order: &Order,
        attempt: &Claimed,
        settled: Settlement,
        reference: Option<&String>,
        reason: Option<&str>,
    ) -> anyhow::Result<()> {
        match settled.order {
            Some(to @ (OrderStatus::Confirmed, _)) => {
                self.moves(to, order.id.as_uuid());
                self.events.push(confirmed(order, &attempt.cause)?);
            }
            Some(to @ (OrderStatus::Rejected, _)) => {
                self.moves(to, order.id.as_uuid());
                self.events.push(Envelope::new(
                    &OrderCancelledV1 {
                        order_id: order.id.as_uuid(),
                        reason: CancelReasonV1::PaymentDeclined,
                    },
                    &attempt.cause,
                )?);
                tracing::info!(module = "checkout", order_id = %order.id, reason, "payment declined; order rejected");
            }
            Some((other, _)) => anyhow::bail!("a payment cannot make an order {other}"),
            None => {}
        }
        if settled.void
            && let Some(reference) = reference
        {
            self.voids.push(reference.clone());
        }
        self.finish(attempt.id, settled.payment, reference, reason)
    }
}

fn confirmed(order: &Order, cause: &Cause) -> anyhow::Result<Envelope> {
    let a = &order.shipping_address;
    Ok(Envelope::new(
        &OrderConfirmedV1 {
            order_id: order.id.as_uuid(),
            lines: super::event_lines(order),
            currency: order.total.currency().to_string(),
            total_minor: order.total.minor(),
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

#[cfg(test)]
mod tests {
    //! Two claims of one attempt, played out step by step: the checkout app places the
    //! orders and stops, then payment workers sharing its database claim, call and record
    //! in the order a test chooses, against a provider that keeps what it was asked.

    use std::collections::HashMap;
    use std::sync::Mutex;

    use async_trait::async_trait;
    use contracts::catalog::ProductPublishedV1;
    use messaging::{ModuleDb, Outbox};
    use testkit::{Backend, RecordingBus, Spawn, TestDatabase, eventually, json};

    use super::*;
    use crate::db::fixtures;
    use crate::payment::GatewayError;

    /// A provider that honours idempotency keys: one authorization per key, whatever the
    /// number of calls. Voids are kept, or never answered. It can take its time, never
    /// answer the first calls, count the calls in flight at once, and look at checkout's
    /// database while it is asked.
    #[derive(Default)]
    struct Provider {
        authorized: Mutex<HashMap<Uuid, String>>,
        voided: Mutex<Vec<String>>,
        voids_hang: bool,
        /// How long each authorization takes.
        latency: Duration,
        /// How many first calls never answer.
        hang_first: std::sync::atomic::AtomicUsize,
        calls: std::sync::atomic::AtomicUsize,
        in_flight: std::sync::atomic::AtomicUsize,
        most_in_flight: std::sync::atomic::AtomicUsize,
        /// When set (PostgreSQL), each call counts checkout's sessions inside a
        /// transaction, into `open_transactions`.
        watch: Option<ModuleDb>,
        open_transactions: Mutex<Vec<i64>>,
    }

    impl Provider {
        fn authorizations(&self) -> usize {
            self.authorized.lock().expect("not poisoned").len()
        }

        fn voided(&self) -> Vec<String> {
            self.voided.lock().expect("not poisoned").clone()
        }
    }

    #[async_trait]
    impl PaymentGateway for Provider {
        async fn authorize(
            &self,
            request: &AuthorizeRequest,
        ) -> Result<Authorization, GatewayError> {
            use std::sync::atomic::Ordering::SeqCst;
            let call = self.calls.fetch_add(1, SeqCst);
            let now = self.in_flight.fetch_add(1, SeqCst) + 1;
            self.most_in_flight.fetch_max(now, SeqCst);
            if let Some(db) = &self.watch {
                let n = fixtures::open_transactions(db).await;
                self.open_transactions.lock().expect("not poisoned").push(n);
            }
            if call < self.hang_first.load(SeqCst) {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(self.latency).await;
            self.in_flight.fetch_sub(1, SeqCst);
            let mut authorized = self.authorized.lock().expect("not poisoned");
            let next = authorized.len() + 1;
            let reference = authorized
                .entry(request.idempotency_key)
                .or_insert_with(|| format!("auth_{next}"))
                .clone();
            Ok(Authorization::Approved { reference })
        }

        async fn void(&self, reference: &str) -> Result<(), GatewayError> {
            if self.voids_hang {
                std::future::pending::<()>().await;
            }
            self.voided
                .lock()
                .expect("not poisoned")
                .push(reference.to_owned());
            Ok(())
        }
    }

    /// Checkout's database with `orders` pending orders, and nothing running on it.
    struct Stage {
        state: State,
        orders: Vec<Uuid>,
        _db: TestDatabase,
    }

    impl Stage {
        async fn new(backend: Backend, orders: usize) -> Stage {
            let bus = RecordingBus::new();
            let app = Spawn::new(backend, vec![Arc::new(crate::Checkout)])
                .hooks(runtime::Hooks {
                    bus: Some(bus.clone()),
                    ..runtime::Hooks::default()
                })
                .start()
                .await;
            let price = Envelope::new(
                &ProductPublishedV1 {
                    sku: "TEA-1".into(),
                    name: "Tea".into(),
                    price_minor: 450,
                    currency: "EUR".into(),
                    version: 1,
                },
                &Cause::fresh(),
            )
            .expect("a valid event");
            let tag = bus.inject("checkout", &price);
            eventually(20, "checkout to learn the price", || async {
                bus.acked(&tag).then_some(())
            })
            .await;
            let mut ids = Vec::new();
            for _ in 0..orders {
                let reply = app
                    .post(
                        "/api/checkout/orders",
                        &json!({"customer_email": "ada@example.com", "items": [{"sku": "TEA-1", "quantity": 1}],
                                "shipping_address": {"name": "Ada", "line1": "1 Road", "city": "London", "postal_code": "N1", "country": "GB"},
                                "payment_token": "tok_visa"}),
                    )
                    .await;
                reply.expect_status(201);
                ids.push(
                    reply.body["id"]
                        .as_str()
                        .expect("an id")
                        .parse()
                        .expect("a uuid"),
                );
            }
            let settings = app.settings.clone();
            let db = app.stop().await;
            let module = runtime::db::connect_module(&settings.database, crate::NAME)
                .await
                .expect("connect to checkout's database");
            Stage {
                state: State {
                    db: module,
                    outbox: Outbox::new(crate::NAME),
                },
                orders: ids,
                _db: db,
            }
        }

        /// What catalog's reservation does to an order: its payment becomes due.
        async fn hold_stock(&self, order_id: Uuid) {
            fixtures::insert_due_attempt(&self.state.db, order_id).await;
        }

        fn worker(&self, gateway: Arc<Provider>, lease_ms: i64) -> PaymentWorker {
            PaymentWorker {
                state: self.state.clone(),
                gateway,
                breaker: Arc::new(Breaker::new(Default::default())),
                settings: PaymentSettings {
                    timeout_ms: 200,
                    ..PaymentSettings::default()
                },
                wake: Arc::new(Notify::new()),
                poll: Duration::from_millis(20),
                lease_ms,
            }
        }

        async fn attempt(&self, order_id: Uuid) -> (String, Option<String>) {
            fixtures::attempt_of(&self.state.db, order_id).await
        }

        async fn order_status(&self, order_id: Uuid) -> OrderStatus {
            queries::load_order(self.state.db.conn(), order_id, false)
                .await
                .expect("read the order")
                .expect("the order")
                .status
        }

        async fn confirmations(&self, order_id: Uuid) -> usize {
            fixtures::confirmations(&self.state.db, order_id).await
        }
    }

    /// A worker's claim of exactly the attempt of `order_id`, waiting until one is free.
    async fn claim_of(worker: &PaymentWorker, order_id: Uuid) -> Claimed {
        eventually(20, "the attempt to be free to claim", || async {
            let claimed = worker.claim(10).await.expect("claim");
            assert!(
                claimed.iter().all(|c| c.order_id == order_id),
                "only one attempt is due at a time here"
            );
            claimed.into_iter().next()
        })
        .await
    }

    testkit::on_both_backends!(
        an_outcome_recorded_after_its_lease_was_taken_over_pays_once_and_voids_nothing,
        a_void_the_provider_never_answers_does_not_hold_up_the_worker,
        a_payment_approved_for_an_order_cancelled_meanwhile_is_voided_and_the_order_stays_cancelled,
        no_more_provider_calls_run_at_once_than_max_concurrent,
        a_call_the_provider_never_answers_times_out_and_is_retried_under_the_same_key,
        a_worker_that_died_between_the_provider_call_and_recording_it_is_replaced_and_the_order_paid_once,
    );

    /// Runs `worker`'s loop until every order of `stage` is `status`, then stops it.
    async fn run_until(stage: &Stage, worker: PaymentWorker, status: OrderStatus) {
        let cancel = CancellationToken::new();
        let running = tokio::spawn(worker.run(cancel.child_token()));
        for order in &stage.orders {
            eventually(30, &format!("order {order} to be {status:?}"), || async {
                (stage.order_status(*order).await == status).then_some(())
            })
            .await;
        }
        cancel.cancel();
        running.await.expect("the worker stops");
    }

    async fn a_payment_approved_for_an_order_cancelled_meanwhile_is_voided_and_the_order_stays_cancelled(
        backend: Backend,
    ) {
        let stage = Stage::new(backend, 1).await;
        let order = stage.orders[0];
        stage.hold_stock(order).await;
        let provider = Arc::new(Provider::default());
        let worker = stage.worker(provider.clone(), 10_000);
        let claimed = claim_of(&worker, order).await;
        let called = worker.call(&claimed).await;
        // The customer cancels while the provider approves.
        // (The stage placed its orders as the test kit's caller.)
        crate::use_cases::cancel_order::cancel_order(
            &stage.state,
            &Cause::fresh(),
            testkit::TESTER,
            order,
        )
        .await
        .expect("cancel");
        worker.record(vec![(claimed, called)]).await;
        assert_eq!(stage.attempt(order).await.0, "voided");
        assert_eq!(
            provider.voided(),
            vec!["auth_1".to_owned()],
            "the approval was voided"
        );
        assert_eq!(stage.order_status(order).await, OrderStatus::Cancelled);
        assert_eq!(stage.confirmations(order).await, 0, "nothing confirmed");
    }

    /// Six payments due, calls that take 300 ms, and a bulkhead of two: never more than
    /// two calls at once, and two at once at some point. On PostgreSQL the provider also
    /// looks at checkout's sessions while it is asked (one order, so nothing else runs
    /// then): none is inside a transaction.
    async fn no_more_provider_calls_run_at_once_than_max_concurrent(backend: Backend) {
        use std::sync::atomic::Ordering::SeqCst;
        let stage = Stage::new(backend, 6).await;
        for order in &stage.orders {
            stage.hold_stock(*order).await;
        }
        let provider = Arc::new(Provider {
            latency: Duration::from_millis(300),
            ..Provider::default()
        });
        let mut worker = stage.worker(provider.clone(), 10_000);
        worker.settings.max_concurrent = 2;
        worker.settings.timeout_ms = 5_000;
        run_until(&stage, worker, OrderStatus::Confirmed).await;
        assert_eq!(
            provider.most_in_flight.load(SeqCst),
            2,
            "the bulkhead holds"
        );
        assert_eq!(provider.authorizations(), 6);

        if matches!(backend, Backend::Postgres) {
            let alone = Stage::new(backend, 1).await;
            alone.hold_stock(alone.orders[0]).await;
            let provider = Arc::new(Provider {
                watch: Some(alone.state.db.clone()),
                ..Provider::default()
            });
            run_until(
                &alone,
                alone.worker(provider.clone(), 10_000),
                OrderStatus::Confirmed,
            )
            .await;
            let seen = provider
                .open_transactions
                .lock()
                .expect("not poisoned")
                .clone();
            assert_eq!(
                seen,
                vec![0],
                "no transaction is held across the provider call"
            );
        }
    }

    async fn a_call_the_provider_never_answers_times_out_and_is_retried_under_the_same_key(
        backend: Backend,
    ) {
        use std::sync::atomic::Ordering::SeqCst;
        let stage = Stage::new(backend, 1).await;
        stage.hold_stock(stage.orders[0]).await;
        let provider = Arc::new(Provider {
            hang_first: 1.into(),
            ..Provider::default()
        });
        // The stage's worker times calls out after 200 ms.
        let worker = stage.worker(provider.clone(), 10_000);
        run_until(&stage, worker, OrderStatus::Confirmed).await;
        assert_eq!(
            provider.calls.load(SeqCst),
            2,
            "asked again after the timeout"
        );
        assert_eq!(provider.authorizations(), 1, "under the same key");
        assert_eq!(stage.confirmations(stage.orders[0]).await, 1);
    }

    /// A worker calls the provider and dies before recording the answer: once its claim
    /// lapses, another worker asks again under the same idempotency key, so the provider
    /// authorizes once and the order is confirmed once.
    async fn a_worker_that_died_between_the_provider_call_and_recording_it_is_replaced_and_the_order_paid_once(
        backend: Backend,
    ) {
        let stage = Stage::new(backend, 1).await;
        let order = stage.orders[0];
        stage.hold_stock(order).await;
        let provider = Arc::new(Provider::default());
        let dying = stage.worker(provider.clone(), 100);
        let claimed = claim_of(&dying, order).await;
        let _answer_lost = dying.call(&claimed).await;
        drop(dying);
        let survivor = stage.worker(provider.clone(), 10_000);
        run_until(&stage, survivor, OrderStatus::Confirmed).await;
        assert_eq!(provider.authorizations(), 1, "one authorization");
        assert_eq!(stage.confirmations(order).await, 1, "confirmed once");
        assert_eq!(stage.attempt(order).await.0, "approved");
        assert_eq!(provider.voided(), Vec::<String>::new());
    }

    /// How the outcome of a stalled claim meets the outcome of the claim that took over.
    #[derive(Debug, Clone, Copy)]
    enum Meeting {
        LateRecordedLast,
        LateRecordedFirst,
        /// One worker claimed the attempt twice and holds both outcomes.
        InOneBatch,
    }

    async fn an_outcome_recorded_after_its_lease_was_taken_over_pays_once_and_voids_nothing(
        backend: Backend,
    ) {
        let meetings = [
            Meeting::LateRecordedLast,
            Meeting::LateRecordedFirst,
            Meeting::InOneBatch,
        ];
        let stage = Stage::new(backend, meetings.len()).await;
        let provider = Arc::new(Provider::default());
        let late = stage.worker(provider.clone(), 100);
        let fresh = stage.worker(provider.clone(), 100);
        for (meeting, order) in meetings.into_iter().zip(stage.orders.clone()) {
            stage.hold_stock(order).await;
            let first = claim_of(&late, order).await;
            let first_called = late.call(&first).await;
            // `late` stalls (a database outage, say) past its lease; the attempt is
            // claimed again and the provider asked again, under the same key.
            let taker = match meeting {
                Meeting::InOneBatch => &late,
                _ => &fresh,
            };
            let second = claim_of(taker, order).await;
            let second_called = taker.call(&second).await;
            match meeting {
                Meeting::LateRecordedLast => {
                    fresh.record(vec![(second, second_called)]).await;
                    late.record(vec![(first, first_called)]).await;
                }
                Meeting::LateRecordedFirst => {
                    late.record(vec![(first, first_called)]).await;
                    fresh.record(vec![(second, second_called)]).await;
                }
                Meeting::InOneBatch => {
                    late.record(vec![(first, first_called), (second, second_called)])
                        .await;
                }
            }
            assert_eq!(
                stage.order_status(order).await,
                OrderStatus::Confirmed,
                "{meeting:?}"
            );
            let (status, reference) = stage.attempt(order).await;
            assert_eq!(status, "approved", "{meeting:?}");
            assert!(reference.is_some(), "{meeting:?}");
            assert_eq!(stage.confirmations(order).await, 1, "{meeting:?}");
        }
        assert_eq!(provider.authorizations(), meetings.len(), "one per order");
        assert_eq!(provider.voided(), Vec::<String>::new(), "nothing voided");
    }

    async fn a_void_the_provider_never_answers_does_not_hold_up_the_worker(backend: Backend) {
        let stage = Stage::new(backend, 1).await;
        let order = stage.orders[0];
        stage.hold_stock(order).await;
        let provider = Arc::new(Provider {
            voids_hang: true,
            ..Provider::default()
        });
        let worker = stage.worker(provider, 10_000);
        let claimed = claim_of(&worker, order).await;
        let called = worker.call(&claimed).await;
        // The customer cancels while the provider is answering: the money must be released.
        crate::use_cases::cancel_order::cancel_order(
            &stage.state,
            &Cause::fresh(),
            testkit::TESTER,
            order,
        )
        .await
        .expect("cancel");
        tokio::time::timeout(
            Duration::from_secs(5),
            worker.record(vec![(claimed, called)]),
        )
        .await
        .expect("recording ends although the void never does");
        assert_eq!(stage.attempt(order).await.0, "voided");
        assert_eq!(stage.order_status(order).await, OrderStatus::Cancelled);
    }
}
