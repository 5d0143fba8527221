//! Checkout's local price list, kept from catalog's product events. A price applies only
//! if it comes with a newer product version than the one stored, so events arriving late
//! or twice cannot bring an old price back.

use contracts::catalog::{ProductPublishedV1, ProductRepricedV1};
use messaging::HandlerError;
use messaging::db::{execute, query};
use runtime::ModuleDb;
use sea_orm::ConnectionTrait;

async fn apply(
    conn: &impl ConnectionTrait,
    sku: &str,
    price_minor: i64,
    currency: &str,
    version: i64,
) -> Result<(), HandlerError> {
    let applied = execute(
        conn,
        "INSERT INTO prices (sku, price_minor, currency, version, updated_at) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (sku) DO UPDATE SET price_minor = excluded.price_minor, currency = excluded.currency, \
           version = excluded.version, updated_at = excluded.updated_at \
         WHERE prices.version < excluded.version",
        vec![
            sku.into(),
            price_minor.into(),
            currency.into(),
            version.into(),
            chrono::Utc::now().into(),
        ],
    )
    .await?;
    if applied == 0 {
        tracing::info!(module = "checkout", sku, version, "stale price ignored");
    }
    Ok(())
}

pub(crate) async fn on_published(
    conn: &impl ConnectionTrait,
    e: ProductPublishedV1,
) -> Result<(), HandlerError> {
    apply(conn, &e.sku, e.price_minor, &e.currency, e.version).await
}

pub(crate) async fn on_repriced(
    conn: &impl ConnectionTrait,
    e: ProductRepricedV1,
) -> Result<(), HandlerError> {
    apply(conn, &e.sku, e.price_minor, &e.currency, e.version).await
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
    let rows = query(
        db.conn(),
        "SELECT sku, price_minor, currency, version FROM prices WHERE sku = $1",
        vec![sku.into()],
    )
    .await?;
    rows.first()
        .map(|r| {
            Ok(Price {
                sku: r.try_get("", "sku")?,
                price_minor: r.try_get("", "price_minor")?,
                currency: r.try_get("", "currency")?,
                version: r.try_get("", "version")?,
            })
        })
        .transpose()
}
