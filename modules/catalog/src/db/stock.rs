//! Holding and releasing stock: the row-level updates behind reservations.

use chrono::Utc;
use sea_orm::sea_query::{Expr, ExprTrait, OnConflict};
use sea_orm::{ActiveValue::Set, ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter};
use uuid::Uuid;

use super::{order_holds, stock_levels, stock_reservations};

/// The decision already taken for an order, if any.
pub(crate) async fn hold_status(
    conn: &impl ConnectionTrait,
    order_id: Uuid,
) -> Result<Option<String>, DbErr> {
    Ok(order_holds::Entity::find_by_id(order_id)
        .one(conn)
        .await?
        .map(|h| h.status))
}

pub(crate) async fn set_hold(
    conn: &impl ConnectionTrait,
    order_id: Uuid,
    status: &str,
) -> Result<(), DbErr> {
    order_holds::Entity::insert(order_holds::ActiveModel {
        order_id: Set(order_id),
        status: Set(status.to_owned()),
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

/// Holds `quantity` units of `sku` if that many are free; false when they are not (or the
/// sku is unknown).
pub(crate) async fn try_hold(
    conn: &impl ConnectionTrait,
    sku: &str,
    quantity: i64,
) -> Result<bool, DbErr> {
    let updated = stock_levels::Entity::update_many()
        .col_expr(
            stock_levels::Column::Reserved,
            Expr::col(stock_levels::Column::Reserved).add(quantity),
        )
        .filter(stock_levels::Column::Sku.eq(sku))
        .filter(
            Expr::col(stock_levels::Column::OnHand)
                .sub(Expr::col(stock_levels::Column::Reserved))
                .gte(quantity),
        )
        .exec(conn)
        .await?;
    Ok(updated.rows_affected == 1)
}

/// Units of `sku` on hand and not held; 0 for an unknown sku.
pub(crate) async fn available(conn: &impl ConnectionTrait, sku: &str) -> Result<i64, DbErr> {
    Ok(stock_levels::Entity::find_by_id(sku)
        .one(conn)
        .await?
        .map_or(0, |s| s.on_hand - s.reserved))
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
