//! Recording what the provider answered: a batch of outcomes in one transaction, each
//! settling its attempt and, through the order's state machine, its order, with the
//! order's events in the same transaction.
//!
//! An outcome is recorded only if its attempt is still pending under the very claim that
//! asked for it (the claim's lease end is its fence). An outcome that comes back after
//! its lease ran out and another claim took the attempt over is dropped: the newer claim
//! records the same answer, so an attempt settles once and an order confirmed by its
//! payment is never voided by a late copy of that payment.

use std::time::Duration;

use anyhow::Context;
use chrono::Utc;
use contracts::checkout::{AddressV1, CancelReasonV1, OrderCancelledV1, OrderConfirmedV1};
use module_api::Tx;
use uuid::Uuid;

use super::Authorization;
use super::call::Called;
use super::claim::Claimed;
use super::worker::{PaymentWorker, now_ms};
use crate::db::payments::{self, Finished};
use crate::db::queries;
use crate::domain::{
    Order, OrderStatus, PaymentStatus, Resolution, Settlement, StatusReason, Target, resolve,
};

impl PaymentWorker {
    /// Records a batch of outcomes, in one transaction, or one by one if that fails (one
    /// bad outcome must not hold up the others), then voids what they say to void.
    pub(super) async fn record(&self, batch: Vec<(Claimed, Called)>) {
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
        self.void_all(voids).await;
    }

    /// Records outcomes in one transaction, a few statements for the whole batch; returns
    /// the authorizations to void.
    async fn record_in_one(&self, batch: &[(Claimed, Called)]) -> anyhow::Result<Vec<String>> {
        let mut tx = self.store.begin_batch().await.context("failed to begin")?;
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
                    outcome.settle(&mut tx, order, attempt, settled, reference, reason)?;
                }
            }
        }
        // The orders' and attempts' new states are written with the events, in the
        // commit's one statement on PostgreSQL: nothing here reads them after.
        for ((status, reason), ids) in &outcome.moved {
            queries::set_statuses_at_commit(&mut tx, ids, *status, *reason);
        }
        payments::finish_at_commit(&mut tx, &outcome.finished, Utc::now());
        payments::release(&tx, &outcome.held).await?;
        // Due again in the database: at once, or when their retry is.
        let mut due_from = (!outcome.held.is_empty()).then_some(0);
        for (id, attempts, delay, error) in &outcome.retries {
            let due = now_ms() + delay.as_millis() as i64;
            payments::retry(&tx, *id, *attempts, due, error, Utc::now()).await?;
            due_from = Some(due_from.map_or(due, |d: i64| d.min(due)));
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
        tx.commit()
            .await
            .context("failed to commit payment outcomes")?;
        if let Some(at) = due_from {
            self.handoff.due_from(at);
            self.handoff.wake.notify_one();
        }
        crate::counters::orders_confirmed(confirmed);
        crate::counters::orders_rejected(StatusReason::PaymentDeclined, declined);
        Ok(outcome.voids)
    }
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
    /// Each event follows the cause its attempt stored.
    fn settle(
        &mut self,
        tx: &mut Tx,
        order: &Order,
        attempt: &Claimed,
        settled: Settlement,
        reference: Option<&String>,
        reason: Option<&str>,
    ) -> anyhow::Result<()> {
        match settled.order {
            Some(to @ (OrderStatus::Confirmed, _)) => {
                self.moves(to, order.id.as_uuid());
                tx.publish_with(&attempt.cause, &confirmed(order))?;
            }
            Some(to @ (OrderStatus::Rejected, _)) => {
                self.moves(to, order.id.as_uuid());
                tx.publish_with(
                    &attempt.cause,
                    &OrderCancelledV1 {
                        order_id: order.id.as_uuid(),
                        reason: CancelReasonV1::PaymentDeclined,
                    },
                )?;
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

fn confirmed(order: &Order) -> OrderConfirmedV1 {
    let a = &order.shipping_address;
    OrderConfirmedV1 {
        order_id: order.id.as_uuid(),
        lines: crate::use_cases::event_lines(order),
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
    }
}
