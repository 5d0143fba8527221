//! The inbox: one key per (event id, handler) a module processed, written in the
//! transaction of the handler's work, so an event delivered again finds its keys and runs
//! no handler twice.

use std::collections::HashSet;

use anyhow::Context;
use sea_orm::{DatabaseTransaction, Value};
use uuid::Uuid;

use super::engine::Ready;
use super::handler::HandlerError;
use sea_orm::sea_query::ArrayType;
use store::{ModuleDb, Rows, insert_rows, now_ms, query};

/// Inserts the inbox keys of `items`; returns those that were new (the others were
/// processed before and are skipped).
pub(super) async fn claim_inbox_keys(
    tx: &DatabaseTransaction,
    items: &[Ready],
) -> Result<HashSet<(Uuid, &'static str)>, HandlerError> {
    let now = now_ms();
    let keys: Vec<(Uuid, &'static str)> = items
        .iter()
        .flat_map(|i| i.handlers.iter().map(|h| (i.envelope.id, h.name())))
        .collect();
    if keys.is_empty() {
        // No handler takes these events (a replayed letter whose handler is gone).
        return Ok(HashSet::new());
    }
    // One statement of one shape for any batch on PostgreSQL (see `store::insert_rows`).
    let rows = Rows::new()
        .column(
            "event_id",
            ArrayType::Uuid,
            keys.iter().map(|(id, _)| Value::from(*id)),
        )
        .column(
            "handler",
            ArrayType::String,
            keys.iter().map(|(_, handler)| Value::from(*handler)),
        )
        .column(
            "processed_at",
            ArrayType::BigInt,
            keys.iter().map(|_| Value::from(now)),
        );
    let inserted = insert_rows(
        tx,
        "inbox",
        rows,
        "ON CONFLICT (event_id, handler) DO NOTHING RETURNING event_id, handler",
    )
    .await
    .context("failed to record inbox keys")?;
    let names: Vec<&'static str> = items
        .iter()
        .flat_map(|i| i.handlers.iter().map(|h| h.name()))
        .collect();
    let mut fresh = HashSet::with_capacity(inserted.len());
    for row in inserted {
        let id: Uuid = row.try_get("", "event_id")?;
        let handler: String = row.try_get("", "handler")?;
        if let Some(name) = names.iter().find(|n| **n == handler) {
            fresh.insert((id, *name));
        }
    }
    Ok(fresh)
}

/// True when every handler of `item` already has its inbox key: the event was processed
/// and only its acknowledgement was lost.
pub(super) async fn already_processed(db: &ModuleDb, item: &Ready) -> anyhow::Result<bool> {
    let mut values: Vec<Value> = vec![item.envelope.id.into()];
    values.extend(item.handlers.iter().map(|h| Value::from(h.name())));
    let sql = format!(
        "SELECT COUNT(*) AS n FROM inbox WHERE event_id = $1 AND handler IN ({})",
        store::placeholders(2, item.handlers.len())
    );
    let rows = query(db.conn(), &sql, values).await?;
    let n: i64 = match rows.first() {
        Some(row) => row.try_get("", "n")?,
        None => 0,
    };
    Ok(n as usize == item.handlers.len())
}
