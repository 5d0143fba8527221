//! Holding and releasing stock: the row-level updates behind reservations, batched so a
//! batch of orders costs a handful of statements.

use std::collections::HashMap;

use chrono::Utc;
use module_api::sql::{ArrayType, Rows};
use sea_orm::sea_query::{CaseStatement, Expr, ExprTrait, OnConflict};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect,
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
) -> Result<HashMap<Uuid, Hold>, DbErr> {
    if orders.is_empty() {
        return Ok(HashMap::new());
    }
    order_holds::Entity::find()
        .filter(order_holds::Column::OrderId.is_in(module_api::sql::padded(orders.to_vec())))
        .all(conn)
        .await?
        .into_iter()
        .map(|h| Ok((h.order_id, hold_of(&h.status)?)))
        .collect()
}

/// Units free per sku, for these skus, locking their rows until the transaction ends
/// (PostgreSQL; a SQLite write transaction is exclusive anyway). Rows are locked in sku
/// order, so concurrent batches cannot deadlock on them.
pub(crate) async fn lock_free_units(
    conn: &impl ConnectionTrait,
    skus: &[&str],
) -> Result<HashMap<String, i64>, DbErr> {
    if skus.is_empty() {
        return Ok(HashMap::new());
    }
    Ok(stock_levels::Entity::find()
        .filter(stock_levels::Column::Sku.is_in(module_api::sql::padded(skus.to_vec())))
        .order_by_asc(stock_levels::Column::Sku)
        .lock_exclusive()
        .all(conn)
        .await?
        .into_iter()
        .map(|s| (s.sku, s.on_hand - s.reserved))
        .collect())
}

/// Adds `delta` held units to each sku, in one statement.
pub(crate) async fn hold_many(
    conn: &impl ConnectionTrait,
    deltas: &[(String, i64)],
) -> Result<(), DbErr> {
    if deltas.is_empty() {
        return Ok(());
    }
    let by_sku = deltas
        .iter()
        .fold(CaseStatement::new(), |case, (sku, delta)| {
            case.case(stock_levels::Column::Sku.eq(sku.as_str()), *delta)
        })
        .finally(0i64);
    stock_levels::Entity::update_many()
        .col_expr(
            stock_levels::Column::Reserved,
            Expr::col(stock_levels::Column::Reserved).add(by_sku),
        )
        .filter(
            stock_levels::Column::Sku.is_in(module_api::sql::padded(
                deltas
                    .iter()
                    .map(|(sku, _)| sku.as_str())
                    .collect::<Vec<_>>(),
            )),
        )
        .exec(conn)
        .await
        .map(|_| ())
}

/// The rows of a batch's decisions (one hold per order) and of the units each order
/// reserved, for the deciding transaction to insert when it commits
/// (`Tx::insert_at_commit`: with its outbox rows, one statement on PostgreSQL). The orders
/// have no hold yet: a batch decides only those without one, and a hold found written by
/// then fails the commit, so the batch is handled again and finds it.
pub(crate) fn decided_rows(
    decisions: &[(Uuid, Hold)],
    reservations: &[(Uuid, String, i64)],
) -> [(&'static str, Rows); 2] {
    let now = Utc::now();
    let holds = Rows::new()
        .column(
            "order_id",
            ArrayType::Uuid,
            decisions.iter().map(|(order, _)| (*order).into()),
        )
        .column(
            "status",
            ArrayType::String,
            decisions.iter().map(|(_, hold)| hold.as_str().into()),
        )
        .column(
            "updated_at",
            ArrayType::ChronoDateTimeUtc,
            decisions.iter().map(|_| now.into()),
        );
    let units = Rows::new()
        .column(
            "order_id",
            ArrayType::Uuid,
            reservations.iter().map(|(order, _, _)| (*order).into()),
        )
        .column(
            "sku",
            ArrayType::String,
            reservations.iter().map(|(_, sku, _)| sku.clone().into()),
        )
        .column(
            "quantity",
            ArrayType::BigInt,
            reservations
                .iter()
                .map(|(_, _, quantity)| (*quantity).into()),
        );
    [("order_holds", holds), ("stock_reservations", units)]
}
