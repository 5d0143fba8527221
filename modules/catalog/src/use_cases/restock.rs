//! Adds units to a product's stock.

use anyhow::Context;
use kernel::{Quantity, Sku, StockLevel};
use module_api::ModuleDb;

use crate::db::product_cache::ProductCache;

use crate::db::queries;
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
    products: &ProductCache,
    sku: Sku,
    quantity: Quantity,
) -> Result<Product, RestockError> {
    let tx = db.begin().await.context("failed to begin a transaction")?;
    if !queries::add_units(&tx, &sku, quantity).await? {
        return Err(if queries::has_stock_level(&tx, &sku).await? {
            RestockError::TooMuchStock { quantity }
        } else {
            RestockError::NotFound(sku)
        });
    }
    let product = queries::find_product(&tx, &sku)
        .await?
        .context("the product vanished inside its own transaction")?;
    tx.commit().await.context("failed to commit restock")?;
    products.forget([sku.as_str()]);
    tracing::info!(available = product.available, "restocked");
    Ok(product)
}
