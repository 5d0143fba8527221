//! Fulfillment's response bodies: a shipment and a page of them, as the routes show them.

use chrono::{DateTime, Utc};
use kernel::ShipmentId;
use uuid::Uuid;

use crate::domain;

/// A shipment as shown.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct Shipment {
    id: Uuid,
    order_id: Uuid,
    /// ready, dispatched, delivered or cancelled.
    #[schema(value_type = String)]
    status: &'static str,
    tracking_number: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<domain::Shipment> for Shipment {
    fn from(s: domain::Shipment) -> Self {
        Shipment {
            id: s.id.as_uuid(),
            order_id: s.order_id.as_uuid(),
            status: s.status.as_str(),
            tracking_number: s.tracking_number,
            created_at: s.created_at,
            updated_at: s.updated_at,
        }
    }
}

/// A page of shipments by id; `next_after` continues it (null at the end).
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct ShipmentPage {
    items: Vec<Shipment>,
    next_after: Option<Uuid>,
}

impl ShipmentPage {
    pub(crate) fn new(items: Vec<domain::Shipment>, next_after: Option<ShipmentId>) -> Self {
        ShipmentPage {
            items: items.into_iter().map(Shipment::from).collect(),
            next_after: next_after.map(|id| id.as_uuid()),
        }
    }
}
