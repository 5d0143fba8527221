//! What checkout publishes and consumes.
//!
//! Publishes: `checkout.order_placed.v1`, `checkout.order_confirmed.v1`,
//! `checkout.order_cancelled.v1`, `checkout.order_reinstated.v1`.
//! Consumes: catalog's `product_published` and `product_repriced` (its price list),
//! `stock_reserved` and `stock_rejected` (the order's fate), fulfillment's
//! `shipment_dispatched` and `shipment_delivered`.

use std::sync::Arc;

use async_trait::async_trait;
use contracts::catalog::{ProductPublishedV1, ProductRepricedV1, StockRejectedV1, StockReservedV1};
use contracts::fulfillment::{ShipmentDeliveredV1, ShipmentDispatchedV1};
use contracts::{Envelope, Event};
use messaging::{Handler, HandlerError, Tx, decode, decode_all};
use tokio::sync::Notify;

use crate::use_cases::{price_list, shipment_progress, stock_outcome};

pub(crate) struct PriceList;

#[async_trait]
impl Handler for PriceList {
    fn name(&self) -> &'static str {
        "checkout.price_list"
    }

    fn event_types(&self) -> &'static [&'static str] {
        &[ProductPublishedV1::TYPE, ProductRepricedV1::TYPE]
    }

    async fn handle(&self, tx: &mut Tx, events: &[&Envelope]) -> Result<(), HandlerError> {
        for event in events {
            if event.event_type == ProductPublishedV1::TYPE {
                price_list::on_published(tx, decode(event)?).await?;
            } else {
                price_list::on_repriced(tx, decode(event)?).await?;
            }
        }
        Ok(())
    }
}

pub(crate) struct StockOutcome {
    /// Wakes the payment worker once a held order is committed.
    pub(crate) payments: Arc<Notify>,
}

#[async_trait]
impl Handler for StockOutcome {
    fn name(&self) -> &'static str {
        "checkout.stock_outcome"
    }

    fn event_types(&self) -> &'static [&'static str] {
        &[StockReservedV1::TYPE, StockRejectedV1::TYPE]
    }

    async fn handle(&self, tx: &mut Tx, events: &[&Envelope]) -> Result<(), HandlerError> {
        let (reserved, rejected) = by_type(events, StockReservedV1::TYPE);
        stock_outcome::on_reserved(tx, &decode_all(&reserved)?, &self.payments).await?;
        stock_outcome::on_rejected(tx, &decode_all(&rejected)?).await
    }
}

pub(crate) struct ShipmentProgress;

#[async_trait]
impl Handler for ShipmentProgress {
    fn name(&self) -> &'static str {
        "checkout.shipment_progress"
    }

    fn event_types(&self) -> &'static [&'static str] {
        &[ShipmentDispatchedV1::TYPE, ShipmentDeliveredV1::TYPE]
    }

    async fn handle(&self, tx: &mut Tx, events: &[&Envelope]) -> Result<(), HandlerError> {
        for event in events {
            if event.event_type == ShipmentDispatchedV1::TYPE {
                shipment_progress::on_dispatched(tx, event, decode(event)?).await?;
            } else {
                shipment_progress::on_delivered(tx, decode(event)?).await?;
            }
        }
        Ok(())
    }
}

/// Splits a batch into the events of `event_type` and the others, keeping their order.
fn by_type<'a>(
    events: &[&'a Envelope],
    event_type: &str,
) -> (Vec<&'a Envelope>, Vec<&'a Envelope>) {
    events.iter().partition(|e| e.event_type == event_type)
}
