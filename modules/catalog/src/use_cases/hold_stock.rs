//! Holding stock for orders, as checkout's order events arrive: load the decisions taken
//! and the free units (db) → decide with the stock rules (pure, `domain::stock`) → write
//! the holds and announce them. All lines or none on `order_placed`, released on
//! `order_cancelled`, held again on `order_reinstated`.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use contracts::Cause;
use contracts::catalog::{
    ShortageV1, StockLineV1, StockRejectedV1, StockReleasedV1, StockReservedV1,
};
use contracts::checkout::{OrderCancelledV1, OrderPlacedV1, OrderReinstatedV1};
use module_api::{HandlerError, Incoming, Tx};
use uuid::Uuid;

use crate::db::product_cache::ProductCache;
use crate::db::stock;
use crate::domain::{
    Decision, Hold, Lines, OnCancel, decide, merged, on_cancelled, on_reinstated, rehold,
};

fn stock_lines(lines: &[(String, i64)]) -> Vec<StockLineV1> {
    lines
        .iter()
        .map(|(sku, quantity)| StockLineV1 {
            sku: sku.clone(),
            quantity: *quantity,
        })
        .collect()
}

/// Decides a batch of orders in one pass: each order holds stock for all its lines or
/// none, in batch order, against the stock left by the orders before it. A handful of
/// statements serve the whole batch.
pub(crate) async fn reserve(
    tx: &mut Tx,
    orders: Vec<Incoming<OrderPlacedV1>>,
    products: ProductCache,
) -> Result<(), HandlerError> {
    let ids: Vec<Uuid> = orders.iter().map(|o| o.event.order_id).collect();
    let decided = stock::hold_statuses(tx, &ids).await?;
    let mut pending: Vec<(&Cause, &OrderPlacedV1, Lines)> = Vec::new();
    let mut seen = HashSet::new();
    for Incoming {
        event: order,
        cause,
    } in &orders
    {
        if let Some(status) = decided.get(&order.order_id) {
            tracing::info!(module = "catalog", order_id = %order.order_id, status = status.as_str(), "order already decided; nothing to hold");
        } else if seen.insert(order.order_id) {
            pending.push((
                cause,
                order,
                merged(order.lines.iter().map(|l| (l.sku.as_str(), l.quantity))),
            ));
        }
    }
    let skus: BTreeSet<&str> = pending
        .iter()
        .flat_map(|(_, _, lines)| lines.iter().map(|(sku, _)| sku.as_str()))
        .collect();
    let mut free = stock::lock_free_units(tx, &skus.into_iter().collect::<Vec<_>>()).await?;
    let mut held: BTreeMap<String, i64> = BTreeMap::new();
    let mut reservations = Vec::new();
    let mut decisions = Vec::with_capacity(pending.len());
    for (cause, order, lines) in pending {
        match decide(&mut free, &lines) {
            Decision::Reserved(lines) => {
                for (sku, quantity) in &lines {
                    *held.entry(sku.clone()).or_default() += quantity;
                    reservations.push((order.order_id, sku.clone(), *quantity));
                }
                decisions.push((order.order_id, Hold::Reserved));
                tx.publish_with(
                    cause,
                    &StockReservedV1 {
                        order_id: order.order_id,
                        lines: stock_lines(&lines),
                    },
                )?;
            }
            Decision::Rejected(shortages) => {
                tracing::info!(module = "catalog", order_id = %order.order_id, shortages = shortages.len(), "not enough stock; order refused");
                decisions.push((order.order_id, Hold::Rejected));
                tx.publish_with(
                    cause,
                    &StockRejectedV1 {
                        order_id: order.order_id,
                        shortages: shortages
                            .into_iter()
                            .map(|s| ShortageV1 {
                                sku: s.sku,
                                requested: s.requested,
                                available: s.available,
                            })
                            .collect(),
                    },
                )?;
            }
        }
    }
    let held: Vec<(String, i64)> = held.into_iter().collect();
    stock::hold_many(tx, &held).await?;
    for (table, rows) in stock::decided_rows(&decisions, &reservations) {
        tx.insert_at_commit(table, rows);
    }
    forget_after_commit(tx, products, held);
    Ok(())
}

/// Forgets the cached products whose stock `lines` changed, once the change committed.
fn forget_after_commit(tx: &mut Tx, products: ProductCache, lines: Vec<(String, i64)>) {
    if !lines.is_empty() {
        tx.after_commit(move || products.forget(lines.iter().map(|(sku, _)| sku.as_str())));
    }
}

/// Releases what a cancelled order holds.
pub(crate) async fn release(
    tx: &mut Tx,
    cancelled: Incoming<OrderCancelledV1>,
    products: ProductCache,
) -> Result<(), HandlerError> {
    let Incoming { event, cause } = cancelled;
    let order_id = event.order_id;
    match on_cancelled(stock::hold_status(tx, order_id).await?) {
        OnCancel::Release => {
            let lines = stock::reservations(tx, order_id).await?;
            for (sku, quantity) in &lines {
                stock::unhold(tx, sku, *quantity).await?;
            }
            stock::forget_reservations(tx, order_id).await?;
            stock::set_hold(tx, order_id, Hold::Released).await?;
            if !lines.is_empty() {
                tx.publish_with(
                    &cause,
                    &StockReleasedV1 {
                        order_id,
                        lines: stock_lines(&lines),
                    },
                )?;
            }
            forget_after_commit(tx, products, lines);
        }
        OnCancel::Remember => stock::set_hold(tx, order_id, Hold::Released).await?,
        OnCancel::Nothing => {}
    }
    Ok(())
}

/// A cancellation lost to a dispatch: the goods left, so hold their stock again. What is
/// no longer free cannot be held; that shortfall is logged as an oversell, not retried.
pub(crate) async fn rehold_stock(
    tx: &mut Tx,
    reinstated: Incoming<OrderReinstatedV1>,
    products: ProductCache,
) -> Result<(), HandlerError> {
    let event = reinstated.event;
    let order_id = event.order_id;
    if !on_reinstated(stock::hold_status(tx, order_id).await?) {
        return Ok(());
    }
    let lines = merged(event.lines.iter().map(|l| (l.sku.as_str(), l.quantity)));
    let skus: Vec<&str> = lines.iter().map(|(sku, _)| sku.as_str()).collect();
    let free = stock::lock_free_units(tx, &skus).await?;
    let mut held = Vec::new();
    for line in rehold(&free, &lines) {
        if line.oversold() > 0 {
            tracing::error!(module = "catalog", %order_id, sku = line.sku, wanted = line.wanted, held = line.held, "oversold: a dispatched order's stock was no longer free");
            metrics::counter!("catalog_oversold_units_total").increment(line.oversold() as u64);
        }
        if line.held > 0 {
            held.push((line.sku, line.held));
        }
    }
    stock::hold_many(tx, &held).await?;
    stock::record_reservations(tx, order_id, &held).await?;
    stock::set_hold(tx, order_id, Hold::Reserved).await?;
    forget_after_commit(tx, products, held);
    Ok(())
}
