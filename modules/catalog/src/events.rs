//! What catalog publishes and consumes.
//!
//! Publishes: `catalog.product_published.v1` (a product is created),
//! `catalog.product_repriced.v1` (its price changes), `catalog.stock_reserved.v1`,
//! `catalog.stock_rejected.v1`, `catalog.stock_released.v1`.
//! Consumes: `checkout.order_placed.v1`, `checkout.order_cancelled.v1`,
//! `checkout.order_reinstated.v1`.

use crate::db::DatabaseTransaction;
use async_trait::async_trait;
use contracts::checkout::{OrderCancelledV1, OrderPlacedV1, OrderReinstatedV1};
use contracts::{Envelope, Event};
use messaging::{Emitter, Handler, HandlerError, decode_all};

use crate::db::product_cache::ProductCache;
use crate::use_cases::hold_stock;

/// Holds stock for placed orders; forgets the cached products it changed.
pub(crate) struct ReserveStock(pub(crate) ProductCache);

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
        events: &[&Envelope],
        out: &mut Emitter,
    ) -> Result<(), HandlerError> {
        hold_stock::reserve(tx, &decode_all(events)?, out, &self.0).await
    }
}

/// Releases a cancelled order's stock; forgets the cached products it changed.
pub(crate) struct ReleaseStock(pub(crate) ProductCache);

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
        events: &[&Envelope],
        out: &mut Emitter,
    ) -> Result<(), HandlerError> {
        for (event, cancelled) in decode_all(events)? {
            hold_stock::release(tx, event, cancelled, out, &self.0).await?;
        }
        Ok(())
    }
}

/// Holds a reinstated order's stock again; forgets the cached products it changed.
pub(crate) struct ReholdStock(pub(crate) ProductCache);

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
        events: &[&Envelope],
        out: &mut Emitter,
    ) -> Result<(), HandlerError> {
        for (_, reinstated) in decode_all::<OrderReinstatedV1>(events)? {
            hold_stock::rehold_stock(tx, reinstated, out, &self.0).await?;
        }
        Ok(())
    }
}
