//! The payment worker's loop: takes the attempts handed to it (`handoff.rs`), then claims
//! as many due attempts as the bulkhead and the breaker still let through (`claim.rs`),
//! asks the provider for each in a task of its own, outside any transaction (`call.rs`),
//! and hands the answers to a recorder of their own, which records them in batches
//! (`record.rs`) and releases authorizations no order needs (`void.rs`).

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures::FutureExt;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::breaker::Breaker;
use super::call::Called;
use super::claim::Claimed;
use super::handoff::Handoff;
use super::{PaymentGateway, PaymentSettings};
use module_api::Store;

pub(crate) struct PaymentWorker {
    pub(crate) store: Store,
    pub(crate) gateway: Arc<dyn PaymentGateway>,
    pub(crate) breaker: Arc<Breaker>,
    pub(crate) settings: PaymentSettings,
    /// Attempts handed over by the transactions that opened them, and the worker's wake-up.
    pub(crate) handoff: Arc<Handoff>,
    pub(crate) poll: Duration,
}

/// The most attempts claimed at once, and the most outcomes recorded in one transaction.
pub(crate) const RECORD_BATCH: usize = 200;

/// The most outcomes waiting for the recorder (each claimed attempt has its place
/// reserved): two transactions' worth, so one is gathered while the other is written.
const OUTCOMES_WAITING: usize = RECORD_BATCH * 2;

/// Milliseconds since the epoch: how attempts store their times.
pub(super) fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

impl PaymentWorker {
    pub(crate) async fn run(self, cancel: CancellationToken) {
        let this = Arc::new(self);
        let permits = Arc::new(Semaphore::new(this.settings.max_concurrent));
        let (results_tx, results_rx) = mpsc::channel::<(Claimed, Called)>(OUTCOMES_WAITING);
        // Outcomes are recorded by a task of their own, while this loop claims and calls:
        // claiming and recording each cost a few round trips, and done one after the other
        // they bounded the worker to one batch per round, which a busy machine (every
        // await queued behind the HTTP requests) slowed below the rate orders arrive at.
        // A call holds its place in the bulkhead while it asks the provider and no longer;
        // its outcome then waits in the channel, where each claimed attempt has a place
        // reserved before it is claimed. Nothing is claimed while the channel has no free
        // place, so outcomes never pile up until their lease runs out. (When a call kept its
        // bulkhead place until its outcome was handed over, the bulkhead also bounded the
        // outcomes waiting for the recorder: at 1,650 orders/s, 64 places for calls that
        // wait ~40 ms for their record held claims back by up to 200 ms.)
        let recorder = tokio::spawn(this.clone().record_all(results_rx));
        let mut calls = JoinSet::new();
        loop {
            // The bulkhead's free places, no more calls than the breaker lets through, and
            // no more outcomes than the channel has places for.
            let free = permits
                .available_permits()
                .min(this.breaker.admits())
                .min(RECORD_BATCH)
                .min(results_tx.capacity());
            // Attempts handed over first: they are this worker's already.
            let mut taken = this.handoff.take(free);
            let mut full = free > 0 && taken.len() == free;
            let room = free - taken.len();
            // Only when something may be due there: a claim that finds nothing is still a
            // transaction.
            if room > 0 && this.handoff.claim_due(now_ms()) {
                match this.claim(room).await {
                    Ok(claimed) => {
                        full = claimed.len() == room;
                        if full {
                            this.handoff.due_from(0);
                        }
                        taken.extend(claimed);
                    }
                    Err(e) => {
                        this.handoff.due_from(0);
                        tracing::warn!(module = "checkout", error = %format!("{e:#}"), "claiming payments failed")
                    }
                }
            }
            for attempt in taken {
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    break;
                };
                // Never waits: only this loop reserves places, and it took no more
                // attempts than there were free.
                let Ok(place) = results_tx.clone().reserve_owned().await else {
                    break;
                };
                let worker = this.clone();
                calls.spawn(async move {
                    let mut attempt = attempt;
                    let span = payment_span(&mut attempt);
                    let called = worker.call(&attempt).instrument(span).await;
                    drop(permit);
                    place.send((attempt, called));
                });
            }
            while calls.try_join_next().is_some() {}
            if full || permits.available_permits() == 0 || results_tx.capacity() == 0 {
                // More may be due: claim again as soon as a place in the bulkhead and one
                // for an outcome are free.
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    places = async { (permits.acquire().await, results_tx.reserve().await) } => {
                        drop(places);
                        continue;
                    }
                }
            }
            // Woken by a handover, or when the first attempt known to be due in the
            // database is, or at the poll, which claims whatever is due (what other
            // processes left included).
            let wait = this.handoff.until_due(now_ms(), this.poll);
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = this.handoff.wake.notified() => {}
                _ = tokio::time::sleep(wait) => this.handoff.due_from(0),
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
    module_api::trace::adopt(&span, &attempt.cause.traceparent);
    if let Some(own) = module_api::trace::traceparent_of(&span) {
        attempt.cause.traceparent = own;
    }
    span
}
