//! Checkout's order events: a confirmed order gets a shipment; a cancelled one loses it
//! unless it was dispatched already.

use std::collections::HashSet;

use chrono::Utc;
use contracts::Envelope;
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

/// Creates a `ready` shipment for each confirmed order that has none and was not
/// cancelled first, in a few statements per batch.
pub(crate) async fn on_confirmed(
    tx: &DatabaseTransaction,
    events: &[(&Envelope, OrderConfirmedV1)],
    out: &mut Emitter,
) -> Result<(), HandlerError> {
    let ids: Vec<Uuid> = events.iter().map(|(_, e)| e.order_id).collect();
    let taken: HashSet<Uuid> = shipments::Entity::find()
        .select_only()
        .column(shipments::Column::OrderId)
        .filter(shipments::Column::OrderId.is_in(ids.iter().copied()))
        .into_tuple::<Uuid>()
        .all(tx)
        .await?
        .into_iter()
        .chain(
            cancelled_orders::Entity::find()
                .select_only()
                .column(cancelled_orders::Column::OrderId)
                .filter(cancelled_orders::Column::OrderId.is_in(ids.iter().copied()))
                .into_tuple::<Uuid>()
                .all(tx)
                .await?,
        )
        .collect();
    let now = Utc::now();
    let mut new = Vec::new();
    let mut seen = HashSet::new();
    for (event, order) in events {
        if taken.contains(&order.order_id) || !seen.insert(order.order_id) {
            tracing::info!(module = "fulfillment", order_id = %order.order_id, "order already has a shipment or was cancelled; none created");
            continue;
        }
        let id = Uuid::now_v7();
        let recipient = serde_json::json!({
            "email": order.customer_email,
            "address": order.shipping_address,
        });
        new.push(shipments::ActiveModel {
            id: Set(id),
            order_id: Set(order.order_id),
            status: Set(ShipmentStatus::Ready.as_str().into()),
            tracking_number: Set(None),
            recipient: Set(recipient.to_string()),
            lines: Set(serde_json::to_string(&order.lines).unwrap_or_default()),
            created_at: Set(now),
            updated_at: Set(now),
        });
        out.emit(
            event,
            &ShipmentCreatedV1 {
                shipment_id: id,
                order_id: order.order_id,
            },
        )?;
    }
    if !new.is_empty() {
        tracing::info!(
            module = "fulfillment",
            shipments = new.len(),
            "shipments ready"
        );
        shipments::Entity::insert_many(new)
            .exec_without_returning(tx)
            .await?;
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
