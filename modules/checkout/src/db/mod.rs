//! The only place in checkout that touches sea-orm.

pub(crate) mod idempotency_keys;
pub(crate) mod order_lines;
pub(crate) mod orders;
pub(crate) mod queries;

use sea_orm::DbErr;

pub(crate) fn is_unique_violation(error: &DbErr) -> bool {
    matches!(
        error.sql_err(),
        Some(sea_orm::SqlErr::UniqueConstraintViolation(_))
    )
}
