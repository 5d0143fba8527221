//! # fulfillment
//!
//! - **Owns**: schema `fulfillment`.
//!
//! Built out in the next step of the project; for now it owns its schema and role.

use async_trait::async_trait;
use runtime::{Module, ModuleContext, StartedModule};
use sea_orm::{DatabaseConnection, DbErr};

pub struct Fulfillment;

pub const NAME: &str = "fulfillment";

#[async_trait]
impl Module for Fulfillment {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn migrate(&self, conn: &DatabaseConnection) -> Result<(), DbErr> {
        use migrations::MigratorTrait;
        migrations::fulfillment::Migrator::up(conn, None).await
    }

    async fn start(&self, _ctx: ModuleContext) -> anyhow::Result<StartedModule> {
        Ok(StartedModule::with_routes(|_| {}))
    }
}
