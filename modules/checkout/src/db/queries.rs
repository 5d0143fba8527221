//! Reading and changing orders, their idempotency keys, and the price list they are
//! priced from.

use std::collections::HashMap;

use anyhow::Context;
use chrono::{DateTime, Utc};
use module_api::Tx;
use module_api::sql::{ArrayType, Rows};
use sea_orm::sea_query::{Alias, Expr, ExprTrait, LockType, OnConflict};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect, QueryTrait, Statement, Value,
};
use uuid::Uuid;

use super::{idempotency_keys, order_lines, orders, prices};
use kernel::{Currency, Money, OrderId, Quantity, Sku};

use crate::domain::{Address, Line, Order, OrderStatus, PriceList, StatusReason};

/// Loads an order and its lines. With `lock`, the order row stays locked until the
/// transaction ends (PostgreSQL; SQLite's write transactions are exclusive anyway), so
/// changes to one order are serialized and its events leave in commit order.
pub(crate) async fn load_order(
    conn: &impl ConnectionTrait,
    id: Uuid,
    lock: bool,
) -> anyhow::Result<Option<Order>> {
    Ok(load_orders(conn, &[id], lock).await?.remove(&id))
}

pub(crate) async fn set_status(
    conn: &impl ConnectionTrait,
    id: Uuid,
    status: OrderStatus,
    reason: Option<StatusReason>,
) -> anyhow::Result<()> {
    set_statuses(conn, &[id], status, reason).await
}

/// Loads several orders and their lines in one query (each order's columns come once per
/// line); with `lock`, the orders' rows, locked in id order, stay locked until the
/// transaction ends (the lines are not locked: nothing changes them after placement).
pub(crate) async fn load_orders(
    conn: &impl ConnectionTrait,
    ids: &[Uuid],
    lock: bool,
) -> anyhow::Result<HashMap<Uuid, Order>> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let mut query = orders::Entity::find()
        .find_also_related(order_lines::Entity)
        .filter(orders::Column::Id.is_in(module_api::sql::padded(ids.to_vec())))
        // Sorted before they are locked: the order every locker of orders keeps.
        .order_by_asc(orders::Column::Id)
        .order_by_asc(order_lines::Column::LineNo);
    if lock {
        QueryTrait::query(&mut query).lock_with_tables(LockType::Update, [orders::Entity]);
    }
    let joined = query.all(conn).await.context("failed to load orders")?;
    let mut rows: Vec<orders::Model> = Vec::with_capacity(ids.len());
    let mut lines: HashMap<Uuid, Vec<order_lines::Model>> = HashMap::with_capacity(ids.len());
    for (order, line) in joined {
        if let Some(line) = line {
            lines.entry(order.id).or_default().push(line);
        }
        if rows.last().is_none_or(|last| last.id != order.id) {
            rows.push(order);
        }
    }
    let mut out = HashMap::with_capacity(rows.len());
    for row in rows {
        let status = OrderStatus::parse(&row.status)
            .with_context(|| format!("stored status {:?} is unknown", row.status))?;
        let status_reason = row
            .status_reason
            .as_deref()
            .map(|r| {
                StatusReason::parse(r).with_context(|| format!("stored reason {r:?} is unknown"))
            })
            .transpose()?;
        let shipping_address: Address = serde_json::from_str(&row.shipping_address)
            .context("stored shipping address is not valid")?;
        let currency = Currency::parse(&row.currency)
            .with_context(|| format!("stored currency {:?} is invalid", row.currency))?;
        let total = Money::new(row.total_minor, currency).context("stored total is invalid")?;
        let lines = lines
            .remove(&row.id)
            .unwrap_or_default()
            .into_iter()
            .map(|l| {
                Ok(Line {
                    sku: Sku::parse(&l.sku)
                        .with_context(|| format!("stored sku {:?} is invalid", l.sku))?,
                    quantity: Quantity::new(l.quantity).context("stored quantity is invalid")?,
                    unit_price: Money::new(l.unit_price_minor, currency)
                        .context("stored unit price is invalid")?,
                })
            })
            .collect::<anyhow::Result<Vec<Line>>>()?;
        out.insert(
            row.id,
            Order {
                id: OrderId::from_uuid(row.id),
                status,
                status_reason,
                customer_id: row.customer_id,
                customer_email: row.customer_email,
                shipping_address,
                payment_token: row.payment_token,
                total,
                lines,
                created_at: row.created_at,
                updated_at: row.updated_at,
            },
        );
    }
    Ok(out)
}

