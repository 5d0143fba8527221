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
use messaging::{Emitter, Handler, HandlerError};
use sea_orm::DatabaseTransaction;

use crate::use_cases::hold_stock;

fn decode<E: Event>(event: &Envelope) -> Result<E, HandlerError> {
    event
        .decode()
        .map_err(|e| HandlerError::Reject(e.to_string()))
}

pub(crate) struct ReserveStock;

#[async_trait]
impl Handler for ReserveStock {
    fn name(&self) -> &'static str {
        "catalog.reserve_stock"
    }
    fn event_types(&self) -> &'static [&'static str] {
        &[OrderPlacedV1::TYPE]
    }
    async fn handle(
        &self,
        tx: &DatabaseTransaction,
        event: &Envelope,
        out: &mut Emitter,
    ) -> Result<(), HandlerError> {
        hold_stock::reserve(tx, decode(event)?, out).await
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
    async fn handle(
        &self,
        tx: &DatabaseTransaction,
        event: &Envelope,
        out: &mut Emitter,
    ) -> Result<(), HandlerError> {
        hold_stock::release(tx, decode(event)?, out).await
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
    async fn handle(
        &self,
        tx: &DatabaseTransaction,
        event: &Envelope,
        _: &mut Emitter,
    ) -> Result<(), HandlerError> {
        hold_stock::rehold(tx, decode(event)?).await
    }
}
