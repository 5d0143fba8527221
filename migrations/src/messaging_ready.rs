//! An index of the in-process bus queue's unclaimed rows, in id order: a claim walks it
//! from the front and stops after what it takes, so its cost follows what it claims, not
//! the length of the backlog, whatever the planner's statistics say.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[derive(DeriveIden)]
enum BusQueue {
    Table,
    Id,
    LockedBy,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
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
