//! A fault of ours answers 500 with a body that says nothing of its cause: the code
//! `internal`, a generic message, and the request id in `X-Request-Id`; the chain of causes
//! goes to the log line of that request id. A binary of its own: it installs the process's
//! log subscriber, which every test of a binary would share.

use std::sync::{Arc, Mutex, OnceLock};

use sea_orm::ConnectionTrait;
use testkit::{Backend, Spawn, TestApp, json, on_both_backends};

/// The log lines, as the app writes them.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("not poisoned").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The lines logged so far by every test of this binary (the subscriber is installed once).
fn logs() -> &'static Logs {
    static LOGS: OnceLock<Logs> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Logs::default();
        let sink = logs.clone();
        let subscriber =
            runtime::telemetry::subscriber("shop".into(), "info", move || sink.clone());
        runtime::telemetry::init(subscriber).expect("the only subscriber of this binary");
        logs
    })
}

/// Takes catalog's `products` table away under the running app, as its owner would.
async fn break_products(app: &TestApp) {
    let (conn, sql) = match app.db.backend {
        Backend::Sqlite => (
            runtime::db::connect_module(&app.settings.database, "catalog")
                .await
                .expect("open catalog's file")
                .conn()
                .clone(),
            "ALTER TABLE products RENAME TO products_gone",
        ),
        Backend::Postgres => {
            let pg = &app.settings.database.postgres;
            (
                sea_orm::Database::connect(format!(
                    "postgres://{}@{}:{}/{}",
                    pg.owner_user, pg.host, pg.port, pg.database
                ))
                .await
                .expect("connect as the owner"),
                "ALTER TABLE catalog.products RENAME TO products_gone",
            )
        }
    };
    conn.execute_unprepared(sql).await.expect("rename");
    conn.close().await.ok();
}

async fn a_5xx_body_never_shows_its_cause_which_goes_to_the_log_under_the_request_id(
    backend: Backend,
) {
    let logs = logs();
    let app = Spawn::new(backend, app::modules()).start().await;
    app.get("/api/catalog/products").await.expect_status(200);
    break_products(&app).await;
    let request_id = format!("fault-{}", uuid::Uuid::new_v4().simple());
    let reply = testkit::read(
        app.client
            .get(app.url("/api/catalog/products"))
            .header("x-request-id", &request_id)
            .send()
            .await,
    )
    .await;
    reply.expect_status(500);
    assert_eq!(
        reply.body,
        json!({"error": {"code": "internal", "message": "an internal error occurred; it has been logged"}}),
        "the body is generic"
    );
    for word in ["products", "relation", "table", "sql", "database"] {
        assert!(
            !reply.text.to_lowercase().contains(word),
            "the body names {word:?}: {}",
            reply.text
        );
    }
    assert_eq!(reply.header("x-request-id"), Some(request_id.as_str()));

    let text = String::from_utf8(logs.0.lock().expect("not poisoned").clone()).expect("utf-8");
    let lines: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|l: &serde_json::Value| l["request_id"] == request_id.as_str())
        .collect();
    let failure = lines
        .iter()
        .find(|l| {
            l["msg"]
                .as_str()
                .is_some_and(|m| m.contains("request failed"))
        })
        .unwrap_or_else(|| panic!("no failure line under {request_id}: {lines:#?}"));
    assert_eq!(failure["level"], 50, "logged at ERROR: {failure}");
    let chain = failure["error.cause_chain"].as_str().unwrap_or_default();
    assert!(
        chain.contains("products"),
        "the log line carries the cause: {failure}"
    );
    app.stop().await;
}

on_both_backends!(a_5xx_body_never_shows_its_cause_which_goes_to_the_log_under_the_request_id);
