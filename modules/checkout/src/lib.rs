//! # checkout
//!
//! - **Owns**: schema `checkout`.
//!
//! Built out in the next step of the project; for now it owns its schema and role.

use async_trait::async_trait;
use runtime::{Module, ModuleContext, StartedModule};
use sea_orm::{DatabaseConnection, DbErr};

pub struct Checkout;

pub const NAME: &str = "checkout";

#[async_trait]
impl Module for Checkout {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn migrate(&self, conn: &DatabaseConnection) -> Result<(), DbErr> {
        use migrations::MigratorTrait;
        migrations::checkout::Migrator::up(conn, None).await
    }

    async fn start(&self, _ctx: ModuleContext) -> anyhow::Result<StartedModule> {
        Ok(StartedModule::with_routes(|_| {}))
    }
}
