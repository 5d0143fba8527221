//! On PostgreSQL, a module analyzes its tables once they outgrow their planner statistics,
//! so that its batch reads go through their indexes from the first minutes of a fresh
//! database on, not only once autovacuum comes by (once a minute at most).

use sea_orm::{ConnectionTrait, DatabaseConnection, TransactionTrait};
use testkit::metrics::{parse, value};
use testkit::{Backend, Spawn, eventually};

/// What checkout's consumer reads for a batch of catalog's answers: the lines of 128
/// orders (the ids of the first 128 orders below).
fn lines_of_a_batch() -> String {
    let ids: Vec<String> = (1..=128).map(|i| format!("'{}'", order_id(i))).collect();
    format!(
        "EXPLAIN SELECT order_id, line_no, sku, quantity, unit_price_minor FROM order_lines \
         WHERE order_id IN ({}) ORDER BY order_id, line_no",
        ids.join(", ")
    )
}

/// The ids of the orders written below: this, then the order's number in 12 digits.
const IDS: &str = "00000000-0000-4000-8000-";

fn order_id(i: u32) -> String {
    format!("{IDS}{i:012}")
}

async fn plan(conn: &impl ConnectionTrait) -> String {
    let rows = conn
        .query_all_raw(sea_orm::Statement::from_string(
            conn.get_database_backend(),
            lines_of_a_batch(),
        ))
        .await
        .expect("explain");
    rows.iter()
        .map(|r| r.try_get_by_index::<String>(0).expect("a plan line"))
        .collect::<Vec<_>>()
        .join("\n")
}

async fn planned_rows(conn: &DatabaseConnection, table: &str) -> f32 {
    let row = conn
        .query_one_raw(sea_orm::Statement::from_string(
            conn.get_database_backend(),
            format!("SELECT reltuples FROM pg_class WHERE oid = '{table}'::regclass"),
        ))
        .await
        .expect("pg_class")
        .expect("the table");
    row.try_get_by_index(0).expect("reltuples")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_lines_that_outgrew_their_statistics_are_analyzed_and_read_through_their_index() {
    let app = Spawn::new(Backend::Postgres, app::modules())
        .configure(|s| s.database.postgres.refresh_statistics_ms = 100)
        .start()
        .await;
    let db = runtime::db::connect_module(&app.settings.database, "checkout")
        .await
        .expect("checkout's pool");
    let conn = db.conn();

    // A burst of orders, written as checkout's own role writes them: 40,000 orders of two
    // lines each, in tables that have no statistics yet.
    let tx = conn.begin().await.expect("begin");
    tx.execute_unprepared(&format!(
        "INSERT INTO orders (id, status, customer_email, shipping_address, payment_token, \
         currency, total_minor, created_at, updated_at) \
         SELECT ('{IDS}' || lpad(i::text, 12, '0'))::uuid, 'pending', 'a@example.com', \
         '{{}}', 'tok_ok', 'EUR', 1000, now(), now() FROM generate_series(1, 40000) i"
    ))
    .await
    .expect("orders");
    tx.execute_unprepared(
        "INSERT INTO order_lines (order_id, line_no, sku, quantity, unit_price_minor) \
         SELECT o.id, n, 'SKU-1', 1, 500 FROM orders o, generate_series(1, 2) n",
    )
    .await
    .expect("order lines");
    // Without statistics, 128 ids are taken to match most of the table.
    let before = plan(&tx).await;
    assert!(before.contains("Seq Scan on order_lines"), "{before}");
    // Counted at once rather than within the second PostgreSQL takes to report them.
    tx.execute_unprepared("SELECT pg_stat_force_next_flush()")
        .await
        .expect("flush the counts");
    tx.commit().await.expect("commit");

    // The module analyzes both tables on its own, and the batch's lines are read through
    // the primary key.
    eventually(30, "checkout to analyze order_lines", || async {
        (planned_rows(conn, "order_lines").await >= 80_000.0).then_some(())
    })
    .await;
    let after = plan(conn).await;
    assert!(
        after.contains("order_lines_pkey") && !after.contains("Seq Scan"),
        "{after}"
    );
    eventually(10, "the refreshes counted in /metrics", || async {
        let samples = parse(&app.scrape().await.text);
        value(
            &samples,
            "db_statistics_refreshed_total",
            &[("module", "checkout")],
        )
        .filter(|n| *n >= 2.0)
    })
    .await;

    // Done: the tables hold what their statistics say, and nothing is analyzed again.
    let again = runtime::statistics::refresh(&db)
        .await
        .expect("refresh again");
    assert!(again.is_empty(), "{again:?}");
    db.close().await.ok();
    app.stop().await;
}
