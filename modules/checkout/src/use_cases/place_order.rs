//! Places an order: prices its lines from checkout's own price list, stores it as
//! `pending` and, in the same transaction, publishes `checkout.order_placed.v1`. The order
//! belongs to the customer who placed it. With an `Idempotency-Key`, the same customer's
//! same key and body give back the same order; the same key with another body is refused.
//! Keys are the customer's own: another customer's key never names their order.

use std::collections::HashMap;

use anyhow::Context;
use chrono::Utc;
use contracts::checkout::{OrderLineV1, OrderPlacedV1};
use contracts::{Cause, Envelope};
use kernel::{Currency, FieldErrors, Money, OrderId, Quantity, Sku};
use messaging::db::{placeholders, query};
use sea_orm::{ActiveValue::Set, EntityTrait, Value};

use crate::State;
use crate::db::{idempotency_keys, is_unique_violation, order_lines, orders, queries};
use crate::domain::{Address, Order, OrderStatus};

pub(crate) struct PlaceOrder {
    /// The customer placing it: the `sub` of their token.
    pub(crate) customer_id: String,
    pub(crate) customer_email: String,
    pub(crate) items: Vec<(Sku, Quantity)>,
    pub(crate) shipping_address: Address,
    pub(crate) payment_token: String,
}

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

pub(crate) enum Placed {
    New(Order),
    /// The key was seen with the same request: the order it made.
    Replayed(Order),
}

struct PriceRow {
    price_minor: i64,
    currency: String,
}

async fn prices(state: &State, skus: &[&str]) -> anyhow::Result<HashMap<String, PriceRow>> {
    let sql = format!(
        "SELECT sku, price_minor, currency FROM prices WHERE sku IN ({})",
        placeholders(1, skus.len())
    );
    let values = skus.iter().map(|s| Value::from(*s)).collect();
    let rows = query(state.db.conn(), &sql, values)
        .await
        .context("failed to read prices")?;
    rows.into_iter()
        .map(|r| {
            Ok((
                r.try_get::<String>("", "sku")?,
                PriceRow {
                    price_minor: r.try_get("", "price_minor")?,
                    currency: r.try_get("", "currency")?,
                },
            ))
        })
        .collect()
}

/// Deletes the idempotency keys older than `retention` (the module's cleaner calls this on
/// each pass): their customers may use them again for new orders.
pub(crate) async fn forget_keys(
    db: messaging::db::ModuleDb,
    retention: std::time::Duration,
) -> Result<u64, sea_orm::DbErr> {
    use sea_orm::{ColumnTrait, QueryFilter};
    let before =
        Utc::now() - chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
    let deleted = idempotency_keys::Entity::delete_many()
        .filter(idempotency_keys::Column::CreatedAt.lt(before))
        .exec(db.conn())
        .await?;
    Ok(deleted.rows_affected)
}

async fn replay(
    state: &State,
    customer: &str,
    key: &IdempotencyKey,
) -> Result<Option<Placed>, PlaceOrderError> {
    let Some(seen) = idempotency_keys::Entity::find_by_id((customer.to_owned(), key.key.clone()))
        .one(state.db.conn())
        .await
        .context("failed to read idempotency key")?
    else {
        return Ok(None);
    };
    if seen.request_hash != key.request_hash {
        return Err(PlaceOrderError::KeyReused);
    }
    let order = queries::load_order(state.db.conn(), seen.order_id, false)
        .await?
        .context("an idempotency key points at a missing order")?;
    Ok(Some(Placed::Replayed(order)))
}

