//! Holding stock for orders, as checkout's order events arrive: all lines or none on
//! `order_placed`, released on `order_cancelled`, held again on `order_reinstated`. Each
//! order's decision is recorded, so a duplicate or late event cannot decide twice.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use contracts::Envelope;
use contracts::catalog::{
    ShortageV1, StockLineV1, StockRejectedV1, StockReleasedV1, StockReservedV1,
};
use contracts::checkout::{OrderCancelledV1, OrderPlacedV1, OrderReinstatedV1};
use messaging::{Emitter, HandlerError};
use sea_orm::DatabaseTransaction;
use uuid::Uuid;

use crate::db::order_holds::{REJECTED, RELEASED, RESERVED};
use crate::db::stock;

/// The lines of an order, one per sku, in sku order (so concurrent orders lock stock rows
/// in the same order and cannot deadlock).
fn merged<'a>(lines: impl Iterator<Item = (&'a str, i64)>) -> Vec<(String, i64)> {
    let mut by_sku: BTreeMap<&str, i64> = BTreeMap::new();
    for (sku, quantity) in lines {
        *by_sku.entry(sku).or_default() += quantity;
    }
    by_sku.into_iter().map(|(s, q)| (s.to_owned(), q)).collect()
}

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
    tx: &DatabaseTransaction,
    orders: &[(&Envelope, OrderPlacedV1)],
    out: &mut Emitter,
) -> Result<(), HandlerError> {
    let ids: Vec<Uuid> = orders.iter().map(|(_, o)| o.order_id).collect();
    let decided = stock::hold_statuses(tx, &ids).await?;
    let mut pending = Vec::new();
    let mut seen = HashSet::new();
    for (event, order) in orders {
        if let Some(status) = decided.get(&order.order_id) {
            tracing::info!(module = "catalog", order_id = %order.order_id, status, "order already decided; nothing to hold");
        } else if seen.insert(order.order_id) {
            pending.push((
                *event,
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
    for (event, order, lines) in pending {
        let shortages: Vec<ShortageV1> = lines
            .iter()
            .filter_map(|(sku, quantity)| {
                let available = free.get(sku).copied().unwrap_or(0);
                (available < *quantity).then(|| ShortageV1 {
                    sku: sku.clone(),
                    requested: *quantity,
                    available: available.max(0),
                })
            })
            .collect();
        if shortages.is_empty() {
            for (sku, quantity) in &lines {
                *free.entry(sku.clone()).or_default() -= quantity;
                *held.entry(sku.clone()).or_default() += quantity;
                reservations.push((order.order_id, sku.clone(), *quantity));
            }
            decisions.push((order.order_id, RESERVED));
            out.emit(
                event,
                &StockReservedV1 {
                    order_id: order.order_id,
                    lines: stock_lines(&lines),
                },
            )?;
        } else {
            tracing::info!(module = "catalog", order_id = %order.order_id, shortages = shortages.len(), "not enough stock; order refused");
            decisions.push((order.order_id, REJECTED));
            out.emit(
                event,
                &StockRejectedV1 {
                    order_id: order.order_id,
                    shortages,
                },
            )?;
        }
    }
    stock::hold_many(tx, &held.into_iter().collect::<Vec<_>>()).await?;
    stock::record_many_reservations(tx, &reservations).await?;
    stock::set_holds(tx, &decisions).await?;
    Ok(())
}

pub(crate) async fn release(
    tx: &DatabaseTransaction,
    cause: &Envelope,
    event: OrderCancelledV1,
    out: &mut Emitter,
) -> Result<(), HandlerError> {
    let order_id = event.order_id;
    match stock::hold_status(tx, order_id).await?.as_deref() {
        Some(RESERVED) => {
            let lines = stock::reservations(tx, order_id).await?;
            for (sku, quantity) in &lines {
                stock::unhold(tx, sku, *quantity).await?;
            }
            stock::forget_reservations(tx, order_id).await?;
            stock::set_hold(tx, order_id, RELEASED).await?;
            if !lines.is_empty() {
                out.emit(
                    cause,
                    &StockReleasedV1 {
                        order_id,
                        lines: stock_lines(&lines),
                    },
                )?;
            }
        }
        Some(_) => {}
        // Cancelled before catalog heard of the order: remember, so that the order, if it
        // ever arrives, holds nothing.
        None => stock::set_hold(tx, order_id, RELEASED).await?,
    }
    Ok(())
}

/// A cancellation lost to a dispatch: the goods left, so hold their stock again. What is
/// no longer free cannot be held; that shortfall is logged as an oversell, not retried.
pub(crate) async fn rehold(
    tx: &DatabaseTransaction,
    event: OrderReinstatedV1,
) -> Result<(), HandlerError> {
    let order_id = event.order_id;
    if stock::hold_status(tx, order_id).await?.as_deref() != Some(RELEASED) {
        return Ok(());
    }
    let lines = merged(event.lines.iter().map(|l| (l.sku.as_str(), l.quantity)));
    let mut held = Vec::new();
    for (sku, quantity) in lines {
        let take = if stock::try_hold(tx, &sku, quantity).await? {
            quantity
        } else {
            let free = stock::available(tx, &sku).await?.max(0);
            if free > 0 && !stock::try_hold(tx, &sku, free).await? {
                0
            } else {
                free
            }
        };
        if take < quantity {
            tracing::error!(module = "catalog", %order_id, sku, wanted = quantity, held = take, "oversold: a dispatched order's stock was no longer free");
            metrics::counter!("catalog_oversold_units_total").increment((quantity - take) as u64);
        }
        if take > 0 {
            held.push((sku, take));
        }
    }
    stock::record_reservations(tx, order_id, &held).await?;
    stock::set_hold(tx, order_id, RESERVED).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_merged_per_sku_in_sku_order() {
        let merged = merged([("B", 1), ("A", 2), ("B", 3)].into_iter());
        assert_eq!(merged, [("A".to_owned(), 2), ("B".to_owned(), 4)]);
    }
}