/// Moves several orders to one status, in one statement.
pub(crate) async fn set_statuses(
    conn: &impl ConnectionTrait,
    ids: &[Uuid],
    status: OrderStatus,
    reason: Option<StatusReason>,
) -> anyhow::Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    statuses_change(ids, status, reason)
        .exec(conn)
        .await
        .context("failed to update order statuses")?;
    Ok(())
}

/// [`set_statuses`] when `tx` commits, in its last statement (`Tx::change_at_commit`): for
/// a transaction that reads and writes nothing of these orders after.
pub(crate) fn set_statuses_at_commit(
    tx: &mut Tx,
    ids: &[Uuid],
    status: OrderStatus,
    reason: Option<StatusReason>,
) {
    if ids.is_empty() {
        return;
    }
    let change = statuses_change(ids, status, reason).build(tx.get_database_backend());
    tx.change_at_commit(change);
}

fn statuses_change(
    ids: &[Uuid],
    status: OrderStatus,
    reason: Option<StatusReason>,
) -> sea_orm::UpdateMany<orders::Entity> {
    orders::Entity::update_many()
        .col_expr(orders::Column::Status, Expr::value(status.as_str()))
        .col_expr(
            orders::Column::StatusReason,
            Expr::value(reason.map(|r| r.as_str().to_owned())),
        )
        .col_expr(orders::Column::UpdatedAt, Expr::value(Utc::now()))
        .filter(orders::Column::Id.is_in(module_api::sql::padded(ids.to_vec())))
}

/// Orders still `pending` that were placed before `cutoff`: how many, and the oldest
/// (its id and when it was placed).
pub(crate) async fn overdue_orders(
    conn: &impl ConnectionTrait,
    cutoff: chrono::DateTime<Utc>,
) -> anyhow::Result<(u64, Option<(Uuid, chrono::DateTime<Utc>)>)> {
    use sea_orm::PaginatorTrait;
    let overdue = || {
        orders::Entity::find()
            .filter(orders::Column::Status.eq(OrderStatus::Pending.as_str()))
            .filter(orders::Column::CreatedAt.lt(cutoff))
    };
    let count = overdue()
        .count(conn)
        .await
        .context("failed to count overdue orders")?;
    let oldest = overdue()
        .order_by_asc(orders::Column::CreatedAt)
        .one(conn)
        .await
        .context("failed to read the oldest overdue order")?
        .map(|o| (o.id, o.created_at));
    Ok((count, oldest))
}

/// A price as checkout's price list holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredPrice {
    pub(crate) sku: String,
    pub(crate) price_minor: i64,
    pub(crate) currency: String,
    pub(crate) version: i64,
}

impl From<prices::Model> for StoredPrice {
    fn from(row: prices::Model) -> Self {
        StoredPrice {
            sku: row.sku,
            price_minor: row.price_minor,
            currency: row.currency,
            version: row.version,
        }
    }
}

/// One index lookup per sku on PostgreSQL, whatever the planner's statistics say: an `IN`
/// list over a price list of a thousand rows was planned (generic plan, under load) as a
/// scan of the whole table, about 1 ms a batch of placements instead of 0.1. The skus come
/// as a JSON array, not an SQL one: the planner knows how long a bound array is and priced
/// each call's own plan below the kept one, so it planned every placement batch anew (78 µs
/// a call, three times what running it took); a set from JSON is estimated alike whatever
/// its length, so the statement's plan is made once per connection and kept.
const PRICES_BY_SKU_POSTGRES: &str = "SELECT p.sku, p.price_minor, p.currency, p.version, p.updated_at \
     FROM json_array_elements_text($1::json) AS k(sku) \
     CROSS JOIN LATERAL (SELECT * FROM prices WHERE prices.sku = k.sku LIMIT 1) AS p";

