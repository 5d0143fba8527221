//! What checkout publishes and consumes.
//!
//! Publishes: `checkout.order_placed.v1`, `checkout.order_confirmed.v1`,
//! `checkout.order_cancelled.v1`, `checkout.order_reinstated.v1`.
//! Consumes: catalog's `product_published` and `product_repriced` (its price list),
//! `stock_reserved` and `stock_rejected` (the order's fate), fulfillment's
//! `shipment_dispatched` and `shipment_delivered`. A handler that takes two event types
//! is registered once for each, under one inbox name.

use std::sync::Arc;

use crate::payments::Handoff;
use crate::use_cases::{price_list, shipment_progress, stock_outcome};
use contracts::catalog::{ProductPublishedV1, ProductRepricedV1, StockRejectedV1, StockReservedV1};
use contracts::fulfillment::{ShipmentDeliveredV1, ShipmentDispatchedV1};
use module_api::StartedModule;

/// Registers checkout's handlers; `payments` is where a held order's payment is handed to
/// the payment worker once committed.
pub(crate) fn handlers(module: StartedModule, payments: Arc<Handoff>) -> StartedModule {
    module
        .on_each::<ProductPublishedV1>("checkout.price_list", |tx, published| {
            Box::pin(price_list::on_published(tx, published))
        })
        .on_each::<ProductRepricedV1>("checkout.price_list", |tx, repriced| {
            Box::pin(price_list::on_repriced(tx, repriced))
        })
        .on::<StockReservedV1>("checkout.stock_outcome", move |tx, reserved| {
            Box::pin(stock_outcome::on_reserved(tx, reserved, payments.clone()))
        })
        .on::<StockRejectedV1>("checkout.stock_outcome", |tx, rejected| {
            Box::pin(stock_outcome::on_rejected(tx, rejected))
        })
        .on_each::<ShipmentDispatchedV1>("checkout.shipment_progress", |tx, dispatched| {
            Box::pin(shipment_progress::on_dispatched(tx, dispatched))
        })
        .on_each::<ShipmentDeliveredV1>("checkout.shipment_progress", |tx, delivered| {
            Box::pin(shipment_progress::on_delivered(tx, delivered))
        })
}
