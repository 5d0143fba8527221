//! The only place in fulfillment that touches sea-orm.

pub(crate) mod cancelled_orders;
pub(crate) mod queries;
pub(crate) mod shipments;

/// The handles the rest of the module holds without looking inside: a connection, a
/// transaction (a handler's, or a use case's unit of work), and their error. Statements
/// are built only here.
pub(crate) use sea_orm::{DatabaseConnection, DatabaseTransaction, DbErr};
