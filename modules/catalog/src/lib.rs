//! # catalog
//!
//! Products, their prices and their stock.
//!
//! - **Routes** (under `/api/catalog`): `POST /products`, `GET /products?limit=&after=`,
//!   `GET /products/{sku}`, `PATCH /products/{sku}`, `POST /products/{sku}/restock`.
//! - **Owns**: schema `catalog` (tables `products`, `stock_levels`).
//! - **Settings**: none.
//!
//! Everything else is private: the app knows this crate only through [`Catalog`].

mod db;
mod domain;
mod http;
mod use_cases;

use async_trait::async_trait;
use runtime::{Module, ModuleContext, StartedModule};
use sea_orm::{DatabaseConnection, DbErr};

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

    async fn start(&self, ctx: ModuleContext) -> anyhow::Result<StartedModule> {
        Ok(StartedModule::with_routes(http::routes(ctx.db)))
    }
}
