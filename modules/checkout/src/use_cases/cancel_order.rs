//! A customer cancels an order. Before dispatch it becomes `cancelled` and
//! `checkout.order_cancelled.v1` goes out (catalog releases the stock, fulfillment cancels
//! the shipment); once checkout knows it shipped, it is too late. A customer cancels only
//! their own orders: another customer's order is not found.

use anyhow::Context;
use contracts::Cause;
use contracts::checkout::{CancelReasonV1, OrderCancelledV1};
use uuid::Uuid;

use crate::db::queries;
use crate::domain::{Order, OrderEvent, OrderStatus, Refusal, Step, transition};
use module_api::Store;

#[derive(Debug, thiserror::Error)]
pub(crate) enum CancelOrderError {
    #[error("no order has id {0}")]
    NotFound(Uuid),
    #[error("order {0} has shipped and can no longer be cancelled")]
    AlreadyShipped(Uuid),
    #[error("order {0} was {1} and cannot be cancelled")]
    NotCancellable(Uuid, OrderStatus),
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

#[tracing::instrument(name = "checkout.cancel_order", skip_all, fields(order_id = %id))]
pub(crate) async fn cancel_order(
    store: &Store,
    cause: &Cause,
    customer: &str,
    id: Uuid,
) -> Result<Order, CancelOrderError> {
    let mut tx = store
        .begin(cause)
        .await
        .context("failed to begin a transaction")?;
    let owned = queries::load_order(&tx, id, true)
        .await?
        .filter(|order| order.customer_id == customer);
    let Some(order) = owned else {
        return Err(CancelOrderError::NotFound(id));
    };
    let (status, reason) = match transition(order.status, OrderEvent::Cancel) {
        Step::Move { to, reason } => (to, reason),
        // Already cancelled: the request succeeds and changes nothing.
        Step::Ignore => return Ok(order),
        Step::ShipAndReinstate => {
            return Err(anyhow::anyhow!("a cancel cannot ship order {id}").into());
        }
        Step::Refuse(Refusal::AlreadyShipped) => {
            return Err(CancelOrderError::AlreadyShipped(id));
        }
        Step::Refuse(Refusal::NotCancellable) => {
            return Err(CancelOrderError::NotCancellable(id, order.status));
        }
    };
    queries::set_status(&tx, id, status, reason).await?;
    tx.publish(&OrderCancelledV1 {
        order_id: id,
        reason: CancelReasonV1::CancelledByCustomer,
    })
    .context("the cancellation does not fit its event")?;
    tx.commit()
        .await
        .context("failed to commit the cancellation")?;
    crate::counters::orders_cancelled(1);
    tracing::info!("order cancelled by the customer");
    let order = queries::load_order(store.conn(), id, false)
        .await?
        .context("the order vanished after its cancellation")?;
    Ok(order)
}
