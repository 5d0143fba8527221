//! The retention of a module's messaging tables: published outbox rows and inbox keys
//! past their retention are deleted a chunk at a time, with the module's own tables that
//! expire (its prunes), on a timer.

use std::sync::Arc;
use std::time::Duration;

use sea_orm::DbErr;
use tokio_util::sync::CancellationToken;

use crate::settings::MessagingSettings;
use store::{ModuleDb, execute, now_ms};

/// Deletes published outbox rows and inbox keys older than their retention, a chunk at a
/// time, so the tables stay small and their indexes fast.
pub async fn clean(db: &ModuleDb, settings: &MessagingSettings) -> Result<(u64, u64), DbErr> {
    let now = now_ms();
    let outbox = delete_in_chunks(
        db,
        "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox WHERE published_at IS NOT NULL AND published_at < $1 LIMIT $2)",
        now - (settings.outbox_retention_secs as i64) * 1000,
    )
    .await?;
    let inbox = delete_in_chunks(
        db,
        "DELETE FROM inbox WHERE (event_id, handler) IN (SELECT event_id, handler FROM inbox WHERE processed_at < $1 LIMIT $2)",
        now - (settings.inbox_retention_secs as i64) * 1000,
    )
    .await?;
    Ok((outbox, inbox))
}

/// Runs `sql` (which deletes at most `$2` rows older than `$1`) until it deletes fewer.
async fn delete_in_chunks(db: &ModuleDb, sql: &str, before: i64) -> Result<u64, DbErr> {
    const CHUNK: i64 = 5000;
    let mut total = 0;
    loop {
        let n = execute(db.writes(), sql, vec![before.into(), CHUNK.into()]).await?;
        total += n;
        if n < CHUNK as u64 {
            return Ok(total);
        }
    }
}

/// A module's own table that its cleaner prunes on every pass, beside the outbox and the
/// inbox (checkout's idempotency keys): deletes what outlived its retention, returning how
/// many rows went.
pub type Prune =
    Arc<dyn Fn(ModuleDb) -> futures::future::BoxFuture<'static, Result<u64, DbErr>> + Send + Sync>;

/// Cleans a module's tables every `cleanup_interval_secs` until cancelled: the outbox and
/// inbox, then each of the module's own `prunes` (named by their table).
pub async fn run_cleaner(
    db: ModuleDb,
    settings: MessagingSettings,
    prunes: Vec<(&'static str, Prune)>,
    cancel: CancellationToken,
) {
    let every = Duration::from_secs(settings.cleanup_interval_secs);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(every) => {}
        }
        for (table, prune) in &prunes {
            match prune(db.clone()).await {
                Ok(0) => {}
                Ok(rows) => {
                    tracing::info!(module = db.module(), table, rows, "expired rows deleted");
                }
                Err(e) => {
                    tracing::warn!(module = db.module(), table, error = %e, "deleting expired rows failed")
                }
            }
        }
        match clean(&db, &settings).await {
            Ok((outbox, inbox)) if outbox + inbox > 0 => {
                tracing::info!(
                    module = db.module(),
                    outbox,
                    inbox,
                    "old outbox rows and inbox keys deleted"
                );
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(module = db.module(), error = %e, "cleaning the outbox and inbox failed")
            }
        }
    }
}
