//! Products (one row per sku, with its current price) and their stock levels.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[derive(DeriveIden)]
enum Products {
    Table,
    Sku,
    Name,
    Description,
    PriceMinor,
    Currency,
    Version,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum StockLevels {
    Table,
    Sku,
    OnHand,
    Reserved,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Products::Table)
                    .col(string_len(Products::Sku, 64).primary_key())
                    .col(string_len(Products::Name, 200))
                    .col(text_null(Products::Description))
                    .col(
                        big_integer(Products::PriceMinor)
                            .check(Expr::col(Products::PriceMinor).gte(0)),
                    )
                    .col(string_len(Products::Currency, 3))
                    .col(big_integer(Products::Version).default(1))
                    .col(timestamp_with_time_zone(Products::CreatedAt))
                    .col(timestamp_with_time_zone(Products::UpdatedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(StockLevels::Table)
                    .col(string_len(StockLevels::Sku, 64).primary_key())
                    .col(
                        big_integer(StockLevels::OnHand)
                            .check(Expr::col(StockLevels::OnHand).gte(0)),
                    )
                    .col(big_integer(StockLevels::Reserved).default(0))
                    .check(Expr::col(StockLevels::Reserved).gte(0))
                    .check(Expr::col(StockLevels::Reserved).lte(Expr::col(StockLevels::OnHand)))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_stock_levels_product")
                            .from(StockLevels::Table, StockLevels::Sku)
                            .to(Products::Table, Products::Sku),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(StockLevels::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(Products::Table).to_owned())
            .await
    }
}
