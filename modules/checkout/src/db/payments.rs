//! The payment worker's statements on `payment_attempts`: open an attempt for each order
//! whose stock is held, claim due attempts under a lease, and settle, retry or release
//! them. The claim is one statement for both backends (a locking subquery with `SKIP
//! LOCKED`). Opening and settling a batch are one statement each too: on PostgreSQL they
//! take their rows as arrays (`unnest`), one statement for any batch size, which every
//! connection keeps prepared; on SQLite, a multi-row insert and a `CASE` per attempt.

use std::collections::HashSet;

use anyhow::Context;
use chrono::{DateTime, Utc};
use module_api::Tx;
use module_api::sql::{ArrayType, Rows, array, insert_rows, placeholders, query, stmt};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    Statement, Value,
};
use uuid::Uuid;

use super::payment_attempts;
use crate::domain::PaymentStatus;

const PENDING: &str = PaymentStatus::Pending.as_str();

/// A payment that becomes due: its order, what its outcome will be announced as caused
/// by, and its lease end: 0 when it is opened for the worker to claim, or the fence of the
/// claim it is opened under (handed to the worker by the transaction that opens it).
pub(crate) struct NewAttempt {
    pub(crate) id: Uuid,
    pub(crate) order_id: Uuid,
    pub(crate) correlation_id: Uuid,
    pub(crate) traceparent: String,
    pub(crate) locked_until: i64,
}

/// Opens a pending attempt, due at `due_ms`, for each order that has none yet; returns the
/// ids of the attempts it opened (an order that already has one keeps it, and the new id
/// is not among them).
pub(crate) async fn open(
    conn: &impl ConnectionTrait,
    attempts: Vec<NewAttempt>,
    due_ms: i64,
    now: DateTime<Utc>,
) -> anyhow::Result<HashSet<Uuid>> {
    let each = |value: Value| attempts.iter().map(move |_| value.clone());
    let rows = Rows::new()
        .column("id", ArrayType::Uuid, attempts.iter().map(|a| a.id.into()))
        .column(
            "order_id",
            ArrayType::Uuid,
            attempts.iter().map(|a| a.order_id.into()),
        )
        .column("status", ArrayType::String, each(PENDING.into()))
        .column("attempts", ArrayType::Int, each(0i32.into()))
        .column("next_attempt_at", ArrayType::BigInt, each(due_ms.into()))
        .column(
            "locked_until",
            ArrayType::BigInt,
            attempts.iter().map(|a| a.locked_until.into()),
        )
        .column(
            "correlation_id",
            ArrayType::Uuid,
            attempts.iter().map(|a| a.correlation_id.into()),
        )
        .column(
            "traceparent",
            ArrayType::String,
            attempts.iter().map(|a| a.traceparent.clone().into()),
        )
        .column("created_at", ArrayType::ChronoDateTimeUtc, each(now.into()))
        .column("updated_at", ArrayType::ChronoDateTimeUtc, each(now.into()));
    let opened = insert_rows(
        conn,
        "payment_attempts",
        rows,
        "ON CONFLICT (order_id) DO NOTHING RETURNING id",
    )
    .await
    .context("failed to open payment attempts")?;
    opened
        .iter()
        .map(|row| row.try_get::<Uuid>("", "id").map_err(Into::into))
        .collect()
}

/// An attempt as a claim returns it.
pub(crate) struct ClaimedRow {
    pub(crate) id: Uuid,
    pub(crate) order_id: Uuid,
    pub(crate) attempts: i32,
    pub(crate) correlation_id: Option<Uuid>,
    pub(crate) traceparent: Option<String>,
}

/// Claims up to `limit` pending attempts due at `now_ms` whose lease ended before it,
/// writing `fence` as their new lease end. Rows another claim is locking are skipped.
pub(crate) async fn claim(
    conn: &impl ConnectionTrait,
    fence: i64,
    now_ms: i64,
    limit: usize,
) -> anyhow::Result<Vec<ClaimedRow>> {
    let rows = query(
        conn,
        // Materialized, so the limit holds: PostgreSQL may run an `IN (SELECT ..)`
        // sub-select more than once and lock and return more rows than it asked for.
        "WITH due AS MATERIALIZED ( \
           SELECT id AS due_id FROM payment_attempts \
           WHERE status = 'pending' AND next_attempt_at <= $2 AND locked_until < $2 \
           ORDER BY next_attempt_at LIMIT $3 FOR UPDATE SKIP LOCKED) \
         UPDATE payment_attempts SET locked_until = $1 FROM due WHERE id = due.due_id \
         RETURNING id, order_id, attempts, correlation_id, traceparent",
        vec![fence.into(), now_ms.into(), (limit as i64).into()],
    )
    .await
    .context("failed to claim payment attempts")?;
    rows.into_iter()
        .map(|r| {
            Ok(ClaimedRow {
                id: r.try_get("", "id")?,
                order_id: r.try_get("", "order_id")?,
                attempts: r.try_get("", "attempts")?,
                correlation_id: r.try_get("", "correlation_id")?,
                traceparent: r.try_get("", "traceparent")?,
            })
        })
        .collect()
}

