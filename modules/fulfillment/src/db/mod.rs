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

/// Brings the module's schema up to date on `conn` (see `db/migrations/`).
pub(crate) async fn migrate(conn: &DatabaseConnection) -> Result<(), DbErr> {
    use sea_orm_migration::MigratorTrait;
    migrations::Migrator::up(conn, None).await
}

/// The names of the module's migrations, in order.
pub(crate) fn migration_names() -> Vec<String> {
    use sea_orm_migration::MigratorTrait;
    migrations::Migrator::migrations()
        .iter()
        .map(|m| m.name().to_owned())
        .collect()
}
