//! The fulfillment schema: shipments.

use sea_orm_migration::prelude::*;

mod m0001_shipments;

pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(crate::messaging::Migration),
            Box::new(m0001_shipments::Migration),
            Box::new(crate::messaging_ready::Migration),
        ]
    }
}
