//! `payment_attempts`: one per order whose stock is held; the payment worker runs the
//! pending ones.

// The entity derive generates public items; they stay inside this crate.
#![allow(unreachable_pub)]

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "payment_attempts")]
pub struct Model {
    /// Also the idempotency key given to the payment provider.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    #[sea_orm(unique)]
    pub order_id: Uuid,
    /// `pending`, `approved`, `declined` or `voided`.
    pub status: String,
    /// Calls to the provider that failed (not declines).
    pub attempts: i32,
    /// Epoch ms.
    pub next_attempt_at: i64,
    /// Epoch ms; a worker holds the attempt until then.
    pub locked_until: i64,
    pub last_error: Option<String>,
    pub reference: Option<String>,
    /// The cause of the events the outcome publishes: the stock reservation's.
    pub correlation_id: Option<Uuid>,
    pub traceparent: Option<String>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
