//! Reads that join products with their stock levels.

use std::collections::HashMap;

use anyhow::Context;
use kernel::Sku;
use sea_orm::{
    ColumnTrait, ConnectionTrait, EntityTrait, JoinType, QueryFilter, QueryOrder, QuerySelect,
    RelationDef,
};

use super::{products, stock_levels};
use crate::domain::{Product, ProductName, stored_price};

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

/// One product with its stock level, in one query (a left join: a product whose stock row
/// is missing reads as none available).
pub(crate) async fn find_product(
    conn: &impl ConnectionTrait,
    sku: &Sku,
) -> anyhow::Result<Option<Product>> {
    let stock: RelationDef = products::Entity::belongs_to(stock_levels::Entity)
        .from(products::Column::Sku)
        .to(stock_levels::Column::Sku)
        .into();
    let Some((row, stock)) = products::Entity::find_by_id(sku.as_str())
        .join(JoinType::LeftJoin, stock)
        .select_also(stock_levels::Entity)
        .one(conn)
        .await
        .context("failed to load product")?
    else {
        return Ok(None);
    };
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
        .filter(stock_levels::Column::Sku.is_in(skus))
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
