//! Products with their stock levels: the reads that join them, and the writes of the
//! product use cases.

use std::collections::HashMap;
use std::sync::OnceLock;

use anyhow::Context;
use chrono::{DateTime, Utc};
use kernel::{Money, Quantity, Sku, StockLevel};
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, JoinType, QueryFilter,
    QueryOrder, QuerySelect, QueryTrait, RelationDef, SelectTwo, SelectTwoModel, SelectorTrait,
    Statement,
};

use super::{is_unique_violation, products, stock_levels};
use crate::domain::{NewProduct, Product, ProductName, stored_price};

fn to_product(
    row: products::Model,
    stock: Option<&stock_levels::Model>,
) -> anyhow::Result<Product> {
    let available = stock.map_or(0, |s| s.on_hand - s.reserved);
    Ok(Product {
        sku: Sku::parse(&row.sku)
            .with_context(|| format!("stored sku {:?} is invalid", row.sku))?,
        name: ProductName::parse(&row.name)
            .with_context(|| format!("stored name of {} is invalid", row.sku))?,
        price: stored_price(row.price_minor, &row.currency)?,
        description: row.description,
        available,
        version: row.version,
    })
}

/// The query of [`find_product`]: the product by sku, its stock level by a left join (a
/// product whose stock row is missing reads as none available).
fn product_with_stock(sku: &str) -> SelectTwo<products::Entity, stock_levels::Entity> {
    let stock: RelationDef = products::Entity::belongs_to(stock_levels::Entity)
        .from(products::Column::Sku)
        .to(stock_levels::Column::Sku)
        .into();
    products::Entity::find_by_id(sku)
        .join(JoinType::LeftJoin, stock)
        .select_also(stock_levels::Entity)
}

/// The statement of [`product_with_stock`] for `sku`. Its SQL text is the same for every sku
/// (the sku is a bound value), so it is built once per backend and reused: building it with
/// sea-query cost as many instructions as the rest of the read's own code.
fn product_with_stock_statement(backend: DbBackend, sku: &str) -> Statement {
    static SQL: [OnceLock<String>; 3] = [OnceLock::new(), OnceLock::new(), OnceLock::new()];
    let slot = match backend {
        DbBackend::Postgres => 0,
        DbBackend::Sqlite => 1,
        _ => 2,
    };
    let sql = SQL[slot].get_or_init(|| product_with_stock("").build(backend).sql);
    Statement::from_sql_and_values(backend, sql.as_str(), [sku.into()])
}

/// One product with its stock level, in one query.
pub(crate) async fn find_product(
    conn: &impl ConnectionTrait,
    sku: &Sku,
) -> anyhow::Result<Option<Product>> {
    let statement = product_with_stock_statement(conn.get_database_backend(), sku.as_str());
    let Some(found) = conn
        .query_one_raw(statement)
        .await
        .context("failed to load product")?
    else {
        return Ok(None);
    };
    let (row, stock) =
        SelectTwoModel::<products::Model, stock_levels::Model>::from_raw_query_result(found)
            .context("failed to load product")?;
    to_product(row, stock.as_ref()).map(Some)
}

/// Up to `limit` products with a sku after `after`, in sku order.
pub(crate) async fn list_products(
    conn: &impl ConnectionTrait,
    after: Option<&Sku>,
    limit: u64,
) -> anyhow::Result<Vec<Product>> {
    let mut query = products::Entity::find().order_by_asc(products::Column::Sku);
    if let Some(after) = after {
        query = query.filter(products::Column::Sku.gt(after.as_str()));
    }
    let rows = query
        .limit(limit)
        .all(conn)
        .await
        .context("failed to list products")?;
    let skus: Vec<&str> = rows.iter().map(|r| r.sku.as_str()).collect();
    let stock: HashMap<String, stock_levels::Model> = stock_levels::Entity::find()
        .filter(stock_levels::Column::Sku.is_in(module_api::sql::padded(skus)))
        .all(conn)
        .await
        .context("failed to load stock levels")?
        .into_iter()
        .map(|s| (s.sku.clone(), s))
        .collect();
    rows.into_iter()
        .map(|row| {
            let level = stock.get(&row.sku);
            to_product(row, level)
        })
        .collect()
}

