//! Reading shipments, and moving them along: dispatch (with a tracking number), deliver.

use anyhow::Context;
use chrono::Utc;
use contracts::fulfillment::{ShipmentDeliveredV1, ShipmentDispatchedV1};
use contracts::{Cause, Envelope};
use runtime::ModuleDb;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, EntityTrait, IntoActiveModel, QueryFilter,
    QueryOrder, QuerySelect,
};
use uuid::Uuid;

use crate::State;
use crate::db::shipments;
use crate::domain::{ShipmentStatus, tracking_number};

/// A shipment as shown.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct Shipment {
    pub(crate) id: Uuid,
    pub(crate) order_id: Uuid,
    /// ready, dispatched, delivered or cancelled.
    #[schema(value_type = String)]
    pub(crate) status: &'static str,
    pub(crate) tracking_number: Option<String>,
    pub(crate) created_at: chrono::DateTime<Utc>,
    pub(crate) updated_at: chrono::DateTime<Utc>,
}

fn view(row: shipments::Model) -> anyhow::Result<Shipment> {
    let status = ShipmentStatus::parse(&row.status)
        .with_context(|| format!("stored status {:?} is unknown", row.status))?;
    Ok(Shipment {
        id: row.id,
        order_id: row.order_id,
        status: status.as_str(),
        tracking_number: row.tracking_number,
        created_at: row.created_at,
        updated_at: row.updated_at,
    })
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ShipmentError {
    #[error("no shipment has id {0}")]
    NotFound(Uuid),
    #[error("shipment {id} is {status} and cannot be {action}")]
    WrongStatus {
        id: Uuid,
        status: ShipmentStatus,
        action: &'static str,
    },
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

pub(crate) async fn get(db: &ModuleDb, id: Uuid) -> Result<Shipment, ShipmentError> {
    let row = shipments::Entity::find_by_id(id)
        .one(db.conn())
        .await
        .context("failed to load shipment")?
        .ok_or(ShipmentError::NotFound(id))?;
    Ok(view(row)?)
}

/// Shipments in id order after `after`, optionally of one order only.
pub(crate) async fn list(
    db: &ModuleDb,
    order_id: Option<Uuid>,
    after: Option<Uuid>,
    limit: u64,
) -> anyhow::Result<(Vec<Shipment>, Option<Uuid>)> {
    let mut query = shipments::Entity::find().order_by_asc(shipments::Column::Id);
    if let Some(order_id) = order_id {
        query = query.filter(shipments::Column::OrderId.eq(order_id));
    }
    if let Some(after) = after {
        query = query.filter(shipments::Column::Id.gt(after));
    }
    let mut rows = query
        .limit(limit + 1)
        .all(db.conn())
        .await
        .context("failed to list shipments")?;
    let more = rows.len() as u64 > limit;
    rows.truncate(limit as usize);
    let items = rows
        .into_iter()
        .map(view)
        .collect::<anyhow::Result<Vec<_>>>()?;
    let next = if more {
        items.last().map(|s| s.id)
    } else {
        None
    };
    Ok((items, next))
}

#[tracing::instrument(name = "fulfillment.dispatch", skip_all, fields(shipment_id = %id))]
pub(crate) async fn dispatch(
    state: &State,
    cause: &Cause,
    id: Uuid,
) -> Result<Shipment, ShipmentError> {
    advance(state, cause, id, "dispatched", ShipmentStatus::can_dispatch).await
}

#[tracing::instrument(name = "fulfillment.deliver", skip_all, fields(shipment_id = %id))]
pub(crate) async fn deliver(
    state: &State,
    cause: &Cause,
    id: Uuid,
) -> Result<Shipment, ShipmentError> {
    advance(state, cause, id, "delivered", ShipmentStatus::can_deliver).await
}

async fn advance(
    state: &State,
    cause: &Cause,
    id: Uuid,
    action: &'static str,
    allowed: fn(ShipmentStatus) -> bool,
) -> Result<Shipment, ShipmentError> {
    let tx = state
        .db
        .begin()
        .await
        .context("failed to begin a transaction")?;
    let row = shipments::Entity::find_by_id(id)
        .lock_exclusive()
        .one(&tx)
        .await
        .context("failed to load shipment")?
        .ok_or(ShipmentError::NotFound(id))?;
    let status = ShipmentStatus::parse(&row.status)
        .with_context(|| format!("stored status {:?} is unknown", row.status))?;
    if !allowed(status) {
        return Err(ShipmentError::WrongStatus { id, status, action });
    }
    let order_id = row.order_id;
    let mut active = row.into_active_model();
    let event = if action == "dispatched" {
        let tracking = tracking_number(|n| fastrand::usize(..n));
        active.status = Set(ShipmentStatus::Dispatched.as_str().into());
        active.tracking_number = Set(Some(tracking.clone()));
        Envelope::new(
            &ShipmentDispatchedV1 {
                shipment_id: id,
                order_id,
                tracking_number: tracking,
            },
            cause,
        )
    } else {
        active.status = Set(ShipmentStatus::Delivered.as_str().into());
        Envelope::new(
            &ShipmentDeliveredV1 {
                shipment_id: id,
                order_id,
            },
            cause,
        )
    }
    .context("the shipment does not fit its event")?;
    active.updated_at = Set(Utc::now());
    let row = active
        .update(&tx)
        .await
        .context("failed to update shipment")?;
    state
        .outbox
        .append(&tx, &[event])
        .await
        .context("failed to append the event")?;
    state.outbox.commit(tx).await.context("failed to commit")?;
    if action == "dispatched" {
        metrics::counter!("fulfillment_shipments_dispatched_total").increment(1);
    }
    tracing::info!(module = "fulfillment", %order_id, "shipment {action}");
    Ok(view(row)?)
}
