//! What fulfillment publishes and consumes.
//!
//! Publishes: `fulfillment.shipment_created.v1`, `fulfillment.shipment_dispatched.v1`,
//! `fulfillment.shipment_delivered.v1`.
//! Consumes: `checkout.order_confirmed.v1` (create a shipment),
//! `checkout.order_cancelled.v1` (cancel it unless it has left).

use async_trait::async_trait;
use contracts::checkout::{OrderCancelledV1, OrderConfirmedV1};
use contracts::{Envelope, Event};
use messaging::{Handler, HandlerError, Tx, decode, decode_all};

use crate::use_cases::{cancel_shipment, create_shipments};

pub(crate) struct CreateShipment;

#[async_trait]
impl Handler for CreateShipment {
    fn name(&self) -> &'static str {
        "fulfillment.create_shipment"
    }

    fn event_types(&self) -> &'static [&'static str] {
        &[OrderConfirmedV1::TYPE]
    }

    async fn handle(&self, tx: &mut Tx, events: &[&Envelope]) -> Result<(), HandlerError> {
        create_shipments::on_confirmed(tx, &decode_all(events)?).await
    }
}

pub(crate) struct CancelShipment;

#[async_trait]
impl Handler for CancelShipment {
    fn name(&self) -> &'static str {
        "fulfillment.cancel_shipment"
    }

    fn event_types(&self) -> &'static [&'static str] {
        &[OrderCancelledV1::TYPE]
    }

    async fn handle(&self, tx: &mut Tx, events: &[&Envelope]) -> Result<(), HandlerError> {
        for event in events {
            cancel_shipment::on_cancelled(tx, decode(event)?).await?;
        }
        Ok(())
    }
}
