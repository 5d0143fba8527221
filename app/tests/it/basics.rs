//! The monolith as a whole: probes, request ids and logs, the one-role-per-schema rule,
//! graceful shutdown, and how the binary refuses bad settings.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sea_orm::ConnectionTrait;
use testkit::{Backend, Spawn, TestApp, json, on_both_backends};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn monolith(backend: Backend) -> TestApp {
    Spawn::new(backend, app::modules()).start().await
}

on_both_backends!(
    liveness_and_readiness_answer,
    a_request_id_is_echoed_or_made,
    unknown_routes_answer_in_the_error_shape,
    stopping_drains_a_request_in_flight,
);

async fn liveness_and_readiness_answer(backend: Backend) {
    let app = monolith(backend).await;
    let live = app.get("/healthz").await;
    live.expect_status(200);
    assert_eq!(live.body, json!({"status": "ok"}));
    let ready = app.get("/readyz").await;
    ready.expect_status(200);
    assert_eq!(ready.body["status"], "ready");
    for module in ["catalog", "checkout", "fulfillment"] {
        assert_eq!(
            ready.body["checks"][format!("{module}.database")],
            "ok",
            "{}",
            ready.text
        );
    }
}

async fn a_request_id_is_echoed_or_made(backend: Backend) {
    let app = monolith(backend).await;
    let given = app
        .client
        .get(app.url("/healthz"))
        .header("x-request-id", "trace-me-42")
        .send()
        .await
        .expect("reachable");
    assert_eq!(given.headers()["x-request-id"], "trace-me-42");
    let made = app.get("/healthz").await;
    let id = made.header("x-request-id").expect("an id is made");
    assert!(uuid::Uuid::parse_str(id).is_ok(), "{id} is a UUID");
    let hostile = app
        .client
        .get(app.url("/healthz"))
        .header("x-request-id", "x".repeat(300))
        .send()
        .await
        .expect("reachable");
    let replaced = hostile.headers()["x-request-id"].to_str().expect("ascii");
    assert!(
        uuid::Uuid::parse_str(replaced).is_ok(),
        "an oversized id is replaced"
    );
}

async fn unknown_routes_answer_in_the_error_shape(backend: Backend) {
    let app = monolith(backend).await;
    let reply = app.get("/api/nothing/here").await;
    assert_eq!((reply.status, reply.error_code()), (404, "no_route"));
    // Without an operator token configured, the operator endpoints do not exist at all.
    let admin = app.get("/admin/checkout/dead-letters").await;
    assert_eq!((admin.status, admin.error_code()), (404, "no_route"));
}

/// A request whose body is still arriving when the app is told to stop is answered in
/// full before the app exits.
async fn stopping_drains_a_request_in_flight(backend: Backend) {
    let app = monolith(backend).await;
    let address = app.address.trim_start_matches("http://").to_owned();
    let body = serde_json::to_vec(&json!({
        "sku": "SLOW-1", "name": "Slow", "price_minor": 1, "currency": "EUR", "initial_stock": 1
    }))
    .expect("json");
    let mut stream = tokio::net::TcpStream::connect(&address)
        .await
        .expect("connect");
    let head = format!(
        "POST /api/catalog/products HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        app.token(&[testkit::Role::Staff], "staff-1"),
        body.len()
    );
    stream.write_all(head.as_bytes()).await.expect("write head");
    let (first, rest) = body.split_at(10);
    stream.write_all(first).await.expect("write part");
    tokio::time::sleep(Duration::from_millis(200)).await;

    let stopping = tokio::spawn(app.stop());
    tokio::time::sleep(Duration::from_millis(300)).await;
    stream.write_all(rest).await.expect("write the rest");
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .await
        .expect("read the answer");
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .expect("the app stops once drained")
        .expect("the stop task ends");
}

