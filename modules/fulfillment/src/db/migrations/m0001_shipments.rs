//! Shipments (one per order at most), and the orders cancelled before fulfillment heard
//! they were confirmed, so that a confirmation arriving late creates nothing.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[derive(DeriveIden)]
enum Shipments {
    Table,
    Id,
    OrderId,
    Status,
    TrackingNumber,
    Recipient,
    Lines,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum CancelledOrders {
    Table,
    OrderId,
    CancelledAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Shipments::Table)
                    .col(uuid(Shipments::Id).primary_key())
                    .col(uuid_uniq(Shipments::OrderId))
                    .col(string_len(Shipments::Status, 16))
                    .col(string_len_null(Shipments::TrackingNumber, 64))
                    .col(text(Shipments::Recipient))
                    .col(text(Shipments::Lines))
                    .col(timestamp_with_time_zone(Shipments::CreatedAt))
                    .col(timestamp_with_time_zone(Shipments::UpdatedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(CancelledOrders::Table)
                    .col(uuid(CancelledOrders::OrderId).primary_key())
                    .col(timestamp_with_time_zone(CancelledOrders::CancelledAt))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(CancelledOrders::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(Shipments::Table).to_owned())
            .await
    }
}
