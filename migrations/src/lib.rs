//! Per-module database migrations. Each module has its own `Migrator`, run on a connection
//! whose unqualified names resolve to that module's schema (its own PostgreSQL schema, or
//! its own SQLite file), with its own tracking table there. Tables are named without a
//! schema so the same migration runs on both backends and moves with the module when it
//! is extracted. A module's features select which migrators are compiled, so an extracted
//! service carries only its own.

// `MigrationTrait` is declared with `&SchemaManager` and async-trait cannot match an
// explicit `'_` against it.
#![allow(elided_lifetimes_in_paths)]

mod messaging;

#[cfg(feature = "catalog")]
pub mod catalog;
#[cfg(feature = "checkout")]
pub mod checkout;
#[cfg(feature = "fulfillment")]
pub mod fulfillment;

pub use sea_orm_migration::MigratorTrait;
