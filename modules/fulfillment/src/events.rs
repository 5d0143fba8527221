//! What fulfillment publishes and consumes.
//!
//! Publishes: `fulfillment.shipment_created.v1`, `fulfillment.shipment_dispatched.v1`,
//! `fulfillment.shipment_delivered.v1`.
//! Consumes: `checkout.order_confirmed.v1` (create a shipment),
//! `checkout.order_cancelled.v1` (cancel it unless it has left).

use async_trait::async_trait;
use contracts::checkout::{OrderCancelledV1, OrderConfirmedV1};
use contracts::{Envelope, Event};
use messaging::{Emitter, Handler, HandlerError};
use sea_orm::DatabaseTransaction;

use crate::use_cases::orders;

fn decode<E: Event>(event: &Envelope) -> Result<E, HandlerError> {
    event
        .decode()
        .map_err(|e| HandlerError::Reject(e.to_string()))
}

pub(crate) struct CreateShipment;

#[async_trait]
impl Handler for CreateShipment {
    fn name(&self) -> &'static str {
        "fulfillment.create_shipment"
    }
    fn event_types(&self) -> &'static [&'static str] {
        &[OrderConfirmedV1::TYPE]
    }
    async fn handle(
        &self,
        tx: &DatabaseTransaction,
        event: &Envelope,
        out: &mut Emitter,
    ) -> Result<(), HandlerError> {
        orders::on_confirmed(tx, decode(event)?, out).await
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
    async fn handle(
        &self,
        tx: &DatabaseTransaction,
        event: &Envelope,
        _: &mut Emitter,
    ) -> Result<(), HandlerError> {
        orders::on_cancelled(tx, decode(event)?).await
    }
}
