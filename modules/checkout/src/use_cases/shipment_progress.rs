//! Fulfillment's news about an order's shipment: dispatched, then delivered.

use contracts::catalog::StockLineV1;
use contracts::checkout::OrderReinstatedV1;
use contracts::fulfillment::{ShipmentDeliveredV1, ShipmentDispatchedV1};
use module_api::{HandlerError, Incoming, Tx};

use crate::db::queries;
use crate::domain::{OrderEvent, Step, transition};

pub(crate) async fn on_dispatched(
    tx: &mut Tx,
    dispatched: Incoming<ShipmentDispatchedV1>,
) -> Result<(), HandlerError> {
    let Incoming { event, cause } = dispatched;
    let Some(order) = queries::load_order(tx, event.order_id, true).await? else {
        return Err(HandlerError::Reject(format!("no order {}", event.order_id)));
    };
    let step = transition(order.status, OrderEvent::Dispatched);
    if let Some((status, reason)) = step.target() {
        queries::set_status(tx, order.id.as_uuid(), status, reason).await?;
    }
    if step == Step::ShipAndReinstate {
        tracing::warn!(module = "checkout", order_id = %order.id, "a cancel crossed the dispatch: the order ships and its stock is held again");
        tx.publish_with(
            &cause,
            &OrderReinstatedV1 {
                order_id: order.id.as_uuid(),
                lines: order
                    .lines
                    .iter()
                    .map(|l| StockLineV1 {
                        sku: l.sku.to_string(),
                        quantity: l.quantity.get(),
                    })
                    .collect(),
            },
        )?;
    }
    Ok(())
}

pub(crate) async fn on_delivered(
    tx: &mut Tx,
    delivered: Incoming<ShipmentDeliveredV1>,
) -> Result<(), HandlerError> {
    let event = delivered.event;
    let Some(order) = queries::load_order(tx, event.order_id, true).await? else {
        return Err(HandlerError::Reject(format!("no order {}", event.order_id)));
    };
    if let Some((status, reason)) = transition(order.status, OrderEvent::Delivered).target() {
        queries::set_status(tx, order.id.as_uuid(), status, reason).await?;
    }
    Ok(())
}
