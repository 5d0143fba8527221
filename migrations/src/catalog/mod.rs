//! The catalog schema: products with their prices, and stock levels.

use sea_orm_migration::prelude::*;

mod m0001_products;

pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![Box::new(m0001_products::Migration)]
    }
}