/// On PostgreSQL each module connects as its own role, which can use its own schema and
/// no other: a cross-module query fails with "permission denied", as it would after
/// extraction. Module roles cannot change any schema either; only the owner migrates. Nor
/// can they use schema `public` or make temporary tables, which PostgreSQL allows every
/// role by default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_role_reaches_its_own_schema_only() {
    let app = monolith(Backend::Postgres).await;
    let settings = &app.settings.database;
    // A table in `public` that every role could read were `public` open to it.
    let owner = runtime::db::connect_postgres(
        &settings.postgres,
        &settings.postgres.owner_user,
        None,
        "public",
        1,
    )
    .await
    .expect("the owner connects");
    owner
        .execute_unprepared(
            "CREATE TABLE public.reachable (id int); GRANT SELECT ON public.reachable TO PUBLIC",
        )
        .await
        .expect("the owner creates a table in public");
    owner.close().await.ok();
    let modules = ["catalog", "checkout", "fulfillment"];
    for own in modules {
        let conn = runtime::db::connect_module(settings, leak(own))
            .await
            .expect("the module role connects");
        let role = conn.conn().query_one_raw(sea_orm::Statement::from_string(
            conn.backend(),
            "SELECT current_user::text AS role, current_setting('search_path') AS path",
        ));
        let row = role.await.expect("query").expect("a row");
        assert_eq!(
            row.try_get::<String>("", "role").expect("role"),
            format!("shop_{own}")
        );
        assert_eq!(row.try_get::<String>("", "path").expect("path"), own);

        let mine = format!("SELECT count(*) FROM {own}.seaql_migrations");
        conn.conn()
            .execute_unprepared(&mine)
            .await
            .unwrap_or_else(|e| panic!("{own} reads its own schema: {e}"));
        for other in modules.iter().filter(|m| **m != own) {
            for sql in [
                format!("SELECT count(*) FROM {other}.seaql_migrations"),
                format!("CREATE TABLE {other}.intruder (id int)"),
            ] {
                let error = conn
                    .conn()
                    .execute_unprepared(&sql)
                    .await
                    .expect_err(&format!("{own} must not run: {sql}"));
                assert!(
                    error
                        .to_string()
                        .contains(&format!("permission denied for schema {other}")),
                    "{own} running {sql}: {error}"
                );
            }
        }
        let ddl = conn
            .conn()
            .execute_unprepared(&format!("CREATE TABLE {own}.extra (id int)"))
            .await
            .expect_err("a module role cannot change its schema");
        assert!(ddl.to_string().contains("permission denied"), "{ddl}");
        // Nor anything PostgreSQL gives every role by default: schema `public` and
        // temporary tables.
        let rights = conn.conn().query_one_raw(sea_orm::Statement::from_string(
            conn.backend(),
            "SELECT has_schema_privilege('public', 'USAGE') AS usage, \
                    has_schema_privilege('public', 'CREATE') AS create, \
                    has_database_privilege(current_database(), 'TEMPORARY') AS temp",
        ));
        let rights = rights.await.expect("query").expect("a row");
        for right in ["usage", "create", "temp"] {
            assert!(
                !rights.try_get::<bool>("", right).expect(right),
                "{own} must not have {right} on public or the database"
            );
        }
        for (sql, denied) in [
            (
                "CREATE TABLE public.intruder (id int)",
                "permission denied for schema public",
            ),
            (
                "SELECT count(*) FROM public.reachable",
                "permission denied for schema public",
            ),
            (
                "CREATE TEMP TABLE intruder (id int)",
                "permission denied to create temporary tables",
            ),
        ] {
            let error = conn
                .conn()
                .execute_unprepared(sql)
                .await
                .expect_err(&format!("{own} must not run: {sql}"));
            assert!(
                error.to_string().contains(denied),
                "{own} running {sql}: {error}"
            );
        }
        conn.close().await.ok();
    }
}

fn leak(name: &str) -> &'static str {
    Box::leak(name.to_owned().into_boxed_str())
}

/// On PostgreSQL, readiness fails and names each database once they are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_names_what_failed() {
    let app = monolith(Backend::Postgres).await;
    app.get("/readyz").await.expect_status(200);
    let name = app.db.pg_name().expect("postgres").to_owned();
    let admin = sea_orm::Database::connect("postgres://postgres@127.0.0.1:5432/postgres")
        .await
        .expect("admin");
    admin
        .execute_unprepared(&format!("DROP DATABASE \"{name}\" WITH (FORCE)"))
        .await
        .expect("drop");
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status, 503, "{}", ready.text);
    assert_eq!(ready.body["status"], "unavailable");
    assert_eq!(
        ready.body["failed"],
        json!([
            "catalog.database",
            "checkout.database",
            "fulfillment.database"
        ])
    );
    // Names and states only: the driver's message (which names the database, the role
    // and the server) goes to the log.
    for (check, state) in ready.body["checks"].as_object().expect("checks") {
        let expected = if check.ends_with(".database") {
            "down"
        } else {
            "ok"
        };
        assert_eq!(state, expected, "{check}: {}", ready.text);
    }
    assert!(!ready.text.contains(&name), "{}", ready.text);
    app.get("/healthz").await.expect_status(200);
}

