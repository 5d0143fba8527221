//! Events published by fulfillment.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::Event;

/// A shipment is ready to be dispatched for a confirmed order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ShipmentCreatedV1 {
    pub shipment_id: Uuid,
    pub order_id: Uuid,
}

impl Event for ShipmentCreatedV1 {
    const TYPE: &'static str = "fulfillment.shipment_created.v1";
    fn key(&self) -> String {
        self.order_id.to_string()
    }
}

/// The shipment left with a carrier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ShipmentDispatchedV1 {
    pub shipment_id: Uuid,
    pub order_id: Uuid,
    pub tracking_number: String,
}

impl Event for ShipmentDispatchedV1 {
    const TYPE: &'static str = "fulfillment.shipment_dispatched.v1";
    fn key(&self) -> String {
        self.order_id.to_string()
    }
    fn validate(&self) -> Result<(), String> {
        if self.tracking_number.is_empty() {
            return Err("tracking_number: must not be empty".into());
        }
        Ok(())
    }
}

/// The shipment reached the customer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ShipmentDeliveredV1 {
    pub shipment_id: Uuid,
    pub order_id: Uuid,
}

impl Event for ShipmentDeliveredV1 {
    const TYPE: &'static str = "fulfillment.shipment_delivered.v1";
    fn key(&self) -> String {
        self.order_id.to_string()
    }
}
