//! Catalog's answers to orders: stock held (go on to payment) or refused (reject the
//! order). A batch of answers is applied in a few statements.

use std::sync::Arc;

use chrono::Utc;
use contracts::Cause;
use contracts::catalog::{StockRejectedV1, StockReservedV1};
use module_api::{HandlerError, Incoming, Tx};
use uuid::Uuid;

use crate::db::payments::{self as attempts, NewAttempt};
use crate::db::queries;
use crate::domain::{OrderEvent, OrderStatus, StatusReason, Step, transition};
use crate::payments::{Charge, Claimed, Handoff};

/// Starts a payment for every held order that still waits for one. As many as the payment
/// worker has places for are opened under its claim and handed to it once this transaction
/// commits (`payments/handoff.rs`); the rest are opened for it to claim.
pub(crate) async fn on_reserved(
    tx: &mut Tx,
    events: Vec<Incoming<StockReservedV1>>,
    payments: Arc<Handoff>,
) -> Result<(), HandlerError> {
    let ids: Vec<Uuid> = events.iter().map(|e| e.event.order_id).collect();
    let orders = queries::load_orders(tx, &ids, true).await?;
    let mut due = Vec::new();
    for Incoming {
        event: reserved,
        cause,
    } in &events
    {
        let Some(order) = orders.get(&reserved.order_id) else {
            return Err(HandlerError::Reject(format!(
                "no order {}",
                reserved.order_id
            )));
        };
        // A pending order stays pending, its payment now due; any other ignores the news
        // (a cancelled order's stock is released by catalog on `order_cancelled`).
        let Step::Move { .. } = transition(order.status, OrderEvent::StockHeld) else {
            tracing::info!(module = "checkout", order_id = %order.id, status = %order.status, "stock held for an order that no longer waits for it");
            continue;
        };
        due.push((order, cause));
    }
    if due.is_empty() {
        return Ok(());
    }
    let reservation = payments.reserve(due.len());
    let opened_unclaimed = due.len() > reservation.places();
    let mut handed = Vec::new();
    let mut attempts = Vec::new();
    for (i, (order, cause)) in due.into_iter().enumerate() {
        let id = Uuid::now_v7();
        // The payment runs later, under a span of its own below this consumer's; its
        // outcome is announced as caused by this reservation.
        let traceparent = module_api::trace::within(cause.traceparent);
        let claimed = i < reservation.places();
        attempts.push(NewAttempt {
            id,
            order_id: order.id.as_uuid(),
            correlation_id: cause.correlation_id,
            traceparent: traceparent.to_string(),
            locked_until: if claimed { reservation.fence() } else { 0 },
        });
        if claimed {
            handed.push(Claimed {
                id,
                order_id: order.id.as_uuid(),
                attempts: 0,
                fence: reservation.fence(),
                cause: Cause {
                    correlation_id: cause.correlation_id,
                    causation_id: None,
                    traceparent,
                },
                charge: Charge::of(order),
            });
        }
    }
    let now = Utc::now();
    let opened = attempts::open(tx, attempts, now.timestamp_millis(), now).await?;
    // An order that already had its attempt (this reservation handled before) keeps it,
    // and the one made here was not written: nothing of it may reach the provider.
    handed.retain(|attempt| opened.contains(&attempt.id));
    tx.after_commit(move || reservation.hand_over(handed, opened_unclaimed));
    Ok(())
}

/// Rejects every refused order that still waits for its stock.
pub(crate) async fn on_rejected(
    tx: &mut Tx,
    events: Vec<Incoming<StockRejectedV1>>,
) -> Result<(), HandlerError> {
    let ids: Vec<Uuid> = events.iter().map(|e| e.event.order_id).collect();
    let orders = queries::load_orders(tx, &ids, true).await?;
    let mut rejected = Vec::new();
    for id in &ids {
        let order = orders
            .get(id)
            .ok_or_else(|| HandlerError::Reject(format!("no order {id}")))?;
        match transition(order.status, OrderEvent::StockRefused).target() {
            Some((OrderStatus::Rejected, Some(StatusReason::OutOfStock))) => rejected.push(*id),
            // Not a row of the table: the batch's one statement could not store it.
            Some((status, _)) => {
                return Err(HandlerError::Reject(format!(
                    "refused stock cannot make order {id} {status}"
                )));
            }
            None => {}
        }
    }
    queries::set_statuses(
        tx,
        &rejected,
        OrderStatus::Rejected,
        Some(StatusReason::OutOfStock),
    )
    .await?;
    if !rejected.is_empty() {
        let n = rejected.len() as u64;
        tx.after_commit(move || crate::counters::orders_rejected(StatusReason::OutOfStock, n));
        tracing::info!(
            module = "checkout",
            orders = rejected.len(),
            "orders rejected: out of stock"
        );
    }
    Ok(())
}
