//! The highest outbox id the module's relay handed to consumers directly (the in-process
//! bus), recorded before each handover: a relay that takes the lease over after a crash
//! counts the deliveries its predecessor may have made of the events still unpublished.

use sea_orm_migration::prelude::*;

/// Recorded as `messaging_handed_through` in every module's `seaql_migrations`.
pub struct HandedThrough;

impl MigrationName for HandedThrough {
    fn name(&self) -> &str {
        "messaging_handed_through"
    }
}

#[derive(DeriveIden)]
enum RelayLease {
    Table,
    HandedThrough,
}

#[async_trait::async_trait]
impl MigrationTrait for HandedThrough {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(RelayLease::Table)
                    .add_column(
                        ColumnDef::new(RelayLease::HandedThrough)
                            .big_integer()
                            .not_null()
                            .default(0),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(RelayLease::Table)
                    .drop_column(RelayLease::HandedThrough)
                    .to_owned(),
            )
            .await
    }
}
