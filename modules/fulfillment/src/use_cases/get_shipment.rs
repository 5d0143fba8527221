//! Reads one shipment.

use kernel::ShipmentId;
use module_api::ModuleDb;

use crate::db::queries;
use crate::domain::Shipment;

#[derive(Debug, thiserror::Error)]
pub(crate) enum GetShipmentError {
    #[error("no shipment has id {0}")]
    NotFound(ShipmentId),
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

pub(crate) async fn get_shipment(
    db: &ModuleDb,
    id: ShipmentId,
) -> Result<Shipment, GetShipmentError> {
    queries::shipment(db.conn(), id, false)
        .await?
        .ok_or(GetShipmentError::NotFound(id))
}
