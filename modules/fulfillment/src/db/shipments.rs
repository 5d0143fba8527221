//! `shipments`: at most one per order.

// The entity derive generates public items; they stay inside this crate.
#![allow(unreachable_pub)]

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "shipments")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    #[sea_orm(unique)]
    pub order_id: Uuid,
    pub status: String,
    pub tracking_number: Option<String>,
    /// Email, name and address as JSON.
    pub recipient: String,
    /// What to pack, as JSON.
    pub lines: String,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
