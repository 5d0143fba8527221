//! `payment_attempts`: one per order whose stock is held, claimed by the payment worker
//! under a lease (`locked_until`, milliseconds since the epoch) until it is settled.

// The entity derive generates public items; they stay inside this crate.
#![allow(unreachable_pub)]

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "payment_attempts")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    #[sea_orm(unique)]
    pub order_id: Uuid,
    /// `pending`, `approved`, `declined` or `voided`.
    pub status: String,
    pub attempts: i32,
    /// Milliseconds since the epoch.
    pub next_attempt_at: i64,
    /// The end of the current claim's lease, milliseconds since the epoch; 0 when free.
    pub locked_until: i64,
    pub last_error: Option<String>,
    /// The provider's authorization reference.
    pub reference: Option<String>,
    pub correlation_id: Option<Uuid>,
    pub traceparent: Option<String>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
