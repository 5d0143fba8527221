//! Checkout's local price list, kept from catalog's product events. A price applies only
//! if it comes with a newer product version than the one stored, so events arriving late
//! or twice cannot bring an old price back.

use contracts::catalog::{ProductPublishedV1, ProductRepricedV1};
use module_api::{HandlerError, Incoming, ModuleDb, Tx};

use crate::db::DatabaseTransaction;
use crate::db::queries::{self, StoredPrice};

async fn apply(tx: &DatabaseTransaction, price: StoredPrice) -> Result<(), HandlerError> {
    let (sku, version) = (price.sku.clone(), price.version);
    if !queries::apply_price(tx, price, chrono::Utc::now()).await? {
        tracing::info!(module = "checkout", sku, version, "stale price ignored");
    }
    Ok(())
}

pub(crate) async fn on_published(
    tx: &mut Tx,
    published: Incoming<ProductPublishedV1>,
) -> Result<(), HandlerError> {
    let e = published.event;
    apply(
        tx,
        StoredPrice {
            sku: e.sku,
            price_minor: e.price_minor,
            currency: e.currency,
            version: e.version,
        },
    )
    .await
}

pub(crate) async fn on_repriced(
    tx: &mut Tx,
    repriced: Incoming<ProductRepricedV1>,
) -> Result<(), HandlerError> {
    let e = repriced.event;
    apply(
        tx,
        StoredPrice {
            sku: e.sku,
            price_minor: e.price_minor,
            currency: e.currency,
            version: e.version,
        },
    )
    .await
}

/// A price as checkout knows it.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct Price {
    pub(crate) sku: String,
    pub(crate) price_minor: i64,
    pub(crate) currency: String,
    pub(crate) version: i64,
}

pub(crate) async fn get_price(db: &ModuleDb, sku: &str) -> anyhow::Result<Option<Price>> {
    Ok(queries::price(db.conn(), sku).await?.map(|p| Price {
        sku: p.sku,
        price_minor: p.price_minor,
        currency: p.currency,
        version: p.version,
    }))
}
