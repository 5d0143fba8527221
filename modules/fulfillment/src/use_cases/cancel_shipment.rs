//! A cancelled order loses its shipment unless the shipment has left; an order cancelled
//! before it had one is remembered, so a confirmation arriving late creates none.

use chrono::Utc;
use contracts::checkout::OrderCancelledV1;
use kernel::OrderId;
use module_api::{HandlerError, Incoming, Tx};

use crate::db::queries;
use crate::domain::OnCancel;

pub(crate) async fn on_cancelled(
    tx: &mut Tx,
    cancelled: Incoming<OrderCancelledV1>,
) -> Result<(), HandlerError> {
    let event = cancelled.event;
    let now = Utc::now();
    let order_id = OrderId::from_uuid(event.order_id);
    let Some(shipment) = queries::lock_shipment_of(tx, order_id).await? else {
        // Cancelled before it was confirmed (payment declined, or the customer was quick).
        queries::remember_cancelled(tx, order_id, now).await?;
        return Ok(());
    };
    match shipment.cancel(now) {
        OnCancel::Cancel(cancelled) => {
            queries::update_shipment(tx, &cancelled).await?;
            tracing::info!(module = "fulfillment", %order_id, "shipment cancelled");
        }
        OnCancel::TooLate(status) => {
            tracing::warn!(module = "fulfillment", %order_id, %status, "order cancelled after its shipment left; the shipment stands");
        }
        OnCancel::Nothing => {}
    }
    Ok(())
}
