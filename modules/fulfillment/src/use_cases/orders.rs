//! Checkout's order events: a confirmed order gets a shipment; a cancelled one loses it
//! unless it was dispatched already.

use chrono::Utc;
use contracts::checkout::{OrderCancelledV1, OrderConfirmedV1};
use contracts::fulfillment::ShipmentCreatedV1;
use messaging::{Emitter, HandlerError};
use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, DatabaseTransaction, EntityTrait,
    IntoActiveModel, QueryFilter, QuerySelect,
};
use uuid::Uuid;

use crate::db::{cancelled_orders, shipments};
use crate::domain::{OnCancel, ShipmentStatus};

async fn shipment_of(
    tx: &DatabaseTransaction,
    order_id: Uuid,
) -> Result<Option<shipments::Model>, HandlerError> {
    Ok(shipments::Entity::find()
        .filter(shipments::Column::OrderId.eq(order_id))
        .lock_exclusive()
        .one(tx)
        .await?)
}

pub(crate) async fn on_confirmed(
    tx: &DatabaseTransaction,
    event: OrderConfirmedV1,
    out: &mut Emitter,
) -> Result<(), HandlerError> {
    if let Some(existing) = shipment_of(tx, event.order_id).await? {
        tracing::info!(module = "fulfillment", order_id = %event.order_id, status = existing.status, "order already has a shipment");
        return Ok(());
    }
    if cancelled_orders::Entity::find_by_id(event.order_id)
        .one(tx)
        .await?
        .is_some()
    {
        tracing::info!(module = "fulfillment", order_id = %event.order_id, "order was cancelled before its confirmation arrived; no shipment");
        return Ok(());
    }
    let id = Uuid::now_v7();
    let now = Utc::now();
    let recipient = serde_json::json!({
        "email": event.customer_email,
        "address": event.shipping_address,
    });
    let inserted = shipments::Entity::insert(shipments::ActiveModel {
        id: Set(id),
        order_id: Set(event.order_id),
        status: Set(ShipmentStatus::Ready.as_str().into()),
        tracking_number: Set(None),
        recipient: Set(recipient.to_string()),
        lines: Set(serde_json::to_string(&event.lines).unwrap_or_default()),
        created_at: Set(now),
        updated_at: Set(now),
    })
    .on_conflict(
        OnConflict::column(shipments::Column::OrderId)
            .do_nothing()
            .to_owned(),
    )
    .exec_without_returning(tx)
    .await?;
    if inserted == 1 {
        tracing::info!(module = "fulfillment", order_id = %event.order_id, shipment_id = %id, "shipment ready");
        out.emit(&ShipmentCreatedV1 {
            shipment_id: id,
            order_id: event.order_id,
        })?;
    }
    Ok(())
}

pub(crate) async fn on_cancelled(
    tx: &DatabaseTransaction,
    event: OrderCancelledV1,
) -> Result<(), HandlerError> {
    let now = Utc::now();
    let Some(shipment) = shipment_of(tx, event.order_id).await? else {
        // Cancelled before it was confirmed (payment declined, or the customer was quick):
        // remember, so a confirmation arriving late creates nothing.
        cancelled_orders::Entity::insert(cancelled_orders::ActiveModel {
            order_id: Set(event.order_id),
            cancelled_at: Set(now),
        })
        .on_conflict(
            OnConflict::column(cancelled_orders::Column::OrderId)
                .do_nothing()
                .to_owned(),
        )
        .exec_without_returning(tx)
        .await?;
        return Ok(());
    };
    let status = ShipmentStatus::parse(&shipment.status).ok_or_else(|| {
        HandlerError::Reject(format!("stored status {:?} is unknown", shipment.status))
    })?;
    match status.on_order_cancelled() {
        OnCancel::Cancel => {
            let mut active = shipment.into_active_model();
            active.status = Set(ShipmentStatus::Cancelled.as_str().into());
            active.updated_at = Set(now);
            active.update(tx).await?;
            tracing::info!(module = "fulfillment", order_id = %event.order_id, "shipment cancelled");
        }
        OnCancel::TooLate => {
            tracing::warn!(module = "fulfillment", order_id = %event.order_id, %status, "order cancelled after its shipment left; the shipment stands");
        }
        OnCancel::Nothing => {}
    }
    Ok(())
}