/// The (attempt, lease end) pairs of these attempts that are still pending, locked until
/// the transaction ends so no claim can take them meanwhile.
pub(crate) async fn lock_pending(
    conn: &impl ConnectionTrait,
    ids: &[Uuid],
) -> anyhow::Result<HashSet<(Uuid, i64)>> {
    let rows: Vec<(Uuid, i64)> = payment_attempts::Entity::find()
        .select_only()
        .column(payment_attempts::Column::Id)
        .column(payment_attempts::Column::LockedUntil)
        .filter(payment_attempts::Column::Status.eq(PENDING))
        .filter(payment_attempts::Column::Id.is_in(module_api::sql::padded(ids.to_vec())))
        .order_by_asc(payment_attempts::Column::Id)
        .lock_exclusive()
        .into_tuple()
        .all(conn)
        .await
        .context("failed to lock payment attempts")?;
    Ok(rows.into_iter().collect())
}

/// Releases claims without counting an attempt: the attempts are due again at once.
pub(crate) async fn release(conn: &impl ConnectionTrait, ids: &[Uuid]) -> anyhow::Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    payment_attempts::Entity::update_many()
        .col_expr(payment_attempts::Column::LockedUntil, Expr::value(0i64))
        .filter(payment_attempts::Column::Status.eq(PENDING))
        .filter(payment_attempts::Column::Id.is_in(module_api::sql::padded(ids.to_vec())))
        .exec(conn)
        .await
        .context("failed to release payment attempts")?;
    Ok(())
}

/// Counts a failed attempt and makes it due again at `next_attempt_at`.
pub(crate) async fn retry(
    conn: &impl ConnectionTrait,
    id: Uuid,
    attempts: i32,
    next_attempt_at: i64,
    error: &str,
    now: DateTime<Utc>,
) -> anyhow::Result<()> {
    payment_attempts::Entity::update_many()
        .col_expr(payment_attempts::Column::Attempts, Expr::value(attempts))
        .col_expr(
            payment_attempts::Column::NextAttemptAt,
            Expr::value(next_attempt_at),
        )
        .col_expr(payment_attempts::Column::LockedUntil, Expr::value(0i64))
        .col_expr(payment_attempts::Column::LastError, Expr::value(error))
        .col_expr(payment_attempts::Column::UpdatedAt, Expr::value(now))
        .filter(payment_attempts::Column::Id.eq(id))
        .exec(conn)
        .await
        .context("failed to record a retry")?;
    Ok(())
}

/// A payment attempt's final state.
pub(crate) struct Finished {
    pub(crate) id: Uuid,
    pub(crate) status: PaymentStatus,
    pub(crate) reference: Option<String>,
    pub(crate) error: Option<String>,
}

/// Records final states of many attempts when `tx` commits, in its last statement
/// (`Tx::change_at_commit`): nothing in the recorder's transaction reads them after.
pub(crate) fn finish_at_commit(tx: &mut Tx, finished: &[Finished], now: DateTime<Utc>) {
    if finished.is_empty() {
        return;
    }
    let change = finished_change(tx.get_database_backend(), finished, now);
    tx.change_at_commit(change);
}

/// The one statement that records final states of many attempts.
fn finished_change(backend: DbBackend, finished: &[Finished], now: DateTime<Utc>) -> Statement {
    if backend == DbBackend::Postgres {
        // An array holds no NULL: a missing reference or error goes as '' (none is empty)
        // and leaves the column as it was.
        let text = |v: &Option<String>| Value::from(v.clone().unwrap_or_default());
        let values = vec![
            array(ArrayType::Uuid, finished.iter().map(|f| f.id.into())),
            array(
                ArrayType::String,
                finished.iter().map(|f| f.status.as_str().into()),
            ),
            array(
                ArrayType::String,
                finished.iter().map(|f| text(&f.reference)),
            ),
            array(ArrayType::String, finished.iter().map(|f| text(&f.error))),
            now.into(),
        ];
        return stmt(
            backend,
            "UPDATE payment_attempts SET status = u.s, \
             reference = COALESCE(NULLIF(u.r, ''), payment_attempts.reference), \
             last_error = COALESCE(NULLIF(u.e, ''), payment_attempts.last_error), updated_at = $5 \
             FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[]) AS u(i, s, r, e) \
             WHERE payment_attempts.id = u.i",
            values,
        );
    }
    let mut values: Vec<Value> = Vec::with_capacity(finished.len() * 5 + 1);
    let (mut status, mut reference, mut error) = (String::new(), String::new(), String::new());
    for (i, f) in finished.iter().enumerate() {
        let n = i * 4;
        status.push_str(&format!(" WHEN ${} THEN ${}", n + 1, n + 2));
        reference.push_str(&format!(" WHEN ${} THEN ${}", n + 1, n + 3));
        error.push_str(&format!(" WHEN ${} THEN ${}", n + 1, n + 4));
        values.push(f.id.into());
        values.push(f.status.as_str().into());
        values.push(Value::String(f.reference.clone()));
        values.push(Value::String(f.error.clone()));
    }
    let at = values.len() + 1;
    values.push(now.into());
    let first = values.len() + 1;
    values.extend(finished.iter().map(|f| Value::from(f.id)));
    let sql = format!(
        "UPDATE payment_attempts SET status = CASE id{status} END, \
         reference = COALESCE(CASE id{reference} END, reference), \
         last_error = COALESCE(CASE id{error} END, last_error), updated_at = ${at} \
         WHERE id IN ({})",
        placeholders(first, finished.len())
    );
    stmt(backend, &sql, values)
}
