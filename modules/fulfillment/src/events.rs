//! What fulfillment publishes and consumes.
//!
//! Publishes: `fulfillment.shipment_created.v1`, `fulfillment.shipment_dispatched.v1`,
//! `fulfillment.shipment_delivered.v1`.
//! Consumes: `checkout.order_confirmed.v1` (create a shipment),
//! `checkout.order_cancelled.v1` (cancel it unless it has left).

use contracts::checkout::{OrderCancelledV1, OrderConfirmedV1};
use module_api::StartedModule;

use crate::use_cases::{cancel_shipment, create_shipments};

/// Registers fulfillment's handlers.
pub(crate) fn handlers(module: StartedModule) -> StartedModule {
    module
        .on::<OrderConfirmedV1>("fulfillment.create_shipment", |tx, confirmed| {
            Box::pin(create_shipments::on_confirmed(tx, confirmed))
        })
        .on_each::<OrderCancelledV1>("fulfillment.cancel_shipment", |tx, cancelled| {
            Box::pin(cancel_shipment::on_cancelled(tx, cancelled))
        })
}
