//! Hands a ready shipment to the carrier: it gets a tracking number, and
//! `fulfillment.shipment_dispatched.v1` goes out in the same transaction.

use anyhow::Context;
use chrono::Utc;
use contracts::Cause;
use contracts::fulfillment::ShipmentDispatchedV1;
use kernel::ShipmentId;

use crate::db::queries;
use crate::domain::{NotAllowed, Shipment, ShipmentStatus, tracking_number};
use module_api::Store;

#[derive(Debug, thiserror::Error)]
pub(crate) enum DispatchShipmentError {
    #[error("no shipment has id {0}")]
    NotFound(ShipmentId),
    #[error("shipment {id} is {status} and cannot be dispatched")]
    WrongStatus {
        id: ShipmentId,
        status: ShipmentStatus,
    },
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

#[tracing::instrument(name = "fulfillment.dispatch", skip_all, fields(shipment_id = %id))]
pub(crate) async fn dispatch_shipment(
    store: &Store,
    cause: &Cause,
    id: ShipmentId,
) -> Result<Shipment, DispatchShipmentError> {
    let mut tx = store
        .begin(cause)
        .await
        .context("failed to begin a transaction")?;
    let shipment = queries::shipment(&tx, id, true)
        .await?
        .ok_or(DispatchShipmentError::NotFound(id))?;
    let shipment = shipment
        .dispatch(|| tracking_number(|n| fastrand::usize(..n)), Utc::now())
        .map_err(|NotAllowed(status)| DispatchShipmentError::WrongStatus { id, status })?;
    queries::update_shipment(&tx, &shipment).await?;
    tx.publish(&ShipmentDispatchedV1 {
        shipment_id: id.as_uuid(),
        order_id: shipment.order_id.as_uuid(),
        tracking_number: shipment.tracking_number.clone().unwrap_or_default(),
    })
    .context("the shipment does not fit its event")?;
    tx.commit().await.context("failed to commit")?;
    metrics::counter!("fulfillment_shipments_dispatched_total").increment(1);
    tracing::info!(module = "fulfillment", order_id = %shipment.order_id, "shipment dispatched");
    Ok(shipment)
}
