//! # catalog
//!
//! Products, their prices and their stock.
//!
//! - **Routes** (under `/api/catalog`): `POST /products`, `GET /products?limit=&after=`,
//!   `GET /products/{sku}`, `PATCH /products/{sku}`, `POST /products/{sku}/restock`.
//! - **Publishes**: `catalog.product_published.v1`, `catalog.product_repriced.v1`,
//!   `catalog.stock_reserved.v1`, `catalog.stock_rejected.v1`, `catalog.stock_released.v1`.
//! - **Consumes**: `checkout.order_placed.v1` (hold stock for every line or none),
//!   `checkout.order_cancelled.v1` (release it), `checkout.order_reinstated.v1` (hold it
//!   again after a cancel lost to a dispatch).
//! - **Owns**: schema `catalog` (tables `products`, `stock_levels`, `order_holds`,
//!   `stock_reservations`, and the messaging tables).
//! - **Settings**: `[modules.catalog]`: `product_cache_ms` (1000), how long a product read
//!   may be served from memory; this process's own changes show at once, another
//!   replica's within that time; 0 turns the cache off.
//!
//! Everything else is private: the app knows this crate only through [`Catalog`].

mod db;
mod domain;
mod events;
mod http;
mod use_cases;

use std::time::Duration;

use async_trait::async_trait;
use db::product_cache::ProductCache;
use db::{DatabaseConnection, DbErr};
use kernel::FieldErrors;
use module_api::Store;
use module_api::parse_settings;
use module_api::{Module, ModuleContext, StartedModule};
use serde::Deserialize;
use validator::Validate;

/// What catalog's routes work with: the module's store, and the products read lately.
#[derive(Clone)]
pub(crate) struct State {
    pub(crate) store: Store,
    /// Products read recently; whatever changes a product forgets it after commit.
    pub(crate) products: ProductCache,
}

#[derive(Debug, Clone, Deserialize, Validate)]
#[serde(deny_unknown_fields, default)]
struct Settings {
    /// How long a product read may be served from memory (0: never). Bounds how old a read
    /// can be when another replica changed the product; this process's own changes show at
    /// once.
    #[validate(range(max = 60000))]
    product_cache_ms: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            product_cache_ms: 1000,
        }
    }
}

fn settings(raw: &serde_json::Value) -> Result<Settings, FieldErrors> {
    let settings: Settings = parse_settings(raw)?;
    settings
        .validate()
        .map_err(|e| module_api::flatten_validation_errors(&e))?;
    Ok(settings)
}

/// The catalog module, as the host sees it.
pub struct Catalog;

pub const NAME: &str = "catalog";

#[async_trait]
impl Module for Catalog {
    fn name(&self) -> &'static str {
        NAME
    }

    fn check_settings(&self, raw: &serde_json::Value, _: &str) -> Result<(), FieldErrors> {
        settings(raw).map(|_| ())
    }

    async fn migrate(&self, conn: &DatabaseConnection) -> Result<(), DbErr> {
        module_api::schema::up::<db::Migrator>(conn).await
    }

    fn openapi(&self) -> utoipa::openapi::OpenApi {
        <http::ApiDoc as utoipa::OpenApi>::openapi()
    }

    fn migrations(&self) -> Vec<String> {
        module_api::schema::names::<db::Migrator>()
    }

    async fn start(&self, ctx: ModuleContext) -> anyhow::Result<StartedModule> {
        // Present at zero from start-up, so an alert on any increase has a series to watch.
        metrics::describe_counter!(
            "catalog_oversold_units_total",
            "Units a dispatched order needed that were no longer free to hold"
        );
        metrics::counter!("catalog_oversold_units_total").increment(0);
        let settings =
            settings(&ctx.settings).map_err(|e| anyhow::anyhow!("modules.catalog: {e}"))?;
        let products = ProductCache::new(Duration::from_millis(settings.product_cache_ms));
        let state = State {
            store: ctx.store,
            products: products.clone(),
        };
        Ok(events::handlers(
            StartedModule::with_routes(http::routes(state)),
            products,
        ))
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn product_reads_are_remembered_for_a_second_unless_told_otherwise() {
        assert_eq!(settings(&json!({})).expect("valid").product_cache_ms, 1000);
        assert_eq!(
            settings(&json!({"product_cache_ms": 0}))
                .expect("valid")
                .product_cache_ms,
            0
        );
    }

    #[test]
    fn a_cache_time_over_a_minute_or_not_a_number_is_refused_by_name() {
        for bad in [
            json!({"product_cache_ms": 60001}),
            json!({"product_cache_ms": "1s"}),
            json!({"product_cache_ms": -1}),
        ] {
            let errors = settings(&bad).expect_err("refused").to_string();
            assert!(errors.contains("product_cache_ms"), "{bad}: {errors}");
        }
        let unknown = settings(&json!({"cache": 5}))
            .expect_err("refused")
            .to_string();
        assert!(unknown.contains("cache"), "{unknown}");
    }
}
