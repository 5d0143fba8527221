//! The tables every module has for its events, whatever the bus: the outbox (events it
//! publishes, written in the same transaction as the change they announce), the relay's
//! lease, the inbox (which handler already processed which event), the local bus queue
//! (events delivered to this module by the in-process bus), and the dead letters.
//! Machine times are epoch milliseconds (BIGINT), the same on both backends.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

/// Recorded as `messaging` in every module's `seaql_migrations`: the name existing
/// databases know it by, whatever this file is called.
pub struct MessagingTables;

impl MigrationName for MessagingTables {
    fn name(&self) -> &str {
        "messaging"
    }
}

#[derive(DeriveIden)]
enum Outbox {
    Table,
    Id,
    EventId,
    EventType,
    OrderingKey,
    Envelope,
    CreatedAt,
    PublishedAt,
}

#[derive(DeriveIden)]
enum RelayLease {
    Table,
    Name,
    Holder,
    HeldUntil,
}

#[derive(DeriveIden)]
enum Inbox {
    Table,
    EventId,
    Handler,
    ProcessedAt,
}

#[derive(DeriveIden)]
enum BusQueue {
    Table,
    Id,
    EventId,
    EventType,
    OrderingKey,
    Envelope,
    Deliveries,
    VisibleAt,
    LockedBy,
    LockedUntil,
    LastError,
    EnqueuedAt,
}

#[derive(DeriveIden)]
enum DeadLetters {
    Table,
    Id,
    EventId,
    EventType,
    Handlers,
    Raw,
    Attempts,
    LastError,
    Status,
    FirstFailedAt,
    LastFailedAt,
    ResolvedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for MessagingTables {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Outbox::Table)
                    .col(big_pk_auto(Outbox::Id))
                    .col(uuid_uniq(Outbox::EventId))
                    .col(string_len(Outbox::EventType, 128))
                    .col(string_len(Outbox::OrderingKey, 256))
                    .col(text(Outbox::Envelope))
                    .col(big_integer(Outbox::CreatedAt))
                    .col(big_integer_null(Outbox::PublishedAt))
                    .to_owned(),
            )
            .await?;
        // Only unpublished rows are indexed for the relay, so the index stays small.
        manager
            .create_index(
                Index::create()
                    .name("outbox_pending")
                    .table(Outbox::Table)
                    .col(Outbox::Id)
                    .and_where(Expr::col(Outbox::PublishedAt).is_null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("outbox_published")
                    .table(Outbox::Table)
                    .col(Outbox::PublishedAt)
                    .and_where(Expr::col(Outbox::PublishedAt).is_not_null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(RelayLease::Table)
                    .col(string_len(RelayLease::Name, 64).primary_key())
                    .col(string_len_null(RelayLease::Holder, 128))
                    .col(big_integer(RelayLease::HeldUntil))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Inbox::Table)
                    .col(uuid(Inbox::EventId))
                    .col(string_len(Inbox::Handler, 128))
                    .col(big_integer(Inbox::ProcessedAt))
                    .primary_key(Index::create().col(Inbox::EventId).col(Inbox::Handler))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("inbox_processed_at")
                    .table(Inbox::Table)
                    .col(Inbox::ProcessedAt)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(BusQueue::Table)
                    .col(big_pk_auto(BusQueue::Id))
                    .col(uuid_uniq(BusQueue::EventId))
                    .col(string_len(BusQueue::EventType, 128))
                    .col(string_len(BusQueue::OrderingKey, 320))
                    .col(text(BusQueue::Envelope))
                    .col(integer(BusQueue::Deliveries).default(0))
                    .col(big_integer(BusQueue::VisibleAt))
                    .col(string_len_null(BusQueue::LockedBy, 128))
                    .col(big_integer_null(BusQueue::LockedUntil))
                    .col(text_null(BusQueue::LastError))
                    .col(big_integer(BusQueue::EnqueuedAt))
                    .to_owned(),
            )
            .await?;
        // Per-key order: a row waits while an earlier row of its key is still queued.
        manager
            .create_index(
                Index::create()
                    .name("bus_queue_key")
                    .table(BusQueue::Table)
                    .col(BusQueue::OrderingKey)
                    .col(BusQueue::Id)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("bus_queue_locked_by")
                    .table(BusQueue::Table)
                    .col(BusQueue::LockedBy)
                    .and_where(Expr::col(BusQueue::LockedBy).is_not_null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(DeadLetters::Table)
                    .col(big_pk_auto(DeadLetters::Id))
                    .col(uuid_null(DeadLetters::EventId))
                    .col(string_len_null(DeadLetters::EventType, 128))
                    .col(string_len(DeadLetters::Handlers, 512))
                    .col(blob(DeadLetters::Raw))
                    .col(integer(DeadLetters::Attempts))
                    .col(text(DeadLetters::LastError))
                    .col(string_len(DeadLetters::Status, 32))
                    .col(big_integer(DeadLetters::FirstFailedAt))
                    .col(big_integer(DeadLetters::LastFailedAt))
                    .col(big_integer_null(DeadLetters::ResolvedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("dead_letters_status")
                    .table(DeadLetters::Table)
                    .col(DeadLetters::Status)
                    .col(DeadLetters::Id)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            DeadLetters::Table.into_iden(),
            BusQueue::Table.into_iden(),
            Inbox::Table.into_iden(),
            RelayLease::Table.into_iden(),
            Outbox::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).to_owned())
                .await?;
        }
        Ok(())
    }
}
