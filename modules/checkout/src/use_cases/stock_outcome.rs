//! Catalog's answer to an order: stock held (go on to payment) or refused (reject it).

use std::sync::Arc;

use chrono::Utc;
use contracts::catalog::{StockRejectedV1, StockReservedV1};
use messaging::db::now_ms;
use messaging::{Emitter, HandlerError};
use sea_orm::sea_query::OnConflict;
use sea_orm::{ActiveValue::Set, DatabaseTransaction, EntityTrait};
use tokio::sync::Notify;
use uuid::Uuid;

use crate::db::{payment_attempts, queries};

pub(crate) async fn on_reserved(
    tx: &DatabaseTransaction,
    event: StockReservedV1,
    out: &mut Emitter,
    payments: &Arc<Notify>,
) -> Result<(), HandlerError> {
    let Some(order) = queries::load_order(tx, event.order_id, true).await? else {
        return Err(HandlerError::Reject(format!("no order {}", event.order_id)));
    };
    if !order.status.takes_payment() {
        tracing::info!(module = "checkout", order_id = %order.id, status = %order.status, "stock held for an order that no longer waits for it");
        return Ok(());
    }
    let now = Utc::now();
    payment_attempts::Entity::insert(payment_attempts::ActiveModel {
        id: Set(Uuid::now_v7()),
        order_id: Set(order.id),
        status: Set("pending".into()),
        attempts: Set(0),
        next_attempt_at: Set(now_ms()),
        locked_until: Set(0),
        last_error: Set(None),
        reference: Set(None),
        correlation_id: Set(Some(out.cause().correlation_id)),
        traceparent: Set(Some(out.cause().traceparent.to_string())),
        created_at: Set(now),
        updated_at: Set(now),
    })
    .on_conflict(
        OnConflict::column(payment_attempts::Column::OrderId)
            .do_nothing()
            .to_owned(),
    )
    .exec_without_returning(tx)
    .await?;
    out.wake_after_commit(payments.clone());
    Ok(())
}

pub(crate) async fn on_rejected(
    tx: &DatabaseTransaction,
    event: StockRejectedV1,
) -> Result<(), HandlerError> {
    let Some(order) = queries::load_order(tx, event.order_id, true).await? else {
        return Err(HandlerError::Reject(format!("no order {}", event.order_id)));
    };
    if let Some((status, reason)) = order.status.on_stock_rejected() {
        queries::set_status(tx, order.id, status, Some(reason)).await?;
        tracing::info!(module = "checkout", order_id = %order.id, "order rejected: out of stock");
    }
    Ok(())
}