/// Runs the real binary with the repository's settings plus `vars`.
pub(crate) fn binary(vars: &[(&str, &str)]) -> Command {
    configured(Command::new(env!("CARGO_BIN_EXE_app")), vars)
}

/// `command` (the binary, or a shell that execs it) run from the repository with its
/// settings plus `vars`, stdout and stderr piped.
pub(crate) fn configured(mut command: Command, vars: &[(&str, &str)]) -> Command {
    command
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in vars {
        command.env(k, v);
    }
    command
}

/// What a started binary logged: the lines before it listened, the "listening" line, and the
/// rest of its output to read on.
pub(crate) struct Started {
    pub(crate) before: Vec<serde_json::Value>,
    pub(crate) listening: serde_json::Value,
    pub(crate) rest: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

/// Reads the JSON lines `child` writes to its (piped) stdout until it says "listening",
/// within 60 s.
pub(crate) fn until_listening(child: &mut std::process::Child) -> Started {
    let mut rest = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut before = Vec::new();
    for line in rest.by_ref() {
        let record: serde_json::Value =
            serde_json::from_str(&line.expect("a line")).expect("every line is JSON");
        if record["msg"] == "listening" {
            return Started {
                before,
                listening: record,
                rest,
            };
        }
        before.push(record);
        assert!(
            Instant::now() < deadline,
            "the binary did not start in time"
        );
    }
    panic!("the binary ended before it listened: {before:?}");
}

/// Environment variables to set, and what the error message must name.
type SettingsCase<'a> = (&'a [(&'a str, &'a str)], &'a [&'a str]);

#[test]
fn bad_settings_stop_the_binary_with_the_key_named() {
    let cases: &[SettingsCase<'_>] = &[
        (&[("APP__SERVER__PORT", "eighty")], &["server.port"]),
        (
            &[("APP__DATABASE__BACKEND", "oracle")],
            &["database.backend", "sqlite, postgres"],
        ),
        (
            &[("APP__SERVER__SHUTDOWN_TIMEOUT_SECS", "0")],
            &["server.shutdown_timeout_secs"],
        ),
        (
            &[("APP_ENVIRONMENT", "staging")],
            &["staging", "APP_ENVIRONMENT"],
        ),
        (
            &[("APP__MODULES__ENABLED", "catalog,payments")],
            &["payments", "modules.enabled"],
        ),
        (&[("APP_CONFIG_DIR", "/nonexistent")], &["APP_CONFIG_DIR"]),
        // Production sends card tokens over https:// only: an http:// provider URL is
        // refused at start-up, naming the setting that says the network is trusted.
        (
            &[
                ("APP_ENVIRONMENT", "production"),
                ("APP__AUTH__JWKS_FILE", "/etc/shop/jwks.json"),
                ("APP__MODULES__CHECKOUT__PAYMENT__PROVIDER", "http"),
                (
                    "APP__MODULES__CHECKOUT__PAYMENT__URL",
                    "http://pay.internal/v1",
                ),
            ],
            &[
                "modules.checkout.payment.url",
                "https://",
                "APP__MODULES__CHECKOUT__PAYMENT__ALLOW_HTTP",
            ],
        ),
    ];
    for (vars, needles) in cases {
        let output = binary(vars)
            .arg("check-config")
            .output()
            .expect("the binary runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{vars:?} must fail");
        for needle in *needles {
            assert!(
                stderr.contains(needle),
                "{vars:?}: {stderr:?} should name {needle:?}"
            );
        }
    }
}

#[test]
fn a_secret_never_reaches_the_logs() {
    let output = binary(&[
        ("APP__DATABASE__POSTGRES__OWNER_PASSWORD", "hunter2-secret"),
        (
            "APP__OPERATOR__TOKEN",
            "token-secret-5f1c0e9b7a3d42c8a6e1b0f9d8c7a6b5e4d3c2b1a0f9e8d7",
        ),
        (
            "APP__AUTH__HS256_SECRET",
            "hs256-secret-0d9c8b7a6f5e4d3c2b1a0f9e8d7c6b5a",
        ),
    ])
    .arg("check-config")
    .output()
    .expect("the binary runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        !all.contains("hunter2-secret")
            && !all.contains("token-secret")
            && !all.contains("hs256-secret"),
        "{all}"
    );
    assert!(all.contains("REDACTED"), "{all}");
}

