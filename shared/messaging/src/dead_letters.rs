//! A module's dead-letter store: events it gave up on, with their raw bytes, the number of
//! deliveries and the last error, kept until an operator replays or discards them.
//!
//! Statuses: `dead` (parked), `replay_requested` (the consumer will run it again),
//! `replayed` (it ran), `discarded` (an operator gave up on it).
//!
//! Every status change names the status it expects to leave, so of an operator's discard
//! and the consumer's replay of one letter exactly one wins: a replay that finds its letter
//! discarded rolls back its work, and a discard that finds it replayed is refused.

use anyhow::Context;
use sea_orm::{ConnectionTrait, DbErr, Value};
use serde::Serialize;
use uuid::Uuid;

use store::{ModuleDb, execute, now_ms, query};

pub(crate) struct NewDeadLetter {
    pub event_id: Option<Uuid>,
    pub event_type: Option<String>,
    pub handlers: String,
    pub raw: Vec<u8>,
    pub attempts: i32,
    pub error: String,
}

pub(crate) async fn record(db: &ModuleDb, letter: NewDeadLetter) -> anyhow::Result<i64> {
    let now = now_ms();
    let rows = query(
        db.writes(),
        "INSERT INTO dead_letters (event_id, event_type, handlers, raw, attempts, last_error, status, first_failed_at, last_failed_at) \
         VALUES ($1, $2, $3, $4, $5, $6, 'dead', $7, $7) RETURNING id",
        vec![
            Value::Uuid(letter.event_id),
            Value::String(letter.event_type),
            letter.handlers.into(),
            letter.raw.into(),
            letter.attempts.into(),
            truncate(&letter.error).into(),
            now.into(),
        ],
    )
    .await
    .context("failed to insert a dead letter")?;
    let row = rows.first().context("the insert returned no id")?;
    Ok(row.try_get("", "id")?)
}

fn truncate(error: &str) -> String {
    error.chars().take(4000).collect()
}

/// One dead letter, as operators see it.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    pub id: i64,
    pub event_id: Option<Uuid>,
    pub event_type: Option<String>,
    pub handlers: String,
    pub attempts: i32,
    pub last_error: String,
    pub status: String,
    pub first_failed_at: i64,
    pub last_failed_at: i64,
    pub resolved_at: Option<i64>,
    /// The bytes as delivered: the envelope as JSON when it was JSON, else lossy UTF-8.
    pub raw: serde_json::Value,
}

const COLUMNS: &str = "id, event_id, event_type, handlers, attempts, last_error, status, first_failed_at, last_failed_at, resolved_at, raw";

fn from_row(row: &sea_orm::QueryResult) -> Result<DeadLetter, DbErr> {
    let raw: Vec<u8> = row.try_get("", "raw")?;
    let raw = serde_json::from_slice(&raw)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&raw).into_owned()));
    Ok(DeadLetter {
        id: row.try_get("", "id")?,
        event_id: row.try_get("", "event_id")?,
        event_type: row.try_get("", "event_type")?,
        handlers: row.try_get("", "handlers")?,
        attempts: row.try_get("", "attempts")?,
        last_error: row.try_get("", "last_error")?,
        status: row.try_get("", "status")?,
        first_failed_at: row.try_get("", "first_failed_at")?,
        last_failed_at: row.try_get("", "last_failed_at")?,
        resolved_at: row.try_get("", "resolved_at")?,
        raw,
    })
}

/// Dead letters with an id above `after`, in id order, optionally of one status.
pub async fn list(
    db: &ModuleDb,
    status: Option<&str>,
    after: Option<i64>,
    limit: u64,
) -> Result<Vec<DeadLetter>, DbErr> {
    let sql = format!(
        "SELECT {COLUMNS} FROM dead_letters WHERE id > $1 AND ($2 = '' OR status = $2) ORDER BY id LIMIT $3"
    );
    let rows = query(
        db.conn(),
        &sql,
        vec![
            after.unwrap_or(0).into(),
            status.unwrap_or("").into(),
            (limit as i64).into(),
        ],
    )
    .await?;
    rows.iter().map(from_row).collect()
}

pub async fn get(db: &ModuleDb, id: i64) -> Result<Option<DeadLetter>, DbErr> {
    let sql = format!("SELECT {COLUMNS} FROM dead_letters WHERE id = $1");
    let rows = query(db.conn(), &sql, vec![id.into()]).await?;
    rows.first().map(from_row).transpose()
}

/// What an operator's request did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Done,
    NotFound,
    /// The letter is not in a status this change applies to.
    WrongStatus,
}

async fn change(
    db: &ModuleDb,
    id: i64,
    to: &str,
    from: &[&str],
    resolved: bool,
) -> Result<Change, DbErr> {
    let from_list = from
        .iter()
        .map(|s| format!("'{s}'"))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "UPDATE dead_letters SET status = $1, resolved_at = $2 WHERE id = $3 AND status IN ({from_list})"
    );
    let resolved_at: Value = if resolved {
        now_ms().into()
    } else {
        Value::BigInt(None)
    };
    let tx = db.begin().await?;
    let n = execute(&tx, &sql, vec![to.into(), resolved_at, id.into()]).await?;
    tx.commit().await?;
    if n == 1 {
        return Ok(Change::Done);
    }
    Ok(if get(db, id).await?.is_some() {
        Change::WrongStatus
    } else {
        Change::NotFound
    })
}

/// Asks the module's consumer to run a dead letter again.
pub async fn request_replay(db: &ModuleDb, id: i64) -> Result<Change, DbErr> {
    change(db, id, "replay_requested", &["dead"], false).await
}

/// Gives up on a dead letter for good.
pub async fn discard(db: &ModuleDb, id: i64) -> Result<Change, DbErr> {
    change(db, id, "discarded", &["dead", "replay_requested"], true).await
}

pub(crate) async fn requested(db: &ModuleDb, limit: i64) -> Result<Vec<(i64, Vec<u8>)>, DbErr> {
    let rows = query(
        db.conn(),
        "SELECT id, raw FROM dead_letters WHERE status = 'replay_requested' ORDER BY id LIMIT $1",
        vec![limit.into()],
    )
    .await?;
    rows.iter()
        .map(|r| Ok((r.try_get("", "id")?, r.try_get("", "raw")?)))
        .collect()
}

/// Marks a letter replayed, inside the replay's transaction. Fails, so that the replay's
/// work rolls back, when the letter no longer waits for its replay (an operator discarded
/// it meanwhile).
pub(crate) async fn mark_replayed(tx: &impl ConnectionTrait, id: i64) -> Result<(), DbErr> {
    let n = execute(
        tx,
        "UPDATE dead_letters SET status = 'replayed', resolved_at = $1 WHERE id = $2 AND status = 'replay_requested'",
        vec![now_ms().into(), id.into()],
    )
    .await?;
    if n == 0 {
        return Err(DbErr::Custom(format!(
            "dead letter {id} no longer waits for a replay (discarded meanwhile); its replay is undone"
        )));
    }
    Ok(())
}

/// Puts a letter whose replay failed back to `dead`, unless an operator settled it
/// meanwhile.
pub(crate) async fn replay_failed(db: &ModuleDb, id: i64, error: &str) -> Result<(), DbErr> {
    execute(
        db.writes(),
        "UPDATE dead_letters SET status = 'dead', attempts = attempts + 1, last_error = $1, last_failed_at = $2 \
         WHERE id = $3 AND status = 'replay_requested'",
        vec![truncate(error).into(), now_ms().into(), id.into()],
    )
    .await
    .map(|_| ())
}
