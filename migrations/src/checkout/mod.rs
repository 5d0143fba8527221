//! The checkout schema: its local price list, orders (each with its owner) and their lines,
//! payment attempts, and idempotency keys (per customer).

use sea_orm_migration::prelude::*;

mod m0001_orders;
mod m0002_pending_orders;
mod m0003_order_owners;

pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(crate::messaging::Migration),
            Box::new(m0001_orders::Migration),
            Box::new(crate::messaging_ready::Migration),
            Box::new(m0002_pending_orders::Migration),
            Box::new(m0003_order_owners::Migration),
        ]
    }
}
