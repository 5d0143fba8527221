//! Prices (a local copy fed by catalog's events), orders, order lines, payment attempts
//! and idempotency keys.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[derive(DeriveIden)]
enum Prices {
    Table,
    Sku,
    PriceMinor,
    Currency,
    Version,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Orders {
    Table,
    Id,
    Status,
    StatusReason,
    CustomerEmail,
    ShippingAddress,
    PaymentToken,
    Currency,
    TotalMinor,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum OrderLines {
    Table,
    OrderId,
    LineNo,
    Sku,
    Quantity,
    UnitPriceMinor,
}

#[derive(DeriveIden)]
enum PaymentAttempts {
    Table,
    Id,
    OrderId,
    Status,
    Attempts,
    NextAttemptAt,
    LockedUntil,
    LastError,
    Reference,
    CorrelationId,
    Traceparent,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum IdempotencyKeys {
    Table,
    Key,
    RequestHash,
    OrderId,
    CreatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Prices::Table)
                    .col(string_len(Prices::Sku, 64).primary_key())
                    .col(big_integer(Prices::PriceMinor))
                    .col(string_len(Prices::Currency, 3))
                    .col(big_integer(Prices::Version))
                    .col(timestamp_with_time_zone(Prices::UpdatedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Orders::Table)
                    .col(uuid(Orders::Id).primary_key())
                    .col(string_len(Orders::Status, 16))
                    .col(string_len_null(Orders::StatusReason, 32))
                    .col(string_len(Orders::CustomerEmail, 254))
                    .col(text(Orders::ShippingAddress))
                    .col(string_len(Orders::PaymentToken, 200))
                    .col(string_len(Orders::Currency, 3))
                    .col(big_integer(Orders::TotalMinor))
                    .col(timestamp_with_time_zone(Orders::CreatedAt))
                    .col(timestamp_with_time_zone(Orders::UpdatedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(OrderLines::Table)
                    .col(uuid(OrderLines::OrderId))
                    .col(integer(OrderLines::LineNo))
                    .col(string_len(OrderLines::Sku, 64))
                    .col(big_integer(OrderLines::Quantity))
                    .col(big_integer(OrderLines::UnitPriceMinor))
                    .primary_key(
                        Index::create()
                            .col(OrderLines::OrderId)
                            .col(OrderLines::LineNo),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_order_lines_order")
                            .from(OrderLines::Table, OrderLines::OrderId)
                            .to(Orders::Table, Orders::Id),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(PaymentAttempts::Table)
                    .col(uuid(PaymentAttempts::Id).primary_key())
                    .col(uuid_uniq(PaymentAttempts::OrderId))
                    .col(string_len(PaymentAttempts::Status, 16))
                    .col(integer(PaymentAttempts::Attempts).default(0))
                    .col(big_integer(PaymentAttempts::NextAttemptAt))
                    .col(big_integer(PaymentAttempts::LockedUntil).default(0))
                    .col(text_null(PaymentAttempts::LastError))
                    .col(string_len_null(PaymentAttempts::Reference, 128))
                    .col(uuid_null(PaymentAttempts::CorrelationId))
                    .col(string_len_null(PaymentAttempts::Traceparent, 64))
                    .col(timestamp_with_time_zone(PaymentAttempts::CreatedAt))
                    .col(timestamp_with_time_zone(PaymentAttempts::UpdatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_payment_attempts_order")
                            .from(PaymentAttempts::Table, PaymentAttempts::OrderId)
                            .to(Orders::Table, Orders::Id),
                    )
                    .to_owned(),
            )
            .await?;
        // Only attempts still to run are indexed for the payment worker.
        manager
            .create_index(
                Index::create()
                    .name("payment_attempts_due")
                    .table(PaymentAttempts::Table)
                    .col(PaymentAttempts::NextAttemptAt)
                    .and_where(Expr::col(PaymentAttempts::Status).eq("pending"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(IdempotencyKeys::Table)
                    .col(string_len(IdempotencyKeys::Key, 255).primary_key())
                    .col(string_len(IdempotencyKeys::RequestHash, 64))
                    .col(uuid(IdempotencyKeys::OrderId))
                    .col(timestamp_with_time_zone(IdempotencyKeys::CreatedAt))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            IdempotencyKeys::Table.into_iden(),
            PaymentAttempts::Table.into_iden(),
            OrderLines::Table.into_iden(),
            Orders::Table.into_iden(),
            Prices::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).to_owned())
                .await?;
        }
        Ok(())
    }
}
