//! Changes a product's name, description or price; a new price is announced.

use anyhow::Context;
use chrono::Utc;
use contracts::Cause;
use contracts::catalog::ProductRepricedV1;
use kernel::Sku;

use crate::db::product_cache::ProductCache;
use crate::db::queries::{self, ProductUpdate};
use crate::domain::{Product, ProductChanges, reprice};
use module_api::Store;

#[derive(Debug, thiserror::Error)]
pub(crate) enum UpdateProductError {
    #[error("no product has sku {0}")]
    NotFound(Sku),
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

#[tracing::instrument(name = "catalog.update_product", skip_all, fields(sku = %sku))]
pub(crate) async fn update_product(
    store: &Store,
    products: &ProductCache,
    cause: &Cause,
    sku: Sku,
    changes: ProductChanges,
) -> Result<Product, UpdateProductError> {
    let mut tx = store
        .begin(cause)
        .await
        .context("failed to begin a transaction")?;
    let Some((current_price, version)) = queries::lock_product(&tx, &sku).await? else {
        return Err(UpdateProductError::NotFound(sku));
    };
    let mut repriced = None;
    if let Some(minor) = changes.price_minor
        && minor != current_price.minor()
    {
        let price = reprice(current_price, minor).context("price was checked by the request")?;
        repriced = Some(price);
    }
    queries::update_product(
        &tx,
        &sku,
        ProductUpdate {
            name: changes.name.as_ref(),
            description: changes.description.as_ref().map(Option::as_deref),
            price: repriced,
            version: version + 1,
            now: Utc::now(),
        },
    )
    .await?;
    let product = queries::find_product(&tx, &sku)
        .await?
        .context("the product vanished inside its own transaction")?;
    if let Some(price) = repriced {
        tx.publish(&ProductRepricedV1 {
            sku: sku.to_string(),
            price_minor: price.minor(),
            currency: price.currency().to_string(),
            version: product.version,
        })
        .context("the price does not fit its event")?;
    }
    tx.commit()
        .await
        .context("failed to commit product change")?;
    products.forget([sku.as_str()]);
    tracing::info!(version = product.version, "product updated");
    Ok(product)
}
