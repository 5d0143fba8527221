//! What catalog publishes and consumes.
//!
//! Publishes: `catalog.product_published.v1` (a product is created),
//! `catalog.product_repriced.v1` (its price changes), `catalog.stock_reserved.v1`,
//! `catalog.stock_rejected.v1`, `catalog.stock_released.v1`.
//! Consumes: `checkout.order_placed.v1`, `checkout.order_cancelled.v1`,
//! `checkout.order_reinstated.v1`, each handed to a use case of `hold_stock` under the
//! handler's inbox name: a placed batch at once (set-based), a cancel or a reinstatement
//! one event at a time.

use contracts::checkout::{OrderCancelledV1, OrderPlacedV1, OrderReinstatedV1};
use module_api::StartedModule;

use crate::db::product_cache::ProductCache;
use crate::use_cases::hold_stock;

/// Registers catalog's handlers; each forgets the cached `products` whose stock it changed.
pub(crate) fn handlers(module: StartedModule, products: ProductCache) -> StartedModule {
    let (reserve, release, rehold) = (products.clone(), products.clone(), products);
    module
        .on::<OrderPlacedV1>("catalog.reserve_stock", move |tx, orders| {
            Box::pin(hold_stock::reserve(tx, orders, reserve.clone()))
        })
        .on_each::<OrderCancelledV1>("catalog.release_stock", move |tx, cancelled| {
            Box::pin(hold_stock::release(tx, cancelled, release.clone()))
        })
        .on_each::<OrderReinstatedV1>("catalog.rehold_stock", move |tx, reinstated| {
            Box::pin(hold_stock::rehold_stock(tx, reinstated, rehold.clone()))
        })
}
