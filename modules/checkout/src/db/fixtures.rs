//! Test-only reads and writes of checkout's tables, so that tests of use cases build no
//! statements of their own.

use chrono::{DateTime, Utc};
use kernel::Sku;
use module_api::ModuleDb;
use module_api::sql::query;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter,
};
use uuid::Uuid;

use super::{orders, payment_attempts};

/// Checkout's tables in a fresh in-memory SQLite database.
pub(crate) async fn memory_db() -> ModuleDb {
    let conn = sea_orm::Database::connect("sqlite::memory:")
        .await
        .expect("sqlite");
    module_api::schema::up::<super::Migrator>(&conn)
        .await
        .expect("migrations");
    ModuleDb::new("checkout", conn)
}

/// An order of one customer, with no lines, in `status` since `at`.
pub(crate) async fn insert_order(db: &ModuleDb, id: Uuid, status: &str, at: DateTime<Utc>) {
    orders::ActiveModel {
        id: Set(id),
        status: Set(status.to_owned()),
        status_reason: Set(None),
        customer_id: Set("ada".into()),
        customer_email: Set("ada@example.com".into()),
        shipping_address: Set("{}".into()),
        payment_token: Set("tok".into()),
        currency: Set("EUR".into()),
        total_minor: Set(1),
        created_at: Set(at),
        updated_at: Set(at),
    }
    .insert(db.conn())
    .await
    .expect("order");
}

/// What catalog's reservation does to an order: its payment becomes due at once.
pub(crate) async fn insert_due_attempt(db: &ModuleDb, order_id: Uuid) {
    let now = Utc::now();
    payment_attempts::ActiveModel {
        id: Set(Uuid::now_v7()),
        order_id: Set(order_id),
        status: Set("pending".into()),
        attempts: Set(0),
        next_attempt_at: Set(0),
        locked_until: Set(0),
        last_error: Set(None),
        reference: Set(None),
        correlation_id: Set(Some(Uuid::now_v7())),
        traceparent: Set(None),
        created_at: Set(now),
        updated_at: Set(now),
    }
    .insert(db.conn())
    .await
    .expect("a payment attempt");
}

/// How many payment attempts are under a lease now.
pub(crate) async fn locked_attempts(db: &ModuleDb) -> u64 {
    payment_attempts::Entity::find()
        .filter(payment_attempts::Column::LockedUntil.gt(Utc::now().timestamp_millis()))
        .count(db.conn())
        .await
        .expect("count attempts")
}

/// The id of an order's payment attempt.
pub(crate) async fn attempt_id_of(db: &ModuleDb, order_id: Uuid) -> Uuid {
    payment_attempts::Entity::find()
        .filter(payment_attempts::Column::OrderId.eq(order_id))
        .one(db.conn())
        .await
        .expect("read the attempt")
        .expect("the attempt")
        .id
}

/// The status and provider reference of an order's payment attempt.
pub(crate) async fn attempt_of(db: &ModuleDb, order_id: Uuid) -> (String, Option<String>) {
    let row = payment_attempts::Entity::find()
        .filter(payment_attempts::Column::OrderId.eq(order_id))
        .one(db.conn())
        .await
        .expect("read the attempt")
        .expect("an attempt");
    (row.status, row.reference)
}

/// How many `order_confirmed` events the outbox holds for an order.
pub(crate) async fn confirmations(db: &ModuleDb, order_id: Uuid) -> usize {
    query(
        db.conn(),
        "SELECT id FROM outbox WHERE event_type = $1 AND ordering_key = $2",
        vec![
            "checkout.order_confirmed.v1".into(),
            order_id.to_string().into(),
        ],
    )
    .await
    .expect("read the outbox")
    .len()
}

/// PostgreSQL: how many other sessions of this database are inside a transaction now.
pub(crate) async fn open_transactions(db: &ModuleDb) -> i64 {
    let rows = query(
        db.conn(),
        "SELECT COUNT(*) AS n FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid() \
         AND state LIKE 'idle in transaction%'",
        vec![],
    )
    .await
    .expect("read pg_stat_activity");
    rows[0].try_get("", "n").expect("a count")
}

/// How many orders, and how many `order_placed` events the outbox holds.
pub(crate) async fn orders_and_placed_events(db: &ModuleDb) -> (i64, i64) {
    let count = |sql: &'static str, values: Vec<sea_orm::Value>| async move {
        let rows = query(db.conn(), sql, values).await.expect("a count");
        rows[0].try_get::<i64>("", "n").expect("a count")
    };
    (
        count("SELECT COUNT(*) AS n FROM orders", vec![]).await,
        count(
            "SELECT COUNT(*) AS n FROM outbox WHERE event_type = $1",
            vec!["checkout.order_placed.v1".into()],
        )
        .await,
    )
}

/// PostgreSQL: how many transactions wrote these orders (their rows' `xmin`).
pub(crate) async fn transactions_that_wrote(db: &ModuleDb, ids: &[Uuid]) -> i64 {
    let mut values: Vec<sea_orm::Value> = Vec::new();
    values.extend(ids.iter().map(|id| sea_orm::Value::from(*id)));
    let sql = format!(
        "SELECT COUNT(DISTINCT xmin::text) AS n FROM orders WHERE id IN ({})",
        module_api::sql::placeholders(1, ids.len())
    );
    let rows = query(db.conn(), &sql, values)
        .await
        .expect("read the orders' xmin");
    rows[0].try_get("", "n").expect("a count")
}

/// PostgreSQL: reads the price list once per set of skus on one connection, then tells
/// how many prepared statements that connection holds for the price read, and how often
/// their plan was kept (generic) and made anew (custom).
pub(crate) async fn price_read_plans(db: &ModuleDb, sets: &[Vec<&Sku>]) -> (usize, i64, i64) {
    use sea_orm::TransactionTrait;
    // One transaction: one connection, whose prepared statements the view shows.
    let tx = db.conn().begin().await.expect("begin");
    for skus in sets {
        let prices = super::queries::price_list(&tx, skus).await.expect("prices");
        assert!(prices.contains_key(skus[0]), "{skus:?} priced");
    }
    let rows = query(
        &tx,
        "SELECT generic_plans, custom_plans FROM pg_prepared_statements \
         WHERE statement LIKE '%FROM prices WHERE prices.sku%' \
           AND statement NOT LIKE '%pg_prepared_statements%'",
        vec![],
    )
    .await
    .expect("prepared statements");
    let plans = |column: &str| -> i64 {
        rows.iter()
            .map(|row| row.try_get::<i64>("", column).expect("a count"))
            .sum()
    };
    (rows.len(), plans("generic_plans"), plans("custom_plans"))
}

/// PostgreSQL: a transaction of its own that holds every order row locked until it ends
/// (as a slow writer of orders would).
pub(crate) async fn lock_all_orders(db: &ModuleDb) -> sea_orm::DatabaseTransaction {
    use sea_orm::TransactionTrait;
    let tx = db.conn().begin().await.expect("begin");
    query(&tx, "SELECT id FROM orders FOR UPDATE", vec![])
        .await
        .expect("lock the orders");
    tx
}
