//! Claiming due payment attempts under a lease, with what the provider needs to know of
//! each one's order. Only attempts whose lease ended are claimed, and each claim writes a
//! lease end of its own, its fence: the attempt stays this claim's while it carries it.

use anyhow::Context;
use contracts::{Cause, Traceparent};
use uuid::Uuid;

use super::worker::{PaymentWorker, now_ms};
use crate::db::{payments, queries};
use crate::domain::Order;

/// An attempt this worker holds, with what the provider needs to know of its order.
#[derive(Debug, Clone)]
pub(crate) struct Claimed {
    pub(crate) id: Uuid,
    pub(crate) order_id: Uuid,
    pub(crate) attempts: i32,
    /// The lease end this claim wrote: the attempt is still this claim's while its
    /// `locked_until` holds this value (every claim writes a later one).
    pub(crate) fence: i64,
    pub(crate) cause: Cause,
    /// `None` when the order no longer waits for its payment.
    pub(crate) charge: Option<Charge>,
}

#[derive(Debug, Clone)]
pub(crate) struct Charge {
    pub(super) amount_minor: i64,
    pub(super) currency: String,
    pub(super) token: String,
}

impl PaymentWorker {
    /// Claims up to `limit` due attempts, in a transaction of its own.
    pub(super) async fn claim(&self, limit: usize) -> anyhow::Result<Vec<Claimed>> {
        let now = now_ms();
        let fence = self.handoff.fence(now);
        let tx = self.store.db().begin().await.context("failed to begin")?;
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
        let orders = queries::load_orders(self.store.conn(), &ids, false).await?;
        for attempt in &mut claimed {
            attempt.charge = orders.get(&attempt.order_id).and_then(Charge::of);
        }
        Ok(claimed)
    }
}

impl Charge {
    /// What the provider is asked for `order`; `None` when it no longer waits for its
    /// payment.
    pub(crate) fn of(order: &Order) -> Option<Self> {
        order.status.awaits_payment().then(|| Charge {
            amount_minor: order.total.minor(),
            currency: order.total.currency().to_string(),
            token: order.payment_token.clone(),
        })
    }
}
