//! Events published by catalog.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{Event, check_amount, check_currency, check_not_empty, check_quantity, check_sku};

/// A product was added to the catalog, with its first price.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ProductPublishedV1 {
    pub sku: String,
    pub name: String,
    pub price_minor: i64,
    pub currency: String,
    /// Increases with every change of the product; consumers ignore older versions.
    pub version: i64,
}

impl Event for ProductPublishedV1 {
    const TYPE: &'static str = "catalog.product_published.v1";
    fn key(&self) -> String {
        self.sku.clone()
    }
    fn validate(&self) -> Result<(), String> {
        check_sku("sku", &self.sku)?;
        check_amount("price_minor", self.price_minor)?;
        check_currency("currency", &self.currency)
    }
}

/// A product's price changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ProductRepricedV1 {
    pub sku: String,
    pub price_minor: i64,
    pub currency: String,
    pub version: i64,
}

impl Event for ProductRepricedV1 {
    const TYPE: &'static str = "catalog.product_repriced.v1";
    fn key(&self) -> String {
        self.sku.clone()
    }
    fn validate(&self) -> Result<(), String> {
        check_sku("sku", &self.sku)?;
        check_amount("price_minor", self.price_minor)?;
        check_currency("currency", &self.currency)
    }
}

/// Units of one sku.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StockLineV1 {
    pub sku: String,
    pub quantity: i64,
}

/// Every line names a valid sku and quantity, and there is at least one.
pub(crate) fn check_lines(lines: &[StockLineV1]) -> Result<(), String> {
    check_not_empty("lines", lines)?;
    for (i, line) in lines.iter().enumerate() {
        check_sku(&format!("lines[{i}].sku"), &line.sku)?;
        check_quantity(&format!("lines[{i}].quantity"), line.quantity)?;
    }
    Ok(())
}

/// Stock for every line of an order is held for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StockReservedV1 {
    pub order_id: Uuid,
    pub lines: Vec<StockLineV1>,
}

impl Event for StockReservedV1 {
    const TYPE: &'static str = "catalog.stock_reserved.v1";
    fn key(&self) -> String {
        self.order_id.to_string()
    }
    fn validate(&self) -> Result<(), String> {
        check_lines(&self.lines)
    }
}

/// One line that could not be held.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ShortageV1 {
    pub sku: String,
    pub requested: i64,
    /// Units available when the order was tried; 0 for an unknown sku.
    pub available: i64,
}

/// No stock was held for an order, because at least one line could not be.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StockRejectedV1 {
    pub order_id: Uuid,
    pub shortages: Vec<ShortageV1>,
}

impl Event for StockRejectedV1 {
    const TYPE: &'static str = "catalog.stock_rejected.v1";
    fn key(&self) -> String {
        self.order_id.to_string()
    }
    fn validate(&self) -> Result<(), String> {
        check_not_empty("shortages", &self.shortages)?;
        for (i, s) in self.shortages.iter().enumerate() {
            check_sku(&format!("shortages[{i}].sku"), &s.sku)?;
            check_quantity(&format!("shortages[{i}].requested"), s.requested)?;
        }
        Ok(())
    }
}

/// The stock held for an order went back on sale.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StockReleasedV1 {
    pub order_id: Uuid,
    pub lines: Vec<StockLineV1>,
}

impl Event for StockReleasedV1 {
    const TYPE: &'static str = "catalog.stock_released.v1";
    fn key(&self) -> String {
        self.order_id.to_string()
    }
    fn validate(&self) -> Result<(), String> {
        check_lines(&self.lines)
    }
}
