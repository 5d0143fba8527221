//! Inserting many rows in one statement on either backend, given column by column.
//!
//! On PostgreSQL the columns go as arrays, `INSERT .. SELECT .. FROM unnest($1::uuid[], ..)`:
//! one statement for any number of rows, which every pooled connection prepares once and
//! keeps, where a multi-row `VALUES` list is a statement of its own for each row count and
//! is parsed and planned again whenever the connection's cache let it go. On SQLite, where
//! preparing costs no round trip, a multi-row `VALUES` per chunk of rows. Rows are inserted
//! in the order given on both (an outbox's ids follow it).

use sea_orm::sea_query::ArrayType;
use sea_orm::{ConnectionTrait, DbBackend, DbErr, QueryResult, Statement, Value};

use crate::{array, query};

/// The most rows one SQLite statement inserts (its limit is 32,766 bound values).
const SQLITE_ROWS: usize = 500;

/// Rows to insert, column by column: every column holds one value per row.
#[derive(Debug, Default)]
pub struct Rows {
    columns: Vec<Column>,
}

#[derive(Debug)]
struct Column {
    name: &'static str,
    kind: ArrayType,
    values: Vec<Value>,
    /// A text column whose `None` is NULL (see [`Rows::text_or_null`]).
    empty_is_null: bool,
}

impl Rows {
    pub fn new() -> Self {
        Self::default()
    }

    /// A column: its name, the type of its values (of `kind`), one per row. No value may be
    /// NULL (a PostgreSQL array parameter cannot hold one): a text column that may be NULL
    /// is [`Rows::text_or_null`].
    pub fn column(
        mut self,
        name: &'static str,
        kind: ArrayType,
        values: impl IntoIterator<Item = Value>,
    ) -> Self {
        self.columns.push(Column {
            name,
            kind,
            values: values.into_iter().collect(),
            empty_is_null: false,
        });
        self
    }

    /// A text column that may be NULL: on PostgreSQL a `None` goes as `''` and is stored as
    /// NULL, so an empty string cannot be stored in it.
    pub fn text_or_null(
        mut self,
        name: &'static str,
        values: impl IntoIterator<Item = Option<String>>,
    ) -> Self {
        self.columns.push(Column {
            name,
            kind: ArrayType::String,
            values: values.into_iter().map(Value::String).collect(),
            empty_is_null: true,
        });
        self
    }

    fn len(&self) -> usize {
        self.columns.first().map_or(0, |c| c.values.len())
    }

    /// An error unless every column holds one value per row.
    fn check(&self, table: &str) -> Result<(), DbErr> {
        let len = self.len();
        match self.columns.iter().find(|c| c.values.len() != len) {
            Some(c) => Err(DbErr::Custom(format!(
                "column {} of an insert into {table} has {} values for {len} rows",
                c.name,
                c.values.len()
            ))),
            None => Ok(()),
        }
    }

    fn names(&self) -> String {
        self.columns
            .iter()
            .map(|c| c.name)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Inserts each of `inserts` (a table and its rows, in the order given) in one round trip
/// on PostgreSQL: one statement, the inserts but the last in data-modifying `WITH` clauses
/// (a foreign key from a later table to an earlier one is checked at the end of the
/// statement, when both are written). On SQLite, where a statement costs no round trip,
/// [`insert_rows`] for each in turn. A table with no rows is left out.
pub async fn insert_rows_together(
    conn: &impl ConnectionTrait,
    inserts: Vec<(&str, Rows)>,
) -> Result<(), DbErr> {
    write_together(conn, Vec::new(), inserts).await
}

/// Runs `changes` (complete statements that change rows and return nothing the caller
/// reads, in the order given), then the inserts of [`insert_rows_together`]: on
/// PostgreSQL all in one statement and one round trip, each change a data-modifying `WITH`
/// clause of it, its parameters numbered after those of the clauses before. Every clause
/// runs to completion against the same snapshot, so no clause sees what another wrote: the
/// changes must touch rows no other clause touches. A change numbers its parameters from
/// `$1` and holds no `$` but in them (no literal or dollar quote). On SQLite, one statement
/// after the other.
pub async fn write_together(
    conn: &impl ConnectionTrait,
    changes: Vec<Statement>,
    inserts: Vec<(&str, Rows)>,
) -> Result<(), DbErr> {
    let inserts: Vec<(&str, Rows)> = inserts.into_iter().filter(|(_, r)| r.len() > 0).collect();
    for (table, rows) in &inserts {
        rows.check(table)?;
    }
    if conn.get_database_backend() != DbBackend::Postgres || changes.len() + inserts.len() < 2 {
        for change in changes {
            conn.execute_raw(change).await?;
        }
        for (table, rows) in inserts {
            insert_rows(conn, table, rows, "").await?;
        }
        return Ok(());
    }
    let mut values = Vec::new();
    let mut clauses = Vec::with_capacity(changes.len() + inserts.len());
    for change in changes {
        clauses.push(renumbered(&change.sql, values.len()));
        values.extend(change.values.map(|v| v.0).unwrap_or_default());
    }
    for (table, rows) in inserts {
        clauses.push(unnest_insert(table, rows, &mut values)?);
    }
    let last = clauses.pop().unwrap_or_default();
    let with = clauses
        .iter()
        .enumerate()
        .map(|(i, clause)| format!("w{i} AS ({clause})"))
        .collect::<Vec<_>>()
        .join(", ");
    query(conn, &format!("WITH {with} {last}"), values).await?;
    Ok(())
}

/// `sql` with each placeholder `$n` made `$(n + offset)`.
fn renumbered(sql: &str, offset: usize) -> String {
    if offset == 0 {
        return sql.to_owned();
    }
    let mut out = String::with_capacity(sql.len() + 16);
    let mut rest = sql;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..=at]);
        rest = &rest[at + 1..];
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if let Ok(n) = rest[..digits].parse::<usize>() {
            out.push_str(&(n + offset).to_string());
            rest = &rest[digits..];
        }
    }
    out.push_str(rest);
    out
}