/// The prices of these skus that the price list has (an unknown sku is absent).
pub(crate) async fn price_list(
    conn: &impl ConnectionTrait,
    skus: &[&Sku],
) -> anyhow::Result<PriceList> {
    let names = || skus.iter().map(|s| s.as_str());
    let rows = if conn.get_database_backend() == DbBackend::Postgres {
        let skus = serde_json::to_string(&names().collect::<Vec<_>>())?;
        let values = vec![Value::from(skus)];
        prices::Entity::find()
            .from_raw_sql(Statement::from_sql_and_values(
                DbBackend::Postgres,
                PRICES_BY_SKU_POSTGRES,
                values,
            ))
            .all(conn)
            .await
    } else {
        prices::Entity::find()
            .filter(prices::Column::Sku.is_in(module_api::sql::padded(names().collect::<Vec<_>>())))
            .all(conn)
            .await
    };
    rows.context("failed to read prices")?
        .into_iter()
        .map(|row| {
            let sku = Sku::parse(&row.sku)
                .with_context(|| format!("a stored price has a bad sku {:?}", row.sku))?;
            let currency =
                Currency::parse(&row.currency).context("a stored price has a bad currency")?;
            let price =
                Money::new(row.price_minor, currency).context("a stored price is out of range")?;
            Ok((sku, price))
        })
        .collect()
}

pub(crate) async fn price(
    conn: &impl ConnectionTrait,
    sku: &str,
) -> anyhow::Result<Option<StoredPrice>> {
    Ok(prices::Entity::find_by_id(sku)
        .one(conn)
        .await
        .context("failed to read a price")?
        .map(StoredPrice::from))
}

/// Stores a price unless the list holds one of the same or a newer product version;
/// false when it was stale and nothing changed.
pub(crate) async fn apply_price(
    conn: &impl ConnectionTrait,
    price: StoredPrice,
    now: DateTime<Utc>,
) -> anyhow::Result<bool> {
    let applied = prices::Entity::insert(prices::ActiveModel {
        sku: Set(price.sku),
        price_minor: Set(price.price_minor),
        currency: Set(price.currency),
        version: Set(price.version),
        updated_at: Set(now),
    })
    .on_conflict(
        OnConflict::column(prices::Column::Sku)
            .update_columns([
                prices::Column::PriceMinor,
                prices::Column::Currency,
                prices::Column::Version,
                prices::Column::UpdatedAt,
            ])
            .action_and_where(
                Expr::col((prices::Entity, prices::Column::Version))
                    .lt(Expr::col((Alias::new("excluded"), prices::Column::Version))),
            )
            .to_owned(),
    )
    .exec_without_returning(conn)
    .await
    .context("failed to store a price")?;
    Ok(applied > 0)
}

/// The request hash and the order of a customer's idempotency key, if it was used.
pub(crate) async fn idempotency_key(
    conn: &impl ConnectionTrait,
    customer: &str,
    key: &str,
) -> anyhow::Result<Option<(String, Uuid)>> {
    Ok(
        idempotency_keys::Entity::find_by_id((customer.to_owned(), key.to_owned()))
            .one(conn)
            .await
            .context("failed to read idempotency key")?
            .map(|k| (k.request_hash, k.order_id)),
    )
}

/// Records which order a customer's key produced; false when the key is taken already
/// (another request with it won the race). A taken key changes nothing and is no error,
/// so the transaction goes on with the other orders of its batch (on PostgreSQL a unique
/// violation would abort it). A key another transaction is inserting waits for it, so
/// false means the winner committed.
pub(crate) async fn claim_idempotency_key(
    conn: &impl ConnectionTrait,
    customer: &str,
    key: &str,
    request_hash: &str,
    order_id: Uuid,
    now: DateTime<Utc>,
) -> anyhow::Result<bool> {
    let inserted = idempotency_keys::Entity::insert(idempotency_keys::ActiveModel {
        customer_id: Set(customer.to_owned()),
        key: Set(key.to_owned()),
        request_hash: Set(request_hash.to_owned()),
        order_id: Set(order_id),
        created_at: Set(now),
    })
    .on_conflict(
        OnConflict::columns([
            idempotency_keys::Column::CustomerId,
            idempotency_keys::Column::Key,
        ])
        .do_nothing()
        .to_owned(),
    )
    .exec_without_returning(conn)
    .await
    .context("failed to store idempotency key")?;
    Ok(inserted > 0)
}

