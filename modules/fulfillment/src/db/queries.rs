//! Reading and changing shipments, and remembering orders cancelled before they were
//! confirmed.

use std::collections::HashSet;

use anyhow::Context;
use chrono::{DateTime, Utc};
use kernel::{OrderId, ShipmentId};
use module_api::sql::{ArrayType, Rows};
use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect,
};
use uuid::Uuid;

use super::{cancelled_orders, shipments};
use crate::domain::{Shipment, ShipmentStatus};

fn to_shipment(row: shipments::Model) -> anyhow::Result<Shipment> {
    let status = ShipmentStatus::parse(&row.status)
        .with_context(|| format!("stored status {:?} is unknown", row.status))?;
    Ok(Shipment {
        id: ShipmentId::from_uuid(row.id),
        order_id: OrderId::from_uuid(row.order_id),
        status,
        tracking_number: row.tracking_number,
        created_at: row.created_at,
        updated_at: row.updated_at,
    })
}

/// One shipment; with `lock`, its row stays locked until the transaction ends
/// (PostgreSQL; SQLite's write transactions are exclusive anyway).
pub(crate) async fn shipment(
    conn: &impl ConnectionTrait,
    id: ShipmentId,
    lock: bool,
) -> anyhow::Result<Option<Shipment>> {
    let mut query = shipments::Entity::find_by_id(id.as_uuid());
    if lock {
        query = query.lock_exclusive();
    }
    query
        .one(conn)
        .await
        .context("failed to load shipment")?
        .map(to_shipment)
        .transpose()
}

/// The shipment of an order, its row locked until the transaction ends.
pub(crate) async fn lock_shipment_of(
    conn: &impl ConnectionTrait,
    order_id: OrderId,
) -> anyhow::Result<Option<Shipment>> {
    shipments::Entity::find()
        .filter(shipments::Column::OrderId.eq(order_id.as_uuid()))
        .lock_exclusive()
        .one(conn)
        .await
        .context("failed to load the shipment of an order")?
        .map(to_shipment)
        .transpose()
}

/// Up to `limit` shipments in id order after `after`, optionally of one order only.
pub(crate) async fn shipments(
    conn: &impl ConnectionTrait,
    order_id: Option<OrderId>,
    after: Option<ShipmentId>,
    limit: u64,
) -> anyhow::Result<Vec<Shipment>> {
    let mut query = shipments::Entity::find().order_by_asc(shipments::Column::Id);
    if let Some(order_id) = order_id {
        query = query.filter(shipments::Column::OrderId.eq(order_id.as_uuid()));
    }
    if let Some(after) = after {
        query = query.filter(shipments::Column::Id.gt(after.as_uuid()));
    }
    query
        .limit(limit)
        .all(conn)
        .await
        .context("failed to list shipments")?
        .into_iter()
        .map(to_shipment)
        .collect()
}

/// Of these orders, those that have a shipment or were cancelled before they had one.
pub(crate) async fn orders_settled(
    conn: &impl ConnectionTrait,
    ids: &[OrderId],
) -> anyhow::Result<HashSet<OrderId>> {
    let ids: Vec<Uuid> = ids.iter().map(OrderId::as_uuid).collect();
    let shipped: Vec<Uuid> = shipments::Entity::find()
        .select_only()
        .column(shipments::Column::OrderId)
        .filter(shipments::Column::OrderId.is_in(module_api::sql::padded(ids.to_vec())))
        .into_tuple()
        .all(conn)
        .await
        .context("failed to read shipments of orders")?;
    let cancelled: Vec<Uuid> = cancelled_orders::Entity::find()
        .select_only()
        .column(cancelled_orders::Column::OrderId)
        .filter(cancelled_orders::Column::OrderId.is_in(module_api::sql::padded(ids.to_vec())))
        .into_tuple()
        .all(conn)
        .await
        .context("failed to read cancelled orders")?;
    Ok(shipped
        .into_iter()
        .chain(cancelled)
        .map(OrderId::from_uuid)
        .collect())
}

/// A shipment to create: who receives it and what to pack, as JSON.
pub(crate) struct NewShipment {
    pub(crate) shipment: Shipment,
    pub(crate) recipient: String,
    pub(crate) lines: String,
}

/// The rows of new shipments, for the transaction that creates them to insert when it
/// commits (`Tx::insert_at_commit`: with its outbox rows, one statement on PostgreSQL).
pub(crate) fn shipment_rows(new: &[NewShipment]) -> (&'static str, Rows) {
    let rows = Rows::new()
        .column(
            "id",
            ArrayType::Uuid,
            new.iter().map(|n| n.shipment.id.as_uuid().into()),
        )
        .column(
            "order_id",
            ArrayType::Uuid,
            new.iter().map(|n| n.shipment.order_id.as_uuid().into()),
        )
        .column(
            "status",
            ArrayType::String,
            new.iter().map(|n| n.shipment.status.as_str().into()),
        )
        .text_or_null(
            "tracking_number",
            new.iter().map(|n| n.shipment.tracking_number.clone()),
        )
        .column(
            "recipient",
            ArrayType::String,
            new.iter().map(|n| n.recipient.clone().into()),
        )
        .column(
            "lines",
            ArrayType::String,
            new.iter().map(|n| n.lines.clone().into()),
        )
        .column(
            "created_at",
            ArrayType::ChronoDateTimeUtc,
            new.iter().map(|n| n.shipment.created_at.into()),
        )
        .column(
            "updated_at",
            ArrayType::ChronoDateTimeUtc,
            new.iter().map(|n| n.shipment.updated_at.into()),
        );
    ("shipments", rows)
}

/// Writes a shipment's status, tracking number and time of change.
pub(crate) async fn update_shipment(
    conn: &impl ConnectionTrait,
    shipment: &Shipment,
) -> anyhow::Result<()> {
    shipments::Entity::update_many()
        .col_expr(
            shipments::Column::Status,
            Expr::value(shipment.status.as_str()),
        )
        .col_expr(
            shipments::Column::TrackingNumber,
            Expr::value(shipment.tracking_number.clone()),
        )
        .col_expr(
            shipments::Column::UpdatedAt,
            Expr::value(shipment.updated_at),
        )
        .filter(shipments::Column::Id.eq(shipment.id.as_uuid()))
        .exec(conn)
        .await
        .context("failed to update shipment")?;
    Ok(())
}

/// Remembers an order cancelled before it had a shipment, so a confirmation arriving late
/// creates none.
pub(crate) async fn remember_cancelled(
    conn: &impl ConnectionTrait,
    order_id: OrderId,
    now: DateTime<Utc>,
) -> anyhow::Result<()> {
    cancelled_orders::Entity::insert(cancelled_orders::ActiveModel {
        order_id: Set(order_id.as_uuid()),
        cancelled_at: Set(now),
    })
    .on_conflict(
        OnConflict::column(cancelled_orders::Column::OrderId)
            .do_nothing()
            .to_owned(),
    )
    .exec_without_returning(conn)
    .await
    .context("failed to remember a cancelled order")?;
    Ok(())
}
