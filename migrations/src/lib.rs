//! Per-module database migrations. Each module has its own `Migrator`, run on a connection
//! whose unqualified names resolve to that module's schema (its own PostgreSQL schema, or
//! its own SQLite file), with its own tracking table there. Tables are named without a
//! schema so the same migration runs on both backends and moves with the module when it
//! is extracted. A module's features select which migrators are compiled, so an extracted
//! service carries only its own.

// `MigrationTrait` is declared with `&SchemaManager` and async-trait cannot match an
// explicit `'_` against it.
#![allow(elided_lifetimes_in_paths)]

#[cfg(any(feature = "catalog", feature = "checkout", feature = "fulfillment"))]
mod messaging;
#[cfg(any(feature = "catalog", feature = "checkout", feature = "fulfillment"))]
mod messaging_ready;

#[cfg(feature = "catalog")]
pub mod catalog;
#[cfg(feature = "checkout")]
pub mod checkout;
#[cfg(feature = "fulfillment")]
pub mod fulfillment;

pub use sea_orm_migration::MigratorTrait;

/// Runs the migrations of `module` on `conn` (whose unqualified names resolve to the
/// module's schema); an error for a module this build does not carry.
pub async fn up(
    module: &str,
    conn: &sea_orm_migration::sea_orm::DatabaseConnection,
) -> Result<(), sea_orm_migration::DbErr> {
    match module {
        #[cfg(feature = "catalog")]
        "catalog" => catalog::Migrator::up(conn, None).await,
        #[cfg(feature = "checkout")]
        "checkout" => checkout::Migrator::up(conn, None).await,
        #[cfg(feature = "fulfillment")]
        "fulfillment" => fulfillment::Migrator::up(conn, None).await,
        other => Err(sea_orm_migration::DbErr::Custom(format!(
            "this build has no migrations for module {other}"
        ))),
    }
}
