//! Holding and releasing stock: the row-level updates behind reservations.

use chrono::Utc;
use messaging::db::{execute, placeholders, query};
use sea_orm::sea_query::{Expr, ExprTrait, OnConflict};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter, Value,
};
use uuid::Uuid;

use super::{order_holds, stock_levels, stock_reservations};
use crate::domain::Hold;

fn hold_of(raw: &str) -> Result<Hold, DbErr> {
    Hold::parse(raw).ok_or_else(|| DbErr::Custom(format!("stored hold {raw:?} is unknown")))
}

/// The decision already taken for an order, if any.
pub(crate) async fn hold_status(
    conn: &impl ConnectionTrait,
    order_id: Uuid,
) -> Result<Option<Hold>, DbErr> {
    order_holds::Entity::find_by_id(order_id)
        .one(conn)
        .await?
        .map(|h| hold_of(&h.status))
        .transpose()
}

pub(crate) async fn set_hold(
    conn: &impl ConnectionTrait,
    order_id: Uuid,
    status: Hold,
) -> Result<(), DbErr> {
    order_holds::Entity::insert(order_holds::ActiveModel {
        order_id: Set(order_id),
        status: Set(status.as_str().to_owned()),
        updated_at: Set(Utc::now()),
    })
    .on_conflict(
        OnConflict::column(order_holds::Column::OrderId)
            .update_columns([order_holds::Column::Status, order_holds::Column::UpdatedAt])
            .to_owned(),
    )
    .exec_without_returning(conn)
    .await
    .map(|_| ())
}

/// Gives back `quantity` held units of `sku`.
pub(crate) async fn unhold(
    conn: &impl ConnectionTrait,
    sku: &str,
    quantity: i64,
) -> Result<(), DbErr> {
    stock_levels::Entity::update_many()
        .col_expr(
            stock_levels::Column::Reserved,
            Expr::col(stock_levels::Column::Reserved).sub(quantity),
        )
        .filter(stock_levels::Column::Sku.eq(sku))
        .filter(stock_levels::Column::Reserved.gte(quantity))
        .exec(conn)
        .await
        .map(|_| ())
}

pub(crate) async fn record_reservations(
    conn: &impl ConnectionTrait,
    order_id: Uuid,
    lines: &[(String, i64)],
) -> Result<(), DbErr> {
    if lines.is_empty() {
        return Ok(());
    }
    stock_reservations::Entity::insert_many(lines.iter().map(|(sku, quantity)| {
        stock_reservations::ActiveModel {
            order_id: Set(order_id),
            sku: Set(sku.clone()),
            quantity: Set(*quantity),
        }
    }))
    .exec_without_returning(conn)
    .await
    .map(|_| ())
}

pub(crate) async fn reservations(
    conn: &impl ConnectionTrait,
    order_id: Uuid,
) -> Result<Vec<(String, i64)>, DbErr> {
    let mut rows: Vec<(String, i64)> = stock_reservations::Entity::find()
        .filter(stock_reservations::Column::OrderId.eq(order_id))
        .all(conn)
        .await?
        .into_iter()
        .map(|r| (r.sku, r.quantity))
        .collect();
    rows.sort();
    Ok(rows)
}

pub(crate) async fn forget_reservations(
    conn: &impl ConnectionTrait,
    order_id: Uuid,
) -> Result<(), DbErr> {
    stock_reservations::Entity::delete_many()
        .filter(stock_reservations::Column::OrderId.eq(order_id))
        .exec(conn)
        .await
        .map(|_| ())
}

/// The decisions already taken for these orders.
pub(crate) async fn hold_statuses(
    conn: &impl ConnectionTrait,
    orders: &[Uuid],
) -> Result<std::collections::HashMap<Uuid, Hold>, DbErr> {
    if orders.is_empty() {
        return Ok(Default::default());
    }
    let sql = format!(
        "SELECT order_id, status FROM order_holds WHERE order_id IN ({})",
        placeholders(1, orders.len())
    );
    let rows = query(conn, &sql, orders.iter().map(|o| Value::from(*o)).collect()).await?;
    rows.iter()
        .map(|r| {
            let status: String = r.try_get("", "status")?;
            Ok((r.try_get("", "order_id")?, hold_of(&status)?))
        })
        .collect()
}