/// Inserts a new product at version 1 with its stock level; false when its sku is taken
/// (nothing is written then).
pub(crate) async fn insert_product(
    conn: &impl ConnectionTrait,
    new: &NewProduct,
    now: DateTime<Utc>,
) -> anyhow::Result<bool> {
    let inserted = products::Entity::insert(products::ActiveModel {
        sku: Set(new.sku.to_string()),
        name: Set(new.name.as_str().to_owned()),
        description: Set(new.description.clone()),
        price_minor: Set(new.price.minor()),
        currency: Set(new.price.currency().to_string()),
        version: Set(1),
        created_at: Set(now),
        updated_at: Set(now),
    })
    .exec_without_returning(conn)
    .await;
    match inserted {
        Ok(_) => {}
        Err(e) if is_unique_violation(&e) => return Ok(false),
        Err(e) => return Err(anyhow::Error::new(e).context("failed to insert product")),
    }
    stock_levels::Entity::insert(stock_levels::ActiveModel {
        sku: Set(new.sku.to_string()),
        on_hand: Set(new.initial_stock.get()),
        reserved: Set(0),
    })
    .exec_without_returning(conn)
    .await
    .context("failed to insert stock level")?;
    Ok(true)
}

/// A product's current price and version, its row locked until the transaction ends
/// (PostgreSQL; SQLite's write transactions are exclusive): two changes at once would
/// otherwise both read one version and write the same next one.
pub(crate) async fn lock_product(
    conn: &impl ConnectionTrait,
    sku: &Sku,
) -> anyhow::Result<Option<(Money, i64)>> {
    let Some(row) = products::Entity::find_by_id(sku.as_str())
        .lock_exclusive()
        .one(conn)
        .await
        .context("failed to load product")?
    else {
        return Ok(None);
    };
    Ok(Some((
        stored_price(row.price_minor, &row.currency)?,
        row.version,
    )))
}

/// What an update writes; `None` leaves a field as it is.
pub(crate) struct ProductUpdate<'a> {
    pub(crate) name: Option<&'a ProductName>,
    /// `Some(None)` clears the description.
    pub(crate) description: Option<Option<&'a str>>,
    pub(crate) price: Option<Money>,
    pub(crate) version: i64,
    pub(crate) now: DateTime<Utc>,
}

pub(crate) async fn update_product(
    conn: &impl ConnectionTrait,
    sku: &Sku,
    update: ProductUpdate<'_>,
) -> anyhow::Result<()> {
    let mut query = products::Entity::update_many()
        .col_expr(products::Column::Version, Expr::value(update.version))
        .col_expr(products::Column::UpdatedAt, Expr::value(update.now))
        .filter(products::Column::Sku.eq(sku.as_str()));
    if let Some(name) = update.name {
        query = query.col_expr(products::Column::Name, Expr::value(name.as_str()));
    }
    if let Some(description) = update.description {
        query = query.col_expr(
            products::Column::Description,
            Expr::value(description.map(str::to_owned)),
        );
    }
    if let Some(price) = update.price {
        query = query.col_expr(products::Column::PriceMinor, Expr::value(price.minor()));
    }
    query.exec(conn).await.context("failed to update product")?;
    Ok(())
}

/// Adds `quantity` units on hand unless that would put more than [`StockLevel::MAX`] there;
/// false when nothing was added (the sku has no stock row, or it is too full).
pub(crate) async fn add_units(
    conn: &impl ConnectionTrait,
    sku: &Sku,
    quantity: Quantity,
) -> anyhow::Result<bool> {
    let updated = stock_levels::Entity::update_many()
        .col_expr(
            stock_levels::Column::OnHand,
            Expr::col(stock_levels::Column::OnHand).add(quantity.get()),
        )
        .filter(stock_levels::Column::Sku.eq(sku.as_str()))
        .filter(stock_levels::Column::OnHand.lte(StockLevel::MAX - quantity.get()))
        .exec(conn)
        .await
        .context("failed to restock")?;
    Ok(updated.rows_affected == 1)
}

/// Whether `sku` has a stock row.
pub(crate) async fn has_stock_level(
    conn: &impl ConnectionTrait,
    sku: &Sku,
) -> anyhow::Result<bool> {
    Ok(stock_levels::Entity::find_by_id(sku.as_str())
        .one(conn)
        .await
        .context("failed to load stock level")?
        .is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reused_product_statement_is_the_one_sea_orm_builds_for_that_sku() {
        for backend in [DbBackend::Postgres, DbBackend::Sqlite] {
            for sku in ["SKU-00001", "TEA-1", "SKU-00001"] {
                let built = product_with_stock(sku).build(backend);
                let reused = product_with_stock_statement(backend, sku);
                assert_eq!(reused.sql, built.sql, "{backend:?}");
                assert_eq!(reused.values, built.values, "{backend:?} {sku}");
                assert_eq!(reused.db_backend, built.db_backend);
            }
        }
    }
}
