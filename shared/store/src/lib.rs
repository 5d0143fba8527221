//! A module's own connection pool ([`ModuleDb`]), and the SQL helpers that run one
//! statement on SQLite and PostgreSQL alike: the messaging tables and every module's `db/`
//! layer write their statements once, with PostgreSQL placeholders.

mod rows;

pub use rows::{Rows, insert_rows, insert_rows_together, write_together};

use sea_orm::sea_query::ArrayType;
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr, QueryResult,
    SqliteTransactionMode, Statement, TransactionOptions, TransactionTrait, Value,
};

/// A module's own connection pool. Everything the module stores goes through it.
#[derive(Debug, Clone)]
pub struct ModuleDb {
    module: &'static str,
    conn: DatabaseConnection,
    /// Where write transactions begin, if not on `conn`: on SQLite, a pool of one
    /// connection to the same file (see [`ModuleDb::with_writer`]).
    writer: Option<DatabaseConnection>,
}

impl ModuleDb {
    pub fn new(module: &'static str, conn: DatabaseConnection) -> Self {
        Self {
            module,
            conn,
            writer: None,
        }
    }

    /// Write transactions ([`ModuleDb::begin`]) begin on `writer` rather than on the
    /// pool. On SQLite, a pool of one connection to the same file: a file has one writer
    /// at a time, and writers that each hold a connection of the pool wait for its lock in
    /// SQLite's busy handler, which sleeps 1 to 100 ms between tries, so under load they
    /// spend their time asleep while the lock is free; waiting for the one writer
    /// connection instead, they queue and each goes the moment the last commits. Reads
    /// stay on the pool (WAL readers never wait for the writer).
    pub fn with_writer(mut self, writer: DatabaseConnection) -> Self {
        self.writer = Some(writer);
        self
    }

    pub fn module(&self) -> &'static str {
        self.module
    }

    pub fn conn(&self) -> &DatabaseConnection {
        &self.conn
    }

    /// Where a write outside a transaction goes: the connection write transactions
    /// begin on (see [`ModuleDb::with_writer`]), so that on SQLite every writer queues for
    /// the one write connection rather than for the file's lock.
    pub fn writes(&self) -> &DatabaseConnection {
        self.writer.as_ref().unwrap_or(&self.conn)
    }

    pub fn backend(&self) -> DbBackend {
        self.conn.get_database_backend()
    }

    /// Begins a transaction that will write. On SQLite it takes the write lock at once
    /// (`BEGIN IMMEDIATE`), so two writers queue on the busy timeout instead of failing
    /// when a read lock cannot be upgraded.
    ///
    /// How long that takes is the `db_begin_duration_seconds` histogram: waiting for a
    /// free connection of the pool (on SQLite, for the write connection) shows there first.
    pub async fn begin(&self) -> Result<DatabaseTransaction, DbErr> {
        let started = std::time::Instant::now();
        let tx = begin_write(self.writes()).await;
        metrics::histogram!("db_begin_duration_seconds", "module" => self.module)
            .record(started.elapsed().as_secs_f64());
        tx
    }

    /// A round trip to the database, for readiness.
    pub async fn ping(&self) -> Result<(), DbErr> {
        self.conn.ping().await
    }

    pub async fn close(self) -> Result<(), DbErr> {
        let writer = match self.writer {
            Some(writer) => writer.close().await,
            None => Ok(()),
        };
        self.conn.close().await.and(writer)
    }
}

/// See [`ModuleDb::begin`].
async fn begin_write(conn: &DatabaseConnection) -> Result<DatabaseTransaction, DbErr> {
    conn.begin_with_options(TransactionOptions {
        sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
        ..Default::default()
    })
    .await
}

/// Milliseconds since the epoch: how the messaging tables store time.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// One statement written with PostgreSQL placeholders (`$1`) and clauses, adapted to the
/// backend: SQLite numbers its placeholders `?1` and has no row locks (its write
/// transactions are exclusive), so `FOR UPDATE [SKIP LOCKED]` is dropped. The SQL must
/// not contain `$` anywhere else (no dollar-quoted strings).
pub fn stmt(backend: DbBackend, sql: &str, values: Vec<Value>) -> Statement {
    let sql = match backend {
        DbBackend::Sqlite => sql
            .replace('$', "?")
            .replace(" FOR UPDATE SKIP LOCKED", "")
            .replace(" FOR UPDATE", ""),
        _ => sql.to_owned(),
    };
    Statement::from_sql_and_values(backend, sql, values)
}

