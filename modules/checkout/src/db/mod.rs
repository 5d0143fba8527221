//! The only place in checkout that touches sea-orm: its tables and, in `migrations/`, its
//! schema.

#[cfg(test)]
pub(crate) mod fixtures;
pub(crate) mod idempotency_keys;
mod migrations;
pub(crate) mod order_lines;
pub(crate) mod orders;
pub(crate) mod payment_attempts;
pub(crate) mod payments;
pub(crate) mod prices;
pub(crate) mod queries;

/// The handles the rest of the module holds without looking inside: a connection, a
/// transaction (a handler's, or a use case's unit of work), and their error. Statements
/// are built only here.
pub(crate) use sea_orm::{DatabaseConnection, DatabaseTransaction, DbErr};

pub(crate) fn is_unique_violation(error: &DbErr) -> bool {
    matches!(
        error.sql_err(),
        Some(sea_orm::SqlErr::UniqueConstraintViolation(_))
    )
}

/// The module's schema, in `db/migrations/`.
pub(crate) use migrations::Migrator;
