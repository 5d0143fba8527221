//! Reading and changing orders.

use anyhow::Context;
use chrono::Utc;
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
use uuid::Uuid;

use super::{order_lines, orders};
use crate::domain::{Address, Line, Order, OrderStatus, StatusReason};

/// Loads an order and its lines. With `lock`, the order row stays locked until the
/// transaction ends (PostgreSQL; SQLite's write transactions are exclusive anyway), so
/// changes to one order are serialized and its events leave in commit order.
pub(crate) async fn load_order(
    conn: &impl ConnectionTrait,
    id: Uuid,
    lock: bool,
) -> anyhow::Result<Option<Order>> {
    let mut query = orders::Entity::find_by_id(id);
    if lock {
        query = query.lock_exclusive();
    }
    let Some(row) = query.one(conn).await.context("failed to load order")? else {
        return Ok(None);
    };
    let lines = order_lines::Entity::find()
        .filter(order_lines::Column::OrderId.eq(id))
        .order_by_asc(order_lines::Column::LineNo)
        .all(conn)
        .await
        .context("failed to load order lines")?;
    let status = OrderStatus::parse(&row.status)
        .with_context(|| format!("stored status {:?} is unknown", row.status))?;
    let shipping_address: Address = serde_json::from_str(&row.shipping_address)
        .context("stored shipping address is not valid")?;
    Ok(Some(Order {
        id: row.id,
        status,
        status_reason: row.status_reason,
        customer_email: row.customer_email,
        shipping_address,
        payment_token: row.payment_token,
        currency: row.currency,
        total_minor: row.total_minor,
        lines: lines
            .into_iter()
            .map(|l| Line {
                sku: l.sku,
                quantity: l.quantity,
                unit_price_minor: l.unit_price_minor,
            })
            .collect(),
        created_at: row.created_at,
        updated_at: row.updated_at,
    }))
}

pub(crate) async fn set_status(
    conn: &impl ConnectionTrait,
    id: Uuid,
    status: OrderStatus,
    reason: Option<StatusReason>,
) -> anyhow::Result<()> {
    orders::Entity::update_many()
        .col_expr(orders::Column::Status, Expr::value(status.as_str()))
        .col_expr(
            orders::Column::StatusReason,
            Expr::value(reason.map(|r| r.as_str().to_owned())),
        )
        .col_expr(orders::Column::UpdatedAt, Expr::value(Utc::now()))
        .filter(orders::Column::Id.eq(id))
        .exec(conn)
        .await
        .context("failed to update order status")?;
    Ok(())
}