/// A misspelt secret variable, or a secret's table given a single value, stops the binary
/// naming the key; the value is not printed.
#[test]
fn a_misnamed_secret_variable_s_value_is_never_printed() {
    let value = "hunter2-7e0c4b1d9a8f6e5d4c3b2a1908f7e6d5";
    for (var, key) in [
        ("APP__AUTH__HS256_SECRETT", "hs256_secrett"),
        ("APP__DATABASE__POSTGRES__ROLE_PASSWORDS", "role_passwords"),
        ("APP__BUS__REDIS", "redis"),
    ] {
        let output = binary(&[(var, value)])
            .arg("check-config")
            .output()
            .expect("the binary runs");
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(!output.status.success(), "{var} must fail: {all}");
        assert!(all.contains(key), "{var}: {all:?} should name {key}");
        assert!(!all.contains("hunter2"), "{var}: {all:?} shows the value");
    }
}

/// The binary serves on SQLite with nothing installed; each log line of a request is JSON
/// and carries the request id and the module, and the request itself is one line.
#[test]
fn the_binary_serves_and_logs_json_with_request_id_and_module() {
    let data = tempfile::tempdir().expect("temp dir");
    let mut child = binary(&[
        ("APP__SERVER__PORT", "0"),
        (
            "APP__DATABASE__SQLITE__DIR",
            data.path().to_str().expect("utf-8 path"),
        ),
    ])
    .spawn()
    .expect("the binary starts");
    let Started {
        listening,
        rest: lines,
        ..
    } = until_listening(&mut child);
    let port = listening["address"]
        .as_str()
        .and_then(|address| address.rsplit(':').next())
        .and_then(|p| p.parse::<u16>().ok())
        .expect("the binary logged its address");

    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let status = runtime.block_on(async {
        module_api::tls::client_builder(None)
            .expect("a client builder")
            .build()
            .expect("a client")
            .get(format!("http://127.0.0.1:{port}/api/catalog/products/NOPE"))
            .header("x-request-id", "log-me-7")
            .send()
            .await
            .expect("reachable")
            .status()
    });
    assert_eq!(status, 404);
    // SIGTERM: the binary drains and exits cleanly.
    let killed = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    assert!(killed.map(|s| s.success()).unwrap_or(false));
    let mut request_lines = Vec::new();
    for line in lines {
        let line = line.expect("a line");
        let record: serde_json::Value = serde_json::from_str(&line).expect("every line is JSON");
        if record["request_id"] == "log-me-7" {
            assert_eq!(record["module"], "catalog", "{line}");
            request_lines.push(record);
        }
    }
    // One line for the request, written when it ends: its status, duration and trace.
    let ends: Vec<_> = request_lines
        .iter()
        .filter(|r| r["msg"] == "[HTTP REQUEST - END]")
        .collect();
    assert_eq!(ends.len(), 1, "one line per request: {request_lines:?}");
    assert_eq!(ends[0]["http.status_code"], 404, "{}", ends[0]);
    assert!(ends[0]["trace_id"].is_string(), "{}", ends[0]);
    assert!(ends[0]["elapsed_milliseconds"].is_u64(), "{}", ends[0]);
    assert!(
        !request_lines
            .iter()
            .any(|r| r["msg"] == "[HTTP REQUEST - START]"),
        "no second line when the request starts: {request_lines:?}"
    );
    let status = child.wait().expect("the binary exits");
    assert!(status.success(), "a clean exit after SIGTERM: {status:?}");
}

/// No foreign key leaves a module's schema: each schema can move to another database on
/// its own (the rule `cargo xtask boundaries` checks in the source, proven on the database).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_foreign_key_crosses_a_schema() {
    let app = monolith(Backend::Postgres).await;
    let name = app.db.pg_name().expect("postgres").to_owned();
    let owner = sea_orm::Database::connect(format!("postgres://postgres@127.0.0.1:5432/{name}"))
        .await
        .expect("owner");
    let rows = owner
        .query_all_raw(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            "SELECT n.nspname::text AS schema, c.conname::text AS name, rn.nspname::text AS target \
             FROM pg_constraint c \
             JOIN pg_class r ON r.oid = c.conrelid JOIN pg_namespace n ON n.oid = r.relnamespace \
             JOIN pg_class t ON t.oid = c.confrelid JOIN pg_namespace rn ON rn.oid = t.relnamespace \
             WHERE c.contype = 'f' AND n.nspname IN ('catalog', 'checkout', 'fulfillment')"
                .to_owned(),
        ))
        .await
        .expect("constraints");
    assert!(
        !rows.is_empty(),
        "the schemas do have foreign keys of their own"
    );
    for row in rows {
        let schema: String = row.try_get("", "schema").expect("schema");
        let target: String = row.try_get("", "target").expect("target");
        let name: String = row.try_get("", "name").expect("name");
        assert_eq!(
            schema, target,
            "foreign key {name} of {schema} points into {target}"
        );
    }
    owner.close().await.ok();
}