/// `$first, $first+1, ...`: `count` placeholders, for an `IN (...)` list.
pub fn placeholders(first: usize, count: usize) -> String {
    (first..first + count)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `values` with the last repeated until there are a power of two of them: the values of an
/// `IN` list, or the rows of an insert that skips conflicting rows, which mean the same
/// statement with their last value repeated. Each batch size is a statement of its own,
/// which every pooled connection prepares and keeps (see `statement_cache_capacity`): padded,
/// a batch of 1 to 500 values is one of ten statements rather than of five hundred, so they
/// stay prepared instead of pushing each other out of the cache and being prepared again.
pub fn padded<T: Clone>(mut values: Vec<T>) -> Vec<T> {
    if let Some(last) = values.last().cloned() {
        values.resize(values.len().next_power_of_two(), last);
    }
    values
}

/// One PostgreSQL array parameter of `values` (of `kind`): the columns of an insert that
/// takes any number of rows in one statement, `INSERT .. SELECT .. FROM unnest($1::uuid[],
/// ..)`, the same statement whatever the row count, so connections keep it prepared where a
/// multi-row `VALUES` list is a statement of its own for each row count. No value may be
/// NULL: the driver binds the array as one of its element type and cannot take a NULL one
/// (send a stand-in and turn it back with `NULLIF`).
pub fn array(kind: ArrayType, values: impl IntoIterator<Item = Value>) -> Value {
    Value::Array(kind, Some(Box::new(values.into_iter().collect())))
}

/// Runs one statement (see [`stmt`]); returns the rows affected.
pub async fn execute(
    conn: &impl ConnectionTrait,
    sql: &str,
    values: Vec<Value>,
) -> Result<u64, DbErr> {
    let backend = conn.get_database_backend();
    conn.execute_raw(stmt(backend, sql, values))
        .await
        .map(|r| r.rows_affected())
}

/// Runs one query (see [`stmt`]).
pub async fn query(
    conn: &impl ConnectionTrait,
    sql: &str,
    values: Vec<Value>,
) -> Result<Vec<QueryResult>, DbErr> {
    let backend = conn.get_database_backend();
    conn.query_all_raw(stmt(backend, sql, values)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_adapt_to_sqlite() {
        let s = stmt(
            DbBackend::Sqlite,
            "SELECT id FROM t WHERE a = $1 AND b IN ($2, $3) FOR UPDATE SKIP LOCKED",
            vec![],
        );
        assert_eq!(s.sql, "SELECT id FROM t WHERE a = ?1 AND b IN (?2, ?3)");
        let locked = stmt(
            DbBackend::Sqlite,
            "SELECT a FROM t ORDER BY a FOR UPDATE",
            vec![],
        );
        assert_eq!(locked.sql, "SELECT a FROM t ORDER BY a");
        let p = stmt(
            DbBackend::Postgres,
            "SELECT $1 FOR UPDATE SKIP LOCKED",
            vec![],
        );
        assert_eq!(p.sql, "SELECT $1 FOR UPDATE SKIP LOCKED");
        assert_eq!(placeholders(3, 3), "$3, $4, $5");
    }

    #[test]
    fn batches_are_padded_to_a_power_of_two_with_their_last_value() {
        assert_eq!(padded(Vec::<i64>::new()), Vec::<i64>::new());
        assert_eq!(padded(vec![7]), vec![7]);
        assert_eq!(padded(vec![1, 2, 3]), vec![1, 2, 3, 3]);
        assert_eq!(padded(vec![1, 2, 3, 4]), vec![1, 2, 3, 4]);
        let shapes: std::collections::BTreeSet<usize> =
            (1..=500).map(|n| padded(vec![0; n]).len()).collect();
        assert_eq!(shapes.len(), 10, "{shapes:?}");
    }
}
