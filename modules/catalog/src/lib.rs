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
//! - **Settings**: none.
//!
//! Everything else is private: the app knows this crate only through [`Catalog`].

mod db;
mod domain;
mod events;
mod http;
mod use_cases;

use async_trait::async_trait;
use db::{DatabaseConnection, DbErr};
use runtime::{Module, ModuleContext, StartedModule};

/// The catalog module, as the host sees it.
pub struct Catalog;

pub const NAME: &str = "catalog";

#[async_trait]
impl Module for Catalog {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn migrate(&self, conn: &DatabaseConnection) -> Result<(), DbErr> {
        use migrations::MigratorTrait;
        migrations::catalog::Migrator::up(conn, None).await
    }

    fn openapi(&self) -> utoipa::openapi::OpenApi {
        <http::ApiDoc as utoipa::OpenApi>::openapi()
    }

    fn migrations(&self) -> Vec<String> {
        use migrations::MigratorTrait;
        migrations::catalog::Migrator::migrations()
            .iter()
            .map(|m| m.name().to_owned())
            .collect()
    }

    async fn start(&self, ctx: ModuleContext) -> anyhow::Result<StartedModule> {
        // Present at zero from start-up, so an alert on any increase has a series to watch.
        metrics::describe_counter!(
            "catalog_oversold_units_total",
            "Units a dispatched order needed that were no longer free to hold"
        );
        metrics::counter!("catalog_oversold_units_total").increment(0);
        Ok(events::handlers(StartedModule::with_routes(http::routes(
            ctx.store,
        ))))
    }
}
