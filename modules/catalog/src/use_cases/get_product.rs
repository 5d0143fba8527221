//! Reads one product with its available stock.

use kernel::Sku;
use runtime::ModuleDb;

use crate::db::queries;
use crate::domain::Product;

#[derive(Debug, thiserror::Error)]
pub(crate) enum GetProductError {
    #[error("no product has sku {0}")]
    NotFound(Sku),
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

#[tracing::instrument(name = "catalog.get_product", level = "debug", skip_all, fields(sku = %sku))]
pub(crate) async fn get_product(db: &ModuleDb, sku: Sku) -> Result<Product, GetProductError> {
    queries::find_product(db.conn(), &sku)
        .await?
        .ok_or(GetProductError::NotFound(sku))
}
