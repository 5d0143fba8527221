//! The catalog schema: products with their prices, stock levels, and stock held for orders.

use sea_orm_migration::prelude::*;

mod m0001_products;
mod m0002_reservations;

pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m0001_products::Migration),
            Box::new(crate::messaging::Migration),
            Box::new(m0002_reservations::Migration),
            Box::new(crate::messaging_ready::Migration),
        ]
    }
}
