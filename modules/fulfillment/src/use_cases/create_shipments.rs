//! A confirmed order gets a `ready` shipment, unless it has one or was cancelled first;
//! each new shipment is announced. A batch of confirmations costs a few statements.

use std::collections::HashSet;

use chrono::Utc;
use contracts::checkout::OrderConfirmedV1;
use contracts::fulfillment::ShipmentCreatedV1;
use kernel::{OrderId, ShipmentId};
use module_api::{HandlerError, Incoming, Tx};

use crate::db::queries::{self, NewShipment};
use crate::domain::Shipment;

pub(crate) async fn on_confirmed(
    tx: &mut Tx,
    events: Vec<Incoming<OrderConfirmedV1>>,
) -> Result<(), HandlerError> {
    let ids: Vec<OrderId> = events
        .iter()
        .map(|e| OrderId::from_uuid(e.event.order_id))
        .collect();
    let settled = queries::orders_settled(tx, &ids).await?;
    let now = Utc::now();
    let mut new = Vec::new();
    let mut seen = HashSet::new();
    for Incoming {
        event: order,
        cause,
    } in &events
    {
        let order_id = OrderId::from_uuid(order.order_id);
        if settled.contains(&order_id) || !seen.insert(order_id) {
            tracing::info!(module = "fulfillment", %order_id, "order already has a shipment or was cancelled; none created");
            continue;
        }
        let shipment = Shipment::ready(ShipmentId::new(), order_id, now);
        tx.publish_with(
            cause,
            &ShipmentCreatedV1 {
                shipment_id: shipment.id.as_uuid(),
                order_id: order.order_id,
            },
        )?;
        let recipient = serde_json::json!({
            "email": order.customer_email,
            "address": order.shipping_address,
        });
        new.push(NewShipment {
            shipment,
            recipient: recipient.to_string(),
            lines: serde_json::to_string(&order.lines).unwrap_or_default(),
        });
    }
    if !new.is_empty() {
        tracing::info!(
            module = "fulfillment",
            shipments = new.len(),
            "shipments ready"
        );
        let (table, rows) = queries::shipment_rows(&new);
        tx.insert_at_commit(table, rows);
    }
    Ok(())
}
