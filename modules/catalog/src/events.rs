//! What catalog publishes and consumes.
//!
//! Publishes: `catalog.product_published.v1` (a product is created),
//! `catalog.product_repriced.v1` (its price changes), `catalog.stock_reserved.v1`,
//! `catalog.stock_rejected.v1`, `catalog.stock_released.v1`.
//! Consumes: `checkout.order_placed.v1`, `checkout.order_cancelled.v1`,
//! `checkout.order_reinstated.v1`.

use async_trait::async_trait;
use contracts::checkout::{OrderCancelledV1, OrderPlacedV1, OrderReinstatedV1};
use contracts::{Envelope, Event};
use messaging::{Handler, HandlerError, Tx, decode_all};

use crate::use_cases::hold_stock;

pub(crate) struct ReserveStock;

#[async_trait]
impl Handler for ReserveStock {
    fn name(&self) -> &'static str {
        "catalog.reserve_stock"
    }

    fn event_types(&self) -> &'static [&'static str] {
        &[OrderPlacedV1::TYPE]
    }

    async fn handle(&self, tx: &mut Tx, events: &[&Envelope]) -> Result<(), HandlerError> {
        hold_stock::reserve(tx, &decode_all(events)?).await
    }
}

pub(crate) struct ReleaseStock;

#[async_trait]
impl Handler for ReleaseStock {
    fn name(&self) -> &'static str {
        "catalog.release_stock"
    }

    fn event_types(&self) -> &'static [&'static str] {
        &[OrderCancelledV1::TYPE]
    }

    async fn handle(&self, tx: &mut Tx, events: &[&Envelope]) -> Result<(), HandlerError> {
        for (event, cancelled) in decode_all(events)? {
            hold_stock::release(tx, event, cancelled).await?;
        }
        Ok(())
    }
}

pub(crate) struct ReholdStock;

#[async_trait]
impl Handler for ReholdStock {
    fn name(&self) -> &'static str {
        "catalog.rehold_stock"
    }

    fn event_types(&self) -> &'static [&'static str] {
        &[OrderReinstatedV1::TYPE]
    }

    async fn handle(&self, tx: &mut Tx, events: &[&Envelope]) -> Result<(), HandlerError> {
        for (_, reinstated) in decode_all::<OrderReinstatedV1>(events)? {
            hold_stock::rehold_stock(tx, reinstated).await?;
        }
        Ok(())
    }
}
