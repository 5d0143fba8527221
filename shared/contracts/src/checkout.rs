//! Events published by checkout.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::catalog::StockLineV1;
use crate::{Event, check_amount, check_currency, check_not_empty, check_quantity, check_sku};

/// One priced line of an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OrderLineV1 {
    pub sku: String,
    pub quantity: i64,
    pub unit_price_minor: i64,
}

fn check_lines(lines: &[OrderLineV1]) -> Result<(), String> {
    check_not_empty("lines", lines)?;
    for (i, line) in lines.iter().enumerate() {
        check_sku(&format!("lines[{i}].sku"), &line.sku)?;
        check_quantity(&format!("lines[{i}].quantity"), line.quantity)?;
        check_amount(
            &format!("lines[{i}].unit_price_minor"),
            line.unit_price_minor,
        )?;
    }
    Ok(())
}

/// An order was placed; its stock is not held yet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct OrderPlacedV1 {
    pub order_id: Uuid,
    pub lines: Vec<OrderLineV1>,
    pub currency: String,
    pub total_minor: i64,
}

impl Event for OrderPlacedV1 {
    const TYPE: &'static str = "checkout.order_placed.v1";
    fn key(&self) -> String {
        self.order_id.to_string()
    }
    fn validate(&self) -> Result<(), String> {
        check_lines(&self.lines)?;
        check_currency("currency", &self.currency)?;
        check_amount("total_minor", self.total_minor)
    }
}

/// Where a shipment goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AddressV1 {
    pub name: String,
    pub line1: String,
    pub line2: Option<String>,
    pub city: String,
    pub postal_code: String,
    /// ISO 3166-1 alpha-2.
    pub country: String,
}

/// Stock is held and payment approved: the order is to be shipped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct OrderConfirmedV1 {
    pub order_id: Uuid,
    pub lines: Vec<OrderLineV1>,
    pub currency: String,
    pub total_minor: i64,
    pub customer_email: String,
    pub shipping_address: AddressV1,
}

impl Event for OrderConfirmedV1 {
    const TYPE: &'static str = "checkout.order_confirmed.v1";
    fn key(&self) -> String {
        self.order_id.to_string()
    }
    fn validate(&self) -> Result<(), String> {
        check_lines(&self.lines)?;
        check_currency("currency", &self.currency)?;
        check_amount("total_minor", self.total_minor)?;
        if self.shipping_address.country.len() != 2 {
            return Err("shipping_address.country: must be two letters".into());
        }
        Ok(())
    }
}

/// Why an order was cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CancelReasonV1 {
    PaymentDeclined,
    CancelledByCustomer,
}

/// The order will not be fulfilled: any stock held for it goes back on sale, any
/// shipment not yet dispatched is cancelled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct OrderCancelledV1 {
    pub order_id: Uuid,
    pub reason: CancelReasonV1,
}

impl Event for OrderCancelledV1 {
    const TYPE: &'static str = "checkout.order_cancelled.v1";
    fn key(&self) -> String {
        self.order_id.to_string()
    }
}

/// A cancellation lost a race with a dispatch: the goods left, so the order stands again
/// and its stock must be held again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct OrderReinstatedV1 {
    pub order_id: Uuid,
    pub lines: Vec<StockLineV1>,
}

impl Event for OrderReinstatedV1 {
    const TYPE: &'static str = "checkout.order_reinstated.v1";
    fn key(&self) -> String {
        self.order_id.to_string()
    }
    fn validate(&self) -> Result<(), String> {
        crate::catalog::check_lines(&self.lines)
    }
}
