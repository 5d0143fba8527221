//! The only place in catalog that touches sea-orm: its tables, named without a schema so
//! they resolve to catalog's own schema (or file) through the module's connection; and
//! `product_cache`, the products read lately, kept in memory in front of them; and, in
//! `migrations/`, its schema.

mod migrations;
pub(crate) mod order_holds;
pub(crate) mod product_cache;
pub(crate) mod products;
pub(crate) mod queries;
pub(crate) mod stock;
pub(crate) mod stock_levels;
pub(crate) mod stock_reservations;

/// The handles the rest of the module holds without looking inside: a connection and its
/// error (every transaction is messaging's publishing `Tx`, which `db/` functions take as
/// a connection). Statements are built only here.
pub(crate) use sea_orm::{DatabaseConnection, DbErr};

/// True when `error` is a unique-key violation (a duplicate insert).
pub(crate) fn is_unique_violation(error: &DbErr) -> bool {
    matches!(
        error.sql_err(),
        Some(sea_orm::SqlErr::UniqueConstraintViolation(_))
    )
}

/// The module's schema, in `db/migrations/`.
pub(crate) use migrations::Migrator;
