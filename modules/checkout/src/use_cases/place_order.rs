//! Places an order: parse (the request, in `http/`) → load the prices of its skus from
//! checkout's own price list → [`Order::place`] prices it (pure) → store it as `pending`
//! and, in the same transaction, publish `checkout.order_placed.v1`. The order belongs to
//! the customer who placed it. With an `Idempotency-Key`, the same customer's same key and
//! body give back the same order; the same key with another body is refused. Keys are the
//! customer's own: another customer's key never names their order.

use anyhow::Context;
use chrono::Utc;
use contracts::Cause;
use contracts::checkout::OrderPlacedV1;
use kernel::{FieldErrors, OrderId};

use crate::db::queries;
use crate::domain::{NewOrder, Order, PlaceError};
use module_api::Store;

/// An `Idempotency-Key` and the hash of the request it came with.
pub(crate) struct IdempotencyKey {
    pub(crate) key: String,
    pub(crate) request_hash: String,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum PlaceOrderError {
    #[error("checkout has no price for some skus")]
    UnknownSkus(FieldErrors),
    #[error("the items are priced in different currencies ({0})")]
    MixedCurrencies(String),
    #[error("the order total is too large")]
    TotalTooLarge,
    #[error("this Idempotency-Key was used with another request")]
    KeyReused,
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

impl From<PlaceError> for PlaceOrderError {
    fn from(e: PlaceError) -> Self {
        match e {
            PlaceError::UnknownSkus(unknown) => {
                let mut fields = FieldErrors::new();
                for (i, sku) in unknown {
                    fields.add(
                        format!("items[{i}].sku"),
                        "unknown_sku",
                        format!("checkout has no price for sku {sku}"),
                    );
                }
                PlaceOrderError::UnknownSkus(fields)
            }
            PlaceError::MixedCurrencies(currencies) => PlaceOrderError::MixedCurrencies(
                currencies
                    .iter()
                    .map(|c| c.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
            PlaceError::TotalTooLarge => PlaceOrderError::TotalTooLarge,
            PlaceError::NoItems => {
                PlaceOrderError::Unexpected(anyhow::anyhow!("an order came without items"))
            }
        }
    }
}

pub(crate) enum Placed {
    New(Order),
    /// The key was seen with the same request: the order it made.
    Replayed(Order),
}

async fn replay(
    store: &Store,
    customer: &str,
    key: &IdempotencyKey,
) -> Result<Option<Placed>, PlaceOrderError> {
    let Some((request_hash, order_id)) =
        queries::idempotency_key(store.conn(), customer, &key.key).await?
    else {
        return Ok(None);
    };
    if request_hash != key.request_hash {
        return Err(PlaceOrderError::KeyReused);
    }
    let order = queries::load_order(store.conn(), order_id, false)
        .await?
        .context("an idempotency key points at a missing order")?;
    Ok(Some(Placed::Replayed(order)))
}

fn placed_event(order: &Order) -> OrderPlacedV1 {
    OrderPlacedV1 {
        order_id: order.id.as_uuid(),
        lines: super::event_lines(order),
        currency: order.total.currency().to_string(),
        total_minor: order.total.minor(),
    }
}

#[tracing::instrument(name = "checkout.place_order", skip_all)]
pub(crate) async fn place_order(
    store: &Store,
    cause: &Cause,
    command: NewOrder,
    key: Option<IdempotencyKey>,
) -> Result<Placed, PlaceOrderError> {
    if let Some(key) = &key
        && let Some(placed) = replay(store, &command.customer_id, key).await?
    {
        return Ok(placed);
    }
    let skus: Vec<_> = command.items.iter().map(|(sku, _)| sku).collect();
    let prices = queries::price_list(store.conn(), &skus).await?;
    let now = Utc::now();
    let order = Order::place(OrderId::new(), command, &prices, now)?;

    let mut tx = store
        .begin(cause)
        .await
        .context("failed to begin a transaction")?;
    if let Some(key) = &key
        && !queries::claim_idempotency_key(
            &tx,
            &order.customer_id,
            &key.key,
            &key.request_hash,
            order.id.as_uuid(),
            now,
        )
        .await?
    {
        // Another request with this key won the race: answer as it did.
        drop(tx);
        return replay(store, &order.customer_id, key)
            .await?
            .context("an idempotency key vanished")
            .map_err(Into::into);
    }
    queries::insert_order(&tx, &order).await?;
    tx.publish(&placed_event(&order))
        .context("the order does not fit its event")?;
    tx.commit().await.context("failed to commit the order")?;
    crate::counters::orders_placed(1);
    tracing::info!(order_id = %order.id, total_minor = order.total.minor(), "order placed");
    Ok(Placed::New(order))
}
