//! The only place in fulfillment that touches sea-orm: its tables and, in `migrations/`, its
//! schema.

pub(crate) mod cancelled_orders;
mod migrations;
pub(crate) mod queries;
pub(crate) mod shipments;

/// The handles the rest of the module holds without looking inside: a connection and its
/// error (every transaction is the publishing `Tx`, which `db/` functions take as a
/// connection). Statements are built only here.
pub(crate) use sea_orm::{DatabaseConnection, DbErr};

/// The module's schema, in `db/migrations/`.
pub(crate) use migrations::Migrator;