/// `INSERT INTO table (..) SELECT .. FROM unnest(..)` on PostgreSQL, its arrays appended
/// to `values` (numbered after those already there).
fn unnest_insert(table: &str, rows: Rows, values: &mut Vec<Value>) -> Result<String, DbErr> {
    let names = rows.names();
    let mut arrays = Vec::with_capacity(rows.columns.len());
    let mut selected = Vec::with_capacity(rows.columns.len());
    let mut aliases = Vec::with_capacity(rows.columns.len());
    for (i, column) in rows.columns.into_iter().enumerate() {
        let n = i + 1;
        let param = values.len() + 1;
        arrays.push(format!("${param}::{}[]", pg_type(&column.kind, table)?));
        aliases.push(format!("c{n}"));
        if column.empty_is_null {
            selected.push(format!("NULLIF(c{n}, '')"));
        } else {
            selected.push(format!("c{n}"));
        }
        let items = column.values.into_iter().map(|v| match v {
            Value::String(None) if column.empty_is_null => Value::from(""),
            v => v,
        });
        values.push(array(column.kind, items));
    }
    Ok(format!(
        "INSERT INTO {table} ({names}) SELECT {} FROM unnest({}) \
         WITH ORDINALITY AS u({}, n) ORDER BY n",
        selected.join(", "),
        arrays.join(", "),
        aliases.join(", "),
    ))
}

/// Inserts `rows` into `table`, followed by `tail` (such as `ON CONFLICT (order_id) DO
/// NOTHING RETURNING id`, which both backends take); returns the rows the statements
/// returned. Nothing is run for no rows.
pub async fn insert_rows(
    conn: &impl ConnectionTrait,
    table: &str,
    rows: Rows,
    tail: &str,
) -> Result<Vec<QueryResult>, DbErr> {
    let len = rows.len();
    if len == 0 {
        return Ok(Vec::new());
    }
    rows.check(table)?;
    let names = rows.names();
    if conn.get_database_backend() == DbBackend::Postgres {
        let mut values = Vec::with_capacity(rows.columns.len());
        let sql = format!("{} {tail}", unnest_insert(table, rows, &mut values)?);
        return query(conn, sql.trim_end(), values).await;
    }
    let width = rows.columns.len();
    let mut columns: Vec<_> = rows
        .columns
        .into_iter()
        .map(|c| c.values.into_iter())
        .collect();
    let mut returned = Vec::new();
    let mut left = len;
    while left > 0 {
        let count = left.min(SQLITE_ROWS);
        let mut values = Vec::with_capacity(count * width);
        let mut tuples = Vec::with_capacity(count);
        for _ in 0..count {
            tuples.push(format!(
                "({})",
                crate::placeholders(values.len() + 1, width)
            ));
            values.extend(columns.iter_mut().filter_map(Iterator::next));
        }
        let sql = format!(
            "INSERT INTO {table} ({names}) VALUES {} {tail}",
            tuples.join(", ")
        );
        returned.extend(query(conn, sql.trim_end(), values).await?);
        left -= count;
    }
    Ok(returned)
}

/// PostgreSQL's name of an array's element type.
fn pg_type(kind: &ArrayType, table: &str) -> Result<&'static str, DbErr> {
    Ok(match kind {
        ArrayType::Uuid => "uuid",
        ArrayType::String => "text",
        ArrayType::BigInt => "int8",
        ArrayType::Int => "int4",
        ArrayType::ChronoDateTimeUtc => "timestamptz",
        other => {
            return Err(DbErr::Custom(format!(
                "an insert into {table} has a column of {other:?}, which rows do not take yet"
            )));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::renumbered;

    #[test]
    fn placeholders_are_numbered_after_the_ones_before() {
        assert_eq!(
            renumbered(
                "UPDATE t SET a = $1, b = $2::text[] WHERE id IN ($10, $3)",
                4
            ),
            "UPDATE t SET a = $5, b = $6::text[] WHERE id IN ($14, $7)"
        );
        assert_eq!(renumbered("SELECT $1", 0), "SELECT $1");
        assert_eq!(renumbered("no placeholder", 3), "no placeholder");
        assert_eq!(renumbered("ends with $", 3), "ends with $");
    }
}
