//! An index of the in-process bus queue's unclaimed rows, in id order: a claim walks it
//! from the front and stops after what it takes, so its cost follows what it claims, not
//! the length of the backlog, whatever the planner's statistics say.

use sea_orm_migration::prelude::*;

/// Recorded as `messaging_ready` in every module's `seaql_migrations`: the name existing
/// databases know it by, whatever this file is called.
pub struct QueueIndex;

impl MigrationName for QueueIndex {
    fn name(&self) -> &str {
        "messaging_ready"
    }
}

#[derive(DeriveIden)]
enum BusQueue {
    Table,
    Id,
    LockedBy,
}

#[async_trait::async_trait]
impl MigrationTrait for QueueIndex {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_index(
                Index::create()
                    .name("bus_queue_unclaimed")
                    .table(BusQueue::Table)
                    .col(BusQueue::Id)
                    .and_where(Expr::col(BusQueue::LockedBy).is_null())
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name("bus_queue_unclaimed")
                    .table(BusQueue::Table)
                    .to_owned(),
            )
            .await
    }
}
