//! `orders`.

// The entity derive generates public items; they stay inside this crate.
#![allow(unreachable_pub)]

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "orders")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub status: String,
    pub status_reason: Option<String>,
    /// The customer who placed it: the `sub` of their token.
    pub customer_id: String,
    pub customer_email: String,
    /// The shipping address as JSON.
    pub shipping_address: String,
    /// Never shown by the API; kept to authorize the payment once stock is held.
    pub payment_token: String,
    pub currency: String,
    pub total_minor: i64,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    /// Read with the order, in the same query (`queries::load_orders`).
    #[sea_orm(has_many = "super::order_lines::Entity")]
    Lines,
}

impl Related<super::order_lines::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Lines.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