#[tracing::instrument(name = "checkout.place_order", skip_all)]
pub(crate) async fn place_order(
    state: &State,
    cause: &Cause,
    command: PlaceOrder,
    key: Option<IdempotencyKey>,
) -> Result<Placed, PlaceOrderError> {
    if let Some(key) = &key
        && let Some(placed) = replay(state, &command.customer_id, key).await?
    {
        return Ok(placed);
    }
    let skus: Vec<&str> = command.items.iter().map(|(s, _)| s.as_str()).collect();
    let known = prices(state, &skus).await?;
    let mut unknown = FieldErrors::new();
    for (i, (sku, _)) in command.items.iter().enumerate() {
        if !known.contains_key(sku.as_str()) {
            unknown.add(
                format!("items[{i}].sku"),
                "unknown_sku",
                format!("checkout has no price for sku {sku}"),
            );
        }
    }
    if !unknown.is_empty() {
        return Err(PlaceOrderError::UnknownSkus(unknown));
    }
    let mut currencies: Vec<&str> = known.values().map(|p| p.currency.as_str()).collect();
    currencies.sort_unstable();
    currencies.dedup();
    if currencies.len() > 1 {
        return Err(PlaceOrderError::MixedCurrencies(currencies.join(", ")));
    }
    let currency = Currency::parse(currencies[0]).context("a stored price has a bad currency")?;
    let mut total = Money::zero(currency);
    let mut lines = Vec::with_capacity(command.items.len());
    for (sku, quantity) in &command.items {
        let unit = known[sku.as_str()].price_minor;
        let line = Money::new(unit, currency)
            .and_then(|m| m.checked_mul(quantity.get()))
            .map_err(|_| PlaceOrderError::TotalTooLarge)?;
        total = total
            .checked_add(line)
            .map_err(|_| PlaceOrderError::TotalTooLarge)?;
        lines.push(OrderLineV1 {
            sku: sku.to_string(),
            quantity: quantity.get(),
            unit_price_minor: unit,
        });
    }

    let id = OrderId::new().as_uuid();
    let now = Utc::now();
    let placed = Envelope::new(
        &OrderPlacedV1 {
            order_id: id,
            lines: lines.clone(),
            currency: currency.to_string(),
            total_minor: total.minor(),
        },
        cause,
    )
    .context("the order does not fit its event")?;
    let address = serde_json::to_string(&command.shipping_address).context("address to JSON")?;

    let tx = state
        .db
        .begin()
        .await
        .context("failed to begin a transaction")?;
    if let Some(key) = &key {
        let inserted = idempotency_keys::Entity::insert(idempotency_keys::ActiveModel {
            customer_id: Set(command.customer_id.clone()),
            key: Set(key.key.clone()),
            request_hash: Set(key.request_hash.clone()),
            order_id: Set(id),
            created_at: Set(now),
        })
        .exec_without_returning(&tx)
        .await;
        match inserted {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => {
                // Another request with this key won the race: answer as it did.
                drop(tx);
                return replay(state, &command.customer_id, key)
                    .await?
                    .context("an idempotency key vanished")
                    .map_err(Into::into);
            }
            Err(e) => {
                return Err(anyhow::Error::new(e)
                    .context("failed to store idempotency key")
                    .into());
            }
        }
    }
    orders::Entity::insert(orders::ActiveModel {
        id: Set(id),
        status: Set(OrderStatus::Pending.as_str().into()),
        status_reason: Set(None),
        customer_id: Set(command.customer_id.clone()),
        customer_email: Set(command.customer_email.clone()),
        shipping_address: Set(address),
        payment_token: Set(command.payment_token.clone()),
        currency: Set(currency.to_string()),
        total_minor: Set(total.minor()),
        created_at: Set(now),
        updated_at: Set(now),
    })
    .exec_without_returning(&tx)
    .await
    .context("failed to insert order")?;
    order_lines::Entity::insert_many(lines.iter().enumerate().map(|(i, l)| {
        order_lines::ActiveModel {
            order_id: Set(id),
            line_no: Set(i as i32 + 1),
            sku: Set(l.sku.clone()),
            quantity: Set(l.quantity),
            unit_price_minor: Set(l.unit_price_minor),
        }
    }))
    .exec_without_returning(&tx)
    .await
    .context("failed to insert order lines")?;
    state
        .outbox
        .append(&tx, &[placed])
        .await
        .context("failed to append order_placed")?;
    state
        .outbox
        .commit(tx)
        .await
        .context("failed to commit the order")?;
    crate::counters::orders_placed(1);
    tracing::info!(order_id = %id, total_minor = total.minor(), "order placed");
    Ok(Placed::New(Order {
        id,
        status: OrderStatus::Pending,
        status_reason: None,
        customer_id: command.customer_id,
        customer_email: command.customer_email,
        shipping_address: command.shipping_address,
        payment_token: command.payment_token,
        currency: currency.to_string(),
        total_minor: total.minor(),
        lines: lines
            .into_iter()
            .map(|l| crate::domain::Line {
                sku: l.sku,
                quantity: l.quantity,
                unit_price_minor: l.unit_price_minor,
            })
            .collect(),
        created_at: now,
        updated_at: now,
    }))
}