/// The rows of new orders and of their lines, for the placing transaction to insert when
/// it commits (`Tx::insert_at_commit`: with its outbox rows, one statement on PostgreSQL).
pub(crate) fn order_rows(orders: &[&Order]) -> anyhow::Result<[(&'static str, Rows); 2]> {
    let column =
        |value: &dyn Fn(&Order) -> Value| orders.iter().map(|o| value(o)).collect::<Vec<_>>();
    let addresses = orders
        .iter()
        .map(|o| serde_json::to_string(&o.shipping_address).map(Value::from))
        .collect::<Result<Vec<_>, _>>()
        .context("address to JSON")?;
    let rows = Rows::new()
        .column("id", ArrayType::Uuid, column(&|o| o.id.as_uuid().into()))
        .column(
            "status",
            ArrayType::String,
            column(&|o| o.status.as_str().into()),
        )
        .text_or_null(
            "status_reason",
            orders
                .iter()
                .map(|o| o.status_reason.map(|r| r.as_str().to_owned())),
        )
        .column(
            "customer_id",
            ArrayType::String,
            column(&|o| o.customer_id.clone().into()),
        )
        .column(
            "customer_email",
            ArrayType::String,
            column(&|o| o.customer_email.clone().into()),
        )
        .column("shipping_address", ArrayType::String, addresses)
        .column(
            "payment_token",
            ArrayType::String,
            column(&|o| o.payment_token.clone().into()),
        )
        .column(
            "currency",
            ArrayType::String,
            column(&|o| o.total.currency().to_string().into()),
        )
        .column(
            "total_minor",
            ArrayType::BigInt,
            column(&|o| o.total.minor().into()),
        )
        .column(
            "created_at",
            ArrayType::ChronoDateTimeUtc,
            column(&|o| o.created_at.into()),
        )
        .column(
            "updated_at",
            ArrayType::ChronoDateTimeUtc,
            column(&|o| o.updated_at.into()),
        );
    let lines: Vec<(&Order, usize, &Line)> = orders
        .iter()
        .flat_map(|o| o.lines.iter().enumerate().map(move |(i, l)| (*o, i, l)))
        .collect();
    let line_rows = Rows::new()
        .column(
            "order_id",
            ArrayType::Uuid,
            lines.iter().map(|(o, _, _)| o.id.as_uuid().into()),
        )
        .column(
            "line_no",
            ArrayType::Int,
            lines.iter().map(|(_, i, _)| (*i as i32 + 1).into()),
        )
        .column(
            "sku",
            ArrayType::String,
            lines.iter().map(|(_, _, l)| l.sku.to_string().into()),
        )
        .column(
            "quantity",
            ArrayType::BigInt,
            lines.iter().map(|(_, _, l)| l.quantity.get().into()),
        )
        .column(
            "unit_price_minor",
            ArrayType::BigInt,
            lines.iter().map(|(_, _, l)| l.unit_price.minor().into()),
        );
    Ok([("orders", rows), ("order_lines", line_rows)])
}

/// Up to `limit` order ids in id order after `after`; with `owner`, only that customer's.
pub(crate) async fn order_ids(
    conn: &impl ConnectionTrait,
    owner: Option<&str>,
    after: Option<Uuid>,
    limit: u64,
) -> anyhow::Result<Vec<Uuid>> {
    let mut query = orders::Entity::find()
        .select_only()
        .column(orders::Column::Id)
        .order_by_asc(orders::Column::Id)
        .limit(limit);
    if let Some(customer) = owner {
        query = query.filter(orders::Column::CustomerId.eq(customer));
    }
    if let Some(after) = after {
        query = query.filter(orders::Column::Id.gt(after));
    }
    query
        .into_tuple()
        .all(conn)
        .await
        .context("failed to list orders")
}

/// Deletes the idempotency keys older than `retention` (the module's cleaner calls this on
/// each pass): their customers may use them again for new orders.
pub(crate) async fn forget_keys(
    db: module_api::ModuleDb,
    retention: std::time::Duration,
) -> Result<u64, sea_orm::DbErr> {
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
    let before =
        chrono::Utc::now() - chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
    let deleted = super::idempotency_keys::Entity::delete_many()
        .filter(super::idempotency_keys::Column::CreatedAt.lt(before))
        .exec(db.conn())
        .await?;
    Ok(deleted.rows_affected)
}
