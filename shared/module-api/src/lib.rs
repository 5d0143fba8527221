//! What a module may use of the platform, and nothing more: the [`Module`] trait the host
//! runs it by, the publishing transaction ([`Store`], [`Tx`]), handler registration
//! ([`StartedModule::on`]), its connection and SQL helpers for its `db/` layer
//! ([`ModuleDb`], [`sql`]), its schema's shared messaging tables ([`schema`]), the HTTP
//! error shape, extractors and route access. A module's crate depends on `kernel`,
//! `contracts` and this crate of ours, nothing else: the host (`runtime`: settings, buses,
//! relay, telemetry) is out of its reach.
//!
//! Every item has one path: types at the top, free functions in the small modules below.

mod access;
mod http;
mod module;
mod openapi;
mod validation;

pub mod checks;
pub mod tls;

pub use access::{Access, Authenticate, Caller, Role, RouteAccess};
pub use http::{
    ApiError, BodyDeadline, BodyLimit, FromBody, Origin, Parsed, RequestId, ValidQuery, parse_json,
    parse_query, uuid_param,
};
pub use messaging::{AtCommit, HandlerError, Handling, Incoming, Prune, PublishError, Store, Tx};
pub use module::{BackgroundTask, Module, ModuleContext, StartedModule, parse_settings};
pub use openapi::{BEARER, ErrorBody, ErrorDetail};
pub use store::ModuleDb;
pub use validation::flatten_validation_errors;

/// Statements written once for both backends, with PostgreSQL placeholders (`$1`): the
/// helpers of a module's `db/` layer.
pub mod sql {
    pub use sea_orm::sea_query::ArrayType;
    pub use store::{Rows, array, execute, insert_rows, now_ms, padded, placeholders, query, stmt};
}

/// The trace context events carry, for work a module does outside a request or handler
/// (checkout's payment worker).
pub mod trace {
    pub use messaging::trace::{adopt, traceparent_of, within};
}

/// A module's schema: the messaging tables every module's migrator lists among its own
/// migrations, and running a migrator for the host.
pub mod schema {
    pub use messaging::schema::{HandedThrough, KeyHeadIndex, MessagingTables, QueueIndex};
    use sea_orm::{DatabaseConnection, DbErr};
    use sea_orm_migration::MigratorTrait;

    /// Brings a module's schema up to date on `conn` with its migrator `M`
    /// (`Module::migrate`).
    pub async fn up<M: MigratorTrait>(conn: &DatabaseConnection) -> Result<(), DbErr> {
        M::up(conn, None).await
    }

    /// The names of `M`'s migrations, in order: what a schema it brought up to date has
    /// recorded as applied (`Module::migrations`).
    pub fn names<M: MigratorTrait>() -> Vec<String> {
        M::migrations()
            .iter()
            .map(|m| m.name().to_owned())
            .collect()
    }
}

/// Retry delays: exponential with jitter.
pub use messaging::backoff;
