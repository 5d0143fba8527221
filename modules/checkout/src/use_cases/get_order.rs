//! Reads one order.

use runtime::ModuleDb;
use uuid::Uuid;

use crate::db::queries;
use crate::domain::Order;

#[derive(Debug, thiserror::Error)]
pub(crate) enum GetOrderError {
    #[error("no order has id {0}")]
    NotFound(Uuid),
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

#[tracing::instrument(name = "checkout.get_order", skip_all, fields(order_id = %id))]
pub(crate) async fn get_order(db: &ModuleDb, id: Uuid) -> Result<Order, GetOrderError> {
    queries::load_order(db.conn(), id, false)
        .await?
        .ok_or(GetOrderError::NotFound(id))
}
