//! Changes a product's name, description or price; a new price is announced.

use anyhow::Context;
use chrono::Utc;
use contracts::catalog::ProductRepricedV1;
use contracts::{Cause, Envelope};
use kernel::Sku;
use sea_orm::{ActiveModelTrait, ActiveValue::Set, EntityTrait, IntoActiveModel, QuerySelect};

use crate::State;
use crate::db::{products, queries};
use crate::domain::{Product, ProductChanges, reprice, stored_price};

#[derive(Debug, thiserror::Error)]
pub(crate) enum UpdateProductError {
    #[error("no product has sku {0}")]
    NotFound(Sku),
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

#[tracing::instrument(name = "catalog.update_product", skip_all, fields(sku = %sku))]
pub(crate) async fn update_product(
    state: &State,
    cause: &Cause,
    sku: Sku,
    changes: ProductChanges,
) -> Result<Product, UpdateProductError> {
    let tx = state
        .db
        .begin()
        .await
        .context("failed to begin a transaction")?;
    // Locked until commit (PostgreSQL; SQLite's write transactions are exclusive): two
    // changes at once would otherwise both read one version and write the same next one,
    // and checkout, which keeps only newer versions, would keep whichever came first.
    let Some(row) = products::Entity::find_by_id(sku.as_str())
        .lock_exclusive()
        .one(&tx)
        .await
        .context("failed to load product")?
    else {
        return Err(UpdateProductError::NotFound(sku));
    };
    let current_price = stored_price(row.price_minor, &row.currency)?;
    let version = row.version;
    let mut active = row.into_active_model();
    if let Some(name) = &changes.name {
        active.name = Set(name.as_str().to_owned());
    }
    if let Some(description) = &changes.description {
        active.description = Set(description.clone());
    }
    let mut repriced = None;
    if let Some(minor) = changes.price_minor
        && minor != current_price.minor()
    {
        let price = reprice(current_price, minor).context("price was checked by the request")?;
        active.price_minor = Set(price.minor());
        repriced = Some(price);
    }
    active.version = Set(version + 1);
    active.updated_at = Set(Utc::now());
    active
        .update(&tx)
        .await
        .context("failed to update product")?;
    let product = queries::find_product(&tx, &sku)
        .await?
        .context("the product vanished inside its own transaction")?;
    if let Some(price) = repriced {
        let event = Envelope::new(
            &ProductRepricedV1 {
                sku: sku.to_string(),
                price_minor: price.minor(),
                currency: price.currency().to_string(),
                version: product.version,
            },
            cause,
        )
        .context("the price does not fit its event")?;
        state
            .outbox
            .append(&tx, &[event])
            .await
            .context("failed to append product_repriced")?;
    }
    state
        .outbox
        .commit(tx)
        .await
        .context("failed to commit product change")?;
    tracing::info!(version = product.version, "product updated");
    Ok(product)
}
