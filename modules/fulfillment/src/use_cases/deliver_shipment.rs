//! Records a dispatched shipment as delivered, and announces it in the same transaction.

use anyhow::Context;
use chrono::Utc;
use contracts::Cause;
use contracts::fulfillment::ShipmentDeliveredV1;
use kernel::ShipmentId;

use crate::db::queries;
use crate::domain::{NotAllowed, Shipment, ShipmentStatus};
use module_api::Store;

#[derive(Debug, thiserror::Error)]
pub(crate) enum DeliverShipmentError {
    #[error("no shipment has id {0}")]
    NotFound(ShipmentId),
    #[error("shipment {id} is {status} and cannot be delivered")]
    WrongStatus {
        id: ShipmentId,
        status: ShipmentStatus,
    },
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

#[tracing::instrument(name = "fulfillment.deliver", skip_all, fields(shipment_id = %id))]
pub(crate) async fn deliver_shipment(
    store: &Store,
    cause: &Cause,
    id: ShipmentId,
) -> Result<Shipment, DeliverShipmentError> {
    let mut tx = store
        .begin(cause)
        .await
        .context("failed to begin a transaction")?;
    let shipment = queries::shipment(&tx, id, true)
        .await?
        .ok_or(DeliverShipmentError::NotFound(id))?;
    let shipment = shipment
        .deliver(Utc::now())
        .map_err(|NotAllowed(status)| DeliverShipmentError::WrongStatus { id, status })?;
    queries::update_shipment(&tx, &shipment).await?;
    tx.publish(&ShipmentDeliveredV1 {
        shipment_id: id.as_uuid(),
        order_id: shipment.order_id.as_uuid(),
    })
    .context("the shipment does not fit its event")?;
    tx.commit().await.context("failed to commit")?;
    tracing::info!(module = "fulfillment", order_id = %shipment.order_id, "shipment delivered");
    Ok(shipment)
}