/// Units free per sku, for these skus, locking their rows until the transaction ends
/// (PostgreSQL; a SQLite write transaction is exclusive anyway). Rows are locked in sku
/// order, so concurrent batches cannot deadlock on them.
pub(crate) async fn lock_free_units(
    conn: &impl ConnectionTrait,
    skus: &[&str],
) -> Result<std::collections::HashMap<String, i64>, DbErr> {
    if skus.is_empty() {
        return Ok(Default::default());
    }
    let sql = format!(
        "SELECT sku, on_hand - reserved AS free FROM stock_levels WHERE sku IN ({}) ORDER BY sku FOR UPDATE",
        placeholders(1, skus.len())
    );
    let rows = query(conn, &sql, skus.iter().map(|s| Value::from(*s)).collect()).await?;
    rows.iter()
        .map(|r| Ok((r.try_get("", "sku")?, r.try_get("", "free")?)))
        .collect()
}

/// Adds `delta` held units to each sku, in one statement.
pub(crate) async fn hold_many(
    conn: &impl ConnectionTrait,
    deltas: &[(String, i64)],
) -> Result<(), DbErr> {
    if deltas.is_empty() {
        return Ok(());
    }
    let mut values: Vec<Value> = Vec::with_capacity(deltas.len() * 3);
    let mut cases = String::new();
    for (i, (sku, delta)) in deltas.iter().enumerate() {
        cases.push_str(&format!(" WHEN ${} THEN ${}", i * 2 + 1, i * 2 + 2));
        values.push(sku.clone().into());
        values.push((*delta).into());
    }
    let first = deltas.len() * 2 + 1;
    values.extend(deltas.iter().map(|(sku, _)| Value::from(sku.clone())));
    let sql = format!(
        "UPDATE stock_levels SET reserved = reserved + CASE sku{cases} ELSE 0 END WHERE sku IN ({})",
        placeholders(first, deltas.len())
    );
    execute(conn, &sql, values).await.map(|_| ())
}

/// Records the decision for many orders at once.
pub(crate) async fn set_holds(
    conn: &impl ConnectionTrait,
    decisions: &[(Uuid, Hold)],
) -> Result<(), DbErr> {
    if decisions.is_empty() {
        return Ok(());
    }
    let now = Utc::now();
    let mut values: Vec<Value> = Vec::with_capacity(decisions.len() * 3);
    let mut rows = Vec::with_capacity(decisions.len());
    for (i, (order, status)) in decisions.iter().enumerate() {
        rows.push(format!("(${}, ${}, ${})", i * 3 + 1, i * 3 + 2, i * 3 + 3));
        values.push((*order).into());
        values.push(status.as_str().into());
        values.push(now.into());
    }
    let sql = format!(
        "INSERT INTO order_holds (order_id, status, updated_at) VALUES {} \
         ON CONFLICT (order_id) DO UPDATE SET status = excluded.status, updated_at = excluded.updated_at",
        rows.join(", ")
    );
    execute(conn, &sql, values).await.map(|_| ())
}

/// Records the units held for many orders at once.
pub(crate) async fn record_many_reservations(
    conn: &impl ConnectionTrait,
    lines: &[(Uuid, String, i64)],
) -> Result<(), DbErr> {
    for chunk in lines.chunks(1000) {
        let mut values: Vec<Value> = Vec::with_capacity(chunk.len() * 3);
        let mut rows = Vec::with_capacity(chunk.len());
        for (i, (order, sku, quantity)) in chunk.iter().enumerate() {
            rows.push(format!("(${}, ${}, ${})", i * 3 + 1, i * 3 + 2, i * 3 + 3));
            values.push((*order).into());
            values.push(sku.clone().into());
            values.push((*quantity).into());
        }
        let sql = format!(
            "INSERT INTO stock_reservations (order_id, sku, quantity) VALUES {}",
            rows.join(", ")
        );
        execute(conn, &sql, values).await?;
    }
    Ok(())
}
