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

/// How many write transactions are worth running at once: PostgreSQL runs them side by
/// side; SQLite takes one writer at a time per file, so a second would only wait.
pub(crate) fn writers_at_once(db: &module_api::ModuleDb) -> usize {
    match db.backend() {
        sea_orm::DbBackend::Sqlite => 1,
        _ => 4,
    }
}

/// The module's schema, in `db/migrations/`.
pub(crate) use migrations::Migrator;