/// `app migrate` (what a deploy pipeline runs) creates every module's schema and exits.
#[test]
fn migrate_prepares_every_module_and_exits() {
    let data = tempfile::tempdir().expect("temp dir");
    let output = binary(&[(
        "APP__DATABASE__SQLITE__DIR",
        data.path().to_str().expect("utf-8"),
    )])
    .arg("migrate")
    .output()
    .expect("the binary runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for module in ["catalog", "checkout", "fulfillment"] {
        let file = data.path().join(format!("{module}.db"));
        assert!(file.is_file(), "{module}.db is created");
    }
    let again = binary(&[(
        "APP__DATABASE__SQLITE__DIR",
        data.path().to_str().expect("utf-8"),
    )])
    .arg("migrate")
    .output()
    .expect("the binary runs");
    assert!(again.status.success(), "migrate is idempotent");
}

/// A process that would run checkout alone on the in-process bus refuses to start: the
/// consumers of its events (catalog, fulfillment) run elsewhere, and the in-process bus
/// cannot reach them, so its events would wait for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_refuses_to_run_a_module_whose_consumers_are_elsewhere_on_the_in_process_bus() {
    let Spawn {
        backend,
        modules,
        mut settings,
        hooks,
    } = Spawn::new(
        Backend::Sqlite,
        vec![std::sync::Arc::new(checkout::Checkout)],
    );
    let db = testkit::TestDatabase::create(backend, &mut settings).await;
    let refused = TestApp::start_on(settings, modules, hooks, db)
        .await
        .err()
        .expect("the host refuses to start");
    let chain = format!("{refused:#}");
    assert!(
        chain
            .contains("bus.kind = local needs every consumer of this process's events to run here"),
        "{chain}"
    );
}

/// Fulfillment with its handlers changed after it started: what the host is given is not
/// what `contracts::SUBSCRIPTIONS` says fulfillment consumes.
struct Tampered {
    change: Change,
}

/// What is done to fulfillment's handlers.
type Change = fn(&mut Vec<std::sync::Arc<dyn messaging::Handler>>);

#[async_trait::async_trait]
impl module_api::Module for Tampered {
    fn name(&self) -> &'static str {
        "fulfillment"
    }

    async fn migrate(&self, conn: &sea_orm::DatabaseConnection) -> Result<(), sea_orm::DbErr> {
        fulfillment::Fulfillment.migrate(conn).await
    }

    fn migrations(&self) -> Vec<String> {
        fulfillment::Fulfillment.migrations()
    }

    async fn start(
        &self,
        ctx: module_api::ModuleContext,
    ) -> anyhow::Result<module_api::StartedModule> {
        let mut started = fulfillment::Fulfillment.start(ctx).await?;
        (self.change)(&mut started.handlers);
        Ok(started)
    }
}

/// The host refuses to start a module whose handlers do not cover exactly what the
/// contracts say it consumes (an event type nobody would handle), or that has two handlers
/// under one inbox name (the second would find the first's inbox keys and skip its work).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_refuses_a_module_with_a_subscription_no_handler_takes_or_two_handlers_of_one_name()
 {
    let cases: [(Change, &str); 2] = [
        (
            |handlers| {
                handlers.pop();
            },
            "module fulfillment handles",
        ),
        (
            |handlers| {
                let again = handlers[0].clone();
                handlers.push(again);
            },
            "module fulfillment has two handlers named",
        ),
    ];
    for (change, says) in cases {
        let Spawn {
            backend,
            mut settings,
            hooks,
            ..
        } = Spawn::new(Backend::Sqlite, app::modules());
        let modules: Vec<std::sync::Arc<dyn module_api::Module>> = vec![
            std::sync::Arc::new(catalog::Catalog),
            std::sync::Arc::new(checkout::Checkout),
            std::sync::Arc::new(Tampered { change }),
        ];
        let db = testkit::TestDatabase::create(backend, &mut settings).await;
        let refused = TestApp::start_on(settings, modules, hooks, db)
            .await
            .err()
            .expect("the host refuses to start");
        let chain = format!("{refused:#}");
        assert!(chain.contains(says), "{says:?} not in: {chain}");
    }
}
