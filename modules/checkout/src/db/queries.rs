//! Reading and changing orders.

use std::collections::HashMap;

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
    Ok(load_orders(conn, &[id], lock).await?.remove(&id))
}

pub(crate) async fn set_status(
    conn: &impl ConnectionTrait,
    id: Uuid,
    status: OrderStatus,
    reason: Option<StatusReason>,
) -> anyhow::Result<()> {
    set_statuses(conn, &[id], status, reason).await
}

/// Loads several orders and their lines in two queries; with `lock`, their rows stay
/// locked until the transaction ends.
pub(crate) async fn load_orders(
    conn: &impl ConnectionTrait,
    ids: &[Uuid],
    lock: bool,
) -> anyhow::Result<HashMap<Uuid, Order>> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let mut query = orders::Entity::find().filter(orders::Column::Id.is_in(ids.iter().copied()));
    if lock {
        query = query.order_by_asc(orders::Column::Id).lock_exclusive();
    }
    let rows = query.all(conn).await.context("failed to load orders")?;
    let mut lines: HashMap<Uuid, Vec<Line>> = HashMap::new();
    for l in order_lines::Entity::find()
        .filter(order_lines::Column::OrderId.is_in(ids.iter().copied()))
        .order_by_asc(order_lines::Column::OrderId)
        .order_by_asc(order_lines::Column::LineNo)
        .all(conn)
        .await
        .context("failed to load order lines")?
    {
        lines.entry(l.order_id).or_default().push(Line {
            sku: l.sku,
            quantity: l.quantity,
            unit_price_minor: l.unit_price_minor,
        });
    }
    let mut out = HashMap::with_capacity(rows.len());
    for row in rows {
        let status = OrderStatus::parse(&row.status)
            .with_context(|| format!("stored status {:?} is unknown", row.status))?;
        let shipping_address: Address = serde_json::from_str(&row.shipping_address)
            .context("stored shipping address is not valid")?;
        out.insert(
            row.id,
            Order {
                id: row.id,
                status,
                status_reason: row.status_reason,
                customer_id: row.customer_id,
                customer_email: row.customer_email,
                shipping_address,
                payment_token: row.payment_token,
                currency: row.currency,
                total_minor: row.total_minor,
                lines: lines.remove(&row.id).unwrap_or_default(),
                created_at: row.created_at,
                updated_at: row.updated_at,
            },
        );
    }
    Ok(out)
}

/// Moves several orders to one status, in one statement.
pub(crate) async fn set_statuses(
    conn: &impl ConnectionTrait,
    ids: &[Uuid],
    status: OrderStatus,
    reason: Option<StatusReason>,
) -> anyhow::Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    orders::Entity::update_many()
        .col_expr(orders::Column::Status, Expr::value(status.as_str()))
        .col_expr(
            orders::Column::StatusReason,
            Expr::value(reason.map(|r| r.as_str().to_owned())),
        )
        .col_expr(orders::Column::UpdatedAt, Expr::value(Utc::now()))
        .filter(orders::Column::Id.is_in(ids.iter().copied()))
        .exec(conn)
        .await
        .context("failed to update order statuses")?;
    Ok(())
}

/// Orders still `pending` that were placed before `cutoff`: how many, and the oldest
/// (its id and when it was placed).
pub(crate) async fn overdue_orders(
    conn: &impl ConnectionTrait,
    cutoff: chrono::DateTime<Utc>,
) -> anyhow::Result<(u64, Option<(Uuid, chrono::DateTime<Utc>)>)> {
    use sea_orm::PaginatorTrait;
    let overdue = || {
        orders::Entity::find()
            .filter(orders::Column::Status.eq(OrderStatus::Pending.as_str()))
            .filter(orders::Column::CreatedAt.lt(cutoff))
    };
    let count = overdue()
        .count(conn)
        .await
        .context("failed to count overdue orders")?;
    let oldest = overdue()
        .order_by_asc(orders::Column::CreatedAt)
        .one(conn)
        .await
        .context("failed to read the oldest overdue order")?
        .map(|o| (o.id, o.created_at));
    Ok((count, oldest))
}
