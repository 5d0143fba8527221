//! The checkout schema: its local price list, orders (each with its owner) and their lines,
//! payment attempts, and idempotency keys (per customer).

// `MigrationTrait` is declared with `&SchemaManager` and async-trait cannot match an
// explicit `'_` against it.
#![allow(elided_lifetimes_in_paths)]

use module_api::schema::{HandedThrough, KeyHeadIndex, MessagingTables, QueueIndex};
use sea_orm_migration::prelude::*;

mod m0001_orders;
mod m0002_pending_orders;
mod m0003_order_owners;

pub(crate) struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(MessagingTables),
            Box::new(m0001_orders::Migration),
            Box::new(QueueIndex),
            Box::new(m0002_pending_orders::Migration),
            Box::new(m0003_order_owners::Migration),
            Box::new(KeyHeadIndex),
            Box::new(HandedThrough),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every database this module ever migrated recorded these names in its
    /// `seaql_migrations`: renaming or reordering one would make it run again, or refuse
    /// to start.
    #[test]
    fn the_recorded_migration_names_never_change() {
        let names = module_api::schema::names::<Migrator>();
        assert_eq!(
            names,
            [
                "messaging",
                "m0001_orders",
                "messaging_ready",
                "m0002_pending_orders",
                "m0003_order_owners",
                "messaging_key_head",
                "messaging_handed_through"
            ]
        );
    }
}
