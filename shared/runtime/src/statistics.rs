//! Planner statistics for tables that outgrew theirs (PostgreSQL).
//!
//! PostgreSQL plans each statement from what its statistics say of the tables it reads.
//! Autovacuum refreshes them, but it visits a database once a minute at most
//! (`autovacuum_naptime`), and a fresh database taking a burst of orders outgrows them in
//! seconds. Two plans then scan whole tables for every batch, at a cost that grows with
//! the table: with no statistics, an `IN` list of a hundred ids over a column that is not
//! unique (order lines by order) is taken to match most rows; and a prepared statement
//! that PostgreSQL chose to plan once for all values while its table was nearly empty
//! keeps that plan until the table's statistics change. Measured in the payment-outage
//! soak (BENCHMARKS.md, "Twelfth session"): checkout's consumer took 50–100 ms to read a
//! batch of orders, fell behind the placements, and catalog's unpublished events grew at
//! the placement rate.
//!
//! So every module on PostgreSQL checks its tables every
//! `database.postgres.refresh_statistics_ms` and analyzes those holding at least
//! [`LEAST_ROWS`] rows and at least twice what their statistics say: a growing table is
//! analyzed at every doubling, a few times in its life, and a table that autovacuum keeps
//! up with never is. Analyzing replaces the statistics and drops the plans made from the
//! old ones. The module's role may not analyze tables it does not own (the owner role
//! does), so the owner gives each schema [`FUNCTION`], which analyzes that schema's
//! tables and nothing else, and lets the module's role run it.

use std::time::Duration;

use sea_orm::{DbBackend, DbErr};
use store::{ModuleDb, query};
use tokio_util::sync::CancellationToken;

/// The function each module's schema holds (PostgreSQL).
pub const FUNCTION: &str = "refresh_statistics";

/// Tables smaller than this are never analyzed here: a whole scan of them costs little
/// (and for a batch of a hundred ids the planner prefers one below a few tens of thousands
/// of rows anyway), and a queue such as the outbox, which fills and empties by the
/// thousand, would be analyzed at every burst.
pub const LEAST_ROWS: i64 = 10_000;

/// The statistics target of these analyses: a sample of 300 rows per unit, 3,000 in all,
/// where PostgreSQL's default (100) takes 30,000. It tells the planner how large a table is
/// and roughly how many distinct values its columns hold, which is what these plans went
/// wrong on, at a quarter to a fifth of the cost (measured on 100,000 orders and 200,000 lines: 7.5 ms
/// each, against 39 and 29 ms); autovacuum's own analyses, which come later, take the
/// full sample.
const SAMPLE: u32 = 10;

/// The statements that give `schema` its [`FUNCTION`], run by the owner when it prepares
/// the schema: it runs as the owner (`SECURITY DEFINER`, with a fixed `search_path`),
/// analyzes only that schema's tables (`SKIP_LOCKED`: one that autovacuum is analyzing is
/// left to it) with a sample of [`SAMPLE`], and only `role` may run it. `schema` and
/// `role` are quoted identifiers.
pub(crate) fn provision(schema: &str, role: &str) -> [String; 3] {
    // The schema's name as a string, for the catalog query and format().
    let name = schema.trim_matches('"').replace('\'', "''");
    [
        format!(
            "CREATE OR REPLACE FUNCTION {schema}.{FUNCTION}(least_rows bigint) \
             RETURNS TABLE (table_name text, planned_rows real, live_rows bigint) \
             LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp \
             SET default_statistics_target = {SAMPLE} AS $f$ \
             BEGIN \
               FOR table_name, planned_rows, live_rows IN \
                 SELECT s.relname, c.reltuples, s.n_live_tup \
                 FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid \
                 WHERE s.schemaname = '{name}' AND s.n_live_tup >= least_rows \
                   AND s.n_live_tup >= 2 * c.reltuples \
               LOOP \
                 EXECUTE format('ANALYZE (SKIP_LOCKED) %I.%I', '{name}', table_name); \
                 RETURN NEXT; \
               END LOOP; \
             END $f$"
        ),
        format!("REVOKE ALL ON FUNCTION {schema}.{FUNCTION}(bigint) FROM PUBLIC"),
        format!("GRANT EXECUTE ON FUNCTION {schema}.{FUNCTION}(bigint) TO {role}"),
    ]
}

/// A table whose statistics were refreshed: the rows they said it had (-1: none yet),
/// and the rows it had.
#[derive(Debug, Clone, PartialEq)]
pub struct Refreshed {
    pub table: String,
    pub planned_rows: f32,
    pub live_rows: i64,
}

/// Analyzes the module's tables that outgrew their statistics; nothing on SQLite (its
/// planner keeps no statistics unless asked to).
pub async fn refresh(db: &ModuleDb) -> Result<Vec<Refreshed>, DbErr> {
    if db.backend() != DbBackend::Postgres {
        return Ok(Vec::new());
    }
    let rows = query(
        db.conn(),
        &format!("SELECT table_name, planned_rows, live_rows FROM {FUNCTION}($1)"),
        vec![LEAST_ROWS.into()],
    )
    .await?;
    rows.iter()
        .map(|row| {
            Ok(Refreshed {
                table: row.try_get("", "table_name")?,
                planned_rows: row.try_get("", "planned_rows")?,
                live_rows: row.try_get("", "live_rows")?,
            })
        })
        .collect()
}

/// Refreshes every module's statistics every `every` until cancelled. A module's refreshes
/// that start failing are logged once as a warning, and once more when they work again (a
/// database down for a while would otherwise log a warning every pass).
pub(crate) async fn keep(dbs: Vec<ModuleDb>, every: Duration, cancel: CancellationToken) {
    let dbs: Vec<ModuleDb> = dbs
        .into_iter()
        .filter(|db| db.backend() == DbBackend::Postgres)
        .collect();
    if dbs.is_empty() || every.is_zero() {
        return;
    }
    let mut failing = vec![false; dbs.len()];
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(every) => {}
        }
        for (db, failing) in dbs.iter().zip(failing.iter_mut()) {
            match refresh(db).await {
                Ok(tables) => {
                    if std::mem::take(failing) {
                        tracing::info!(
                            module = db.module(),
                            "refreshing table statistics works again"
                        );
                    }
                    for t in tables {
                        metrics::counter!("db_statistics_refreshed_total", "module" => db.module())
                            .increment(1);
                        tracing::info!(
                            module = db.module(),
                            table = %t.table,
                            planned_rows = t.planned_rows,
                            live_rows = t.live_rows,
                            "table statistics refreshed: the table outgrew them"
                        );
                    }
                }
                Err(e) if !*failing => {
                    *failing = true;
                    tracing::warn!(module = db.module(), error = %e, "refreshing table statistics failed; retrying every pass, quietly until it works again")
                }
                Err(e) => {
                    tracing::debug!(module = db.module(), error = %e, "refreshing table statistics failed")
                }
            }
        }
    }
}
