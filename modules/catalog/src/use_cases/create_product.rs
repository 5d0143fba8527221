//! Adds a product with its price and initial stock, and announces it.

use anyhow::Context;
use chrono::Utc;
use contracts::Cause;
use contracts::catalog::ProductPublishedV1;
use kernel::Sku;

use crate::db::queries;
use crate::domain::{NewProduct, Product};
use module_api::Store;

#[derive(Debug, thiserror::Error)]
pub(crate) enum CreateProductError {
    #[error("a product with sku {0} already exists")]
    DuplicateSku(Sku),
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

#[tracing::instrument(name = "catalog.create_product", skip_all, fields(sku = %new.sku))]
pub(crate) async fn create_product(
    store: &Store,
    cause: &Cause,
    new: NewProduct,
) -> Result<Product, CreateProductError> {
    let now = Utc::now();
    let mut tx = store
        .begin(cause)
        .await
        .context("failed to begin a transaction")?;
    if !queries::insert_product(&tx, &new, now).await? {
        return Err(CreateProductError::DuplicateSku(new.sku));
    }
    tx.publish(&ProductPublishedV1 {
        sku: new.sku.to_string(),
        name: new.name.as_str().to_owned(),
        price_minor: new.price.minor(),
        currency: new.price.currency().to_string(),
        version: 1,
    })
    .context("the product does not fit its event")?;
    tx.commit().await.context("failed to commit new product")?;
    tracing::info!("product created");
    Ok(Product {
        sku: new.sku,
        name: new.name,
        description: new.description,
        price: new.price,
        available: new.initial_stock.get(),
        version: 1,
    })
}
