//! Reads one product with its available stock, from memory when it was read lately
//! (`db::product_cache` says how old that can be).

use kernel::Sku;
use module_api::ModuleDb;

use crate::db::product_cache::ProductCache;

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
pub(crate) async fn get_product(
    db: &ModuleDb,
    products: &ProductCache,
    sku: Sku,
) -> Result<Product, GetProductError> {
    products
        .get_or_load(&sku, queries::find_product(db.conn(), &sku))
        .await?
        .ok_or(GetProductError::NotFound(sku))
}
