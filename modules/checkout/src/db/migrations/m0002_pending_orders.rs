//! An index of the orders still pending, by age: the saga's watchdog counts the overdue
//! ones often, and pending orders are few beside all the orders ever placed.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[derive(DeriveIden)]
enum Orders {
    Table,
    Status,
    CreatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_index(
                Index::create()
                    .name("orders_pending_since")
                    .table(Orders::Table)
                    .col(Orders::CreatedAt)
                    .and_where(Expr::col(Orders::Status).eq("pending"))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name("orders_pending_since")
                    .table(Orders::Table)
                    .to_owned(),
            )
            .await
    }
}
