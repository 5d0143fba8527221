//! Stock held for orders: what each order holds per sku, and the decision taken for each
//! order (held, refused, released), so a redelivered or late event cannot decide twice.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[derive(DeriveIden)]
enum OrderHolds {
    Table,
    OrderId,
    Status,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum StockReservations {
    Table,
    OrderId,
    Sku,
    Quantity,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(OrderHolds::Table)
                    .col(uuid(OrderHolds::OrderId).primary_key())
                    .col(string_len(OrderHolds::Status, 16))
                    .col(timestamp_with_time_zone(OrderHolds::UpdatedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(StockReservations::Table)
                    .col(uuid(StockReservations::OrderId))
                    .col(string_len(StockReservations::Sku, 64))
                    .col(big_integer(StockReservations::Quantity))
                    .primary_key(
                        Index::create()
                            .col(StockReservations::OrderId)
                            .col(StockReservations::Sku),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(StockReservations::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(OrderHolds::Table).to_owned())
            .await
    }
}
