//! Adds units to a product's stock.

use anyhow::Context;
use kernel::{Quantity, Sku, StockLevel};
use runtime::ModuleDb;
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};

use crate::db::{queries, stock_levels};
use crate::domain::Product;

#[derive(Debug, thiserror::Error)]
pub(crate) enum RestockError {
    #[error("no product has sku {0}")]
    NotFound(Sku),
    #[error("restocking {quantity} would put more than {max} units on hand", max = StockLevel::MAX)]
    TooMuchStock { quantity: Quantity },
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

#[tracing::instrument(name = "catalog.restock", skip_all, fields(sku = %sku, quantity = %quantity))]
pub(crate) async fn restock(
    db: &ModuleDb,
    sku: Sku,
    quantity: Quantity,
) -> Result<Product, RestockError> {
    let tx = db.begin().await.context("failed to begin a transaction")?;
    let updated = stock_levels::Entity::update_many()
        .col_expr(
            stock_levels::Column::OnHand,
            Expr::col(stock_levels::Column::OnHand).add(quantity.get()),
        )
        .filter(stock_levels::Column::Sku.eq(sku.as_str()))
        .filter(stock_levels::Column::OnHand.lte(StockLevel::MAX - quantity.get()))
        .exec(&tx)
        .await
        .context("failed to restock")?;
    if updated.rows_affected == 0 {
        let exists = stock_levels::Entity::find_by_id(sku.as_str())
            .one(&tx)
            .await
            .context("failed to load stock level")?
            .is_some();
        return Err(if exists {
            RestockError::TooMuchStock { quantity }
        } else {
            RestockError::NotFound(sku)
        });
    }
    let product = queries::find_product(&tx, &sku)
        .await?
        .context("the product vanished inside its own transaction")?;
    tx.commit().await.context("failed to commit restock")?;
    tracing::info!(available = product.available, "restocked");
    Ok(product)
}
