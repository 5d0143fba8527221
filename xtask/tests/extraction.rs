//! `cargo xtask extract` / `inline` / `move-data`, run for real in scratch copies of the
//! workspace (git repositories of their own), built, and run against PostgreSQL and Redis.
//!
//! Scratch builds use their own target folder (beside the main one) so they never
//! overwrite the binaries other tests run.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .to_path_buf()
}

fn scratch_target() -> PathBuf {
    let main = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root().join("target"));
    main.join("scratch")
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// A copy of the workspace's files (tracked and new, not ignored), committed in a git
/// repository of its own.
struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Self {
        let dir = xtask::scratch::copy_workspace(&root()).expect("a scratch copy");
        let scratch = Self { dir };
        scratch.git(&["init", "-q"]);
        scratch.git(&["add", "-A"]);
        scratch.git(&[
            "-c",
            "user.name=test",
            "-c",
            "user.email=test@test",
            "commit",
            "-qm",
            "base",
        ]);
        scratch
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn git(&self, args: &[&str]) -> String {
        let out = Command::new("git")
            .current_dir(self.path())
            .args(args)
            .output()
            .expect("git");
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn status(&self) -> String {
        self.git(&["status", "--porcelain"])
    }

    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        command
            .current_dir(self.path())
            .env("CARGO_TARGET_DIR", scratch_target())
            .env("CARGO_INCREMENTAL", "0")
            .env("RUST_BACKTRACE", "0")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null());
        command
    }

    /// `cargo xtask <args>` in the copy, with extra environment variables: the xtask
    /// binary this test was built with (the copy's sources are the same, and xtask works
    /// on the workspace it is started in), so that no copy builds xtask again.
    fn xtask(&self, args: &[&str], vars: &[(&str, &str)]) -> Output {
        let mut command = self.command(env!("CARGO_BIN_EXE_xtask"));
        command.args(args);
        for (k, v) in vars {
            command.env(k, v);
        }
        command.output().expect("cargo xtask runs")
    }

    fn xtask_ok(&self, args: &[&str], vars: &[(&str, &str)]) -> String {
        let out = self.xtask(args, vars);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            out.status.success(),
            "cargo xtask {args:?} failed:\n{stderr}"
        );
        stderr
    }

    fn build(&self, packages: &[&str]) {
        let mut command = self.command(&cargo());
        command.args(["build", "--quiet"]);
        for p in packages {
            command.args(["-p", p]);
        }
        let out = command.output().expect("cargo build runs");
        assert!(
            out.status.success(),
            "cargo build {packages:?}:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn extract_then_inline_leaves_the_tree_exactly_as_it_was() {
    let scratch = Scratch::new();
    let said = scratch.xtask_ok(&["extract", "fulfillment"], &[]);
    // A line per step as it goes, then what to do next: build, move the data, run, test.
    let next = steps_then(&said, "extract", 4, "Next steps:");
    for command in [
        "cargo build -p app -p fulfillment-service",
        "cargo xtask move-data fulfillment --out",
        "cargo run -p app",
        "cargo run -p fulfillment-service",
        "cargo test -p fulfillment",
        "/readyz",
        "/metrics",
    ] {
        assert!(next.contains(command), "{command} missing from {said}");
    }
    assert!(
        said.contains("generating services/fulfillment/ (16 files)"),
        "{said}"
    );
    for file in [
        "services/fulfillment/Cargo.toml",
        "services/fulfillment/src/main.rs",
        "services/fulfillment/config/base.toml",
        "services/fulfillment/Dockerfile",
        "services/fulfillment/deploy/compose.yaml",
        "services/fulfillment/deploy/k8s/service.yaml",
        "services/fulfillment/deploy/k8s/monolith.yaml",
        "services/fulfillment/deploy/k8s/config.yaml",
        "services/fulfillment/deploy/k8s/secret.example.yaml",
        "services/fulfillment/deploy/k8s/migrate.yaml",
        "services/fulfillment/deploy/k8s/network-policy.yaml",
    ] {
        assert!(scratch.path().join(file).is_file(), "{file} is generated");
    }
    let config = std::fs::read_to_string(scratch.path().join("config/base.toml")).expect("config");
    assert!(
        config.contains("kind = \"hybrid\"")
            && config.contains("enabled = [\"catalog\", \"checkout\"]"),
        "{config}"
    );
    let lib = std::fs::read_to_string(scratch.path().join("app/src/lib.rs")).expect("lib");
    assert!(
        !lib.contains("fulfillment::Fulfillment"),
        "the monolith no longer carries fulfillment"
    );
    let again = scratch.xtask_ok(&["extract", "fulfillment"], &[]);
    assert!(
        again.contains("already extracted; nothing changed"),
        "{again}"
    );
    let inlined = scratch.xtask_ok(&["inline", "fulfillment"], &[]);
    let next = steps_then(&inlined, "inline", 3, "Next:");
    assert!(
        next.contains("cargo build -p app") && next.contains("in-process bus again"),
        "{inlined}"
    );
    assert_eq!(scratch.status(), "", "the round trip leaves no trace");
    assert_eq!(scratch.git(&["diff", "HEAD"]), "");
}

/// Checks that `said` shows the steps `[<command> 1/<total>` .. `[<command> <total>/<total>`
/// in order, then `closing`; returns what follows `closing`.
#[track_caller]
fn steps_then<'a>(said: &'a str, command: &str, total: usize, closing: &str) -> &'a str {
    let mut at = 0;
    for step in 1..=total {
        let label = format!("[{command} {step}/{total} ");
        let found = said[at..]
            .find(&label)
            .unwrap_or_else(|| panic!("no step {label} after the previous one in:\n{said}"));
        at += found + label.len();
    }
    let found = said[at..]
        .find(closing)
        .unwrap_or_else(|| panic!("no {closing:?} after the last step in:\n{said}"));
    &said[at + found..]
}

/// Move-data on SQLite, out to the service and back, says what it is doing step by step
/// with its counts and ends with what to do next: start the other side, verify it, switch,
/// remove the copy kept aside.
#[test]
fn move_data_shows_its_steps_and_ends_with_what_to_do_next() {
    let scratch = Scratch::new();
    scratch.xtask_ok(&["extract", "fulfillment"], &[]);
    // The monolith's fulfillment file, as the monolith's migrations leave it.
    let file = scratch.path().join("data/fulfillment.db");
    std::fs::create_dir_all(file.parent().expect("a folder")).expect("data/");
    tokio::runtime::Runtime::new()
        .expect("a runtime")
        .block_on(async {
            let conn = sea_orm::Database::connect(format!("sqlite://{}?mode=rwc", file.display()))
                .await
                .expect("the file opens");
            module_api::Module::migrate(&fulfillment::Fulfillment, &conn)
                .await
                .expect("fulfillment's migrations");
            conn.close().await.expect("closed");
        });
    let namespace = format!("move-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let vars = [("APP__BUS__REDIS__NAMESPACE", namespace.as_str())];

    let out = scratch.xtask_ok(&["move-data", "fulfillment", "--out"], &vars);
    assert!(
        out.contains("counted: moving fulfillment from the monolith's database to the service's")
            && out.contains("verified shipments"),
        "{out}"
    );
    let next = steps_then(&out, "move-data", 7, "Next:");
    for what in [
        "APP__SERVER__ADMIN_PORT=9093 cargo run -p fulfillment-service",
        "curl -fsS http://127.0.0.1:8083/readyz",
        "cargo run -p fulfillment-service -- dead-letters list --module fulfillment",
        "send /api/fulfillment/ to the service",
        "rm ",
    ] {
        assert!(next.contains(what), "{what} missing from {out}");
    }
    assert!(
        scratch
            .path()
            .join("data/fulfillment-service/fulfillment.db")
            .is_file()
    );

    let back = scratch.xtask_ok(&["move-data", "fulfillment", "--in"], &vars);
    let next = steps_then(&back, "move-data", 7, "Next:");
    for what in [
        "cargo xtask inline fulfillment",
        "cargo run -p app",
        "curl -fsS http://127.0.0.1:8080/readyz",
        "send /api/fulfillment/ back to the monolith",
    ] {
        assert!(next.contains(what), "{what} missing from {back}");
    }
}

#[test]
fn a_module_that_breaks_a_boundary_is_not_extracted() {
    let scratch = Scratch::new();
    let manifest = scratch.path().join("modules/fulfillment/Cargo.toml");
    let text = std::fs::read_to_string(&manifest).expect("manifest");
    std::fs::write(
        &manifest,
        text.replace(
            "[dependencies]\n",
            "[dependencies]\ncheckout.workspace = true\n",
        ),
    )
    .expect("write");
    let sql = scratch.path().join("modules/fulfillment/src/db/mod.rs");
    let mut text = std::fs::read_to_string(&sql).expect("db");
    text.push_str("\npub(crate) const PEEK: &str = \"SELECT status FROM checkout.orders\";\n");
    std::fs::write(&sql, text).expect("write");
    // A foreign key from shipments to checkout's orders.
    let migration = scratch
        .path()
        .join("modules/fulfillment/src/db/migrations/m0001_shipments.rs");
    let mut text = std::fs::read_to_string(&migration).expect("migration");
    text.push_str("\nconst _ORDERS: (&str, &str) = (\"checkout\", \"orders\");\n");
    std::fs::write(&migration, text).expect("write");
    // Let cargo record the new dependency in Cargo.lock before the baseline commit.
    let resolved = scratch
        .command(&cargo())
        .args(["update", "--workspace", "--offline", "--quiet"])
        .output()
        .expect("cargo");
    assert!(
        resolved.status.success(),
        "{}",
        String::from_utf8_lossy(&resolved.stderr)
    );
    scratch.git(&["add", "-A"]);
    scratch.git(&[
        "-c",
        "user.name=t",
        "-c",
        "user.email=t@t",
        "commit",
        "-qm",
        "violations",
    ]);

    let out = scratch.xtask(&["extract", "fulfillment"], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    for needle in [
        "cannot extract fulfillment",
        "modules/fulfillment/Cargo.toml: depends on module checkout",
        "a module crate depends only on shared crates",
        "modules/fulfillment/src/db/mod.rs",
        "names schema checkout in SQL",
        "modules/fulfillment/src/db/migrations/m0001_shipments.rs",
        "a foreign key across schemas",
    ] {
        assert!(stderr.contains(needle), "{needle:?} in:\n{stderr}");
    }
    assert_eq!(scratch.status(), "", "a refused extraction changes nothing");
    let boundaries = scratch.xtask(&["boundaries"], &[]);
    assert!(
        !boundaries.status.success(),
        "cargo xtask boundaries fails too"
    );
}

#[test]
fn dry_runs_change_nothing_and_every_generated_service_builds() {
    let scratch = Scratch::new();
    for module in ["catalog", "checkout", "fulfillment"] {
        let said = scratch.xtask_ok(&["extract", module, "--dry-run"], &[]);
        assert!(said.contains("dry run"), "{said}");
        assert_eq!(scratch.status(), "", "a dry run writes nothing ({module})");
    }
    scratch.xtask_ok(&["extract", "catalog"], &[]);
    scratch.xtask_ok(&["extract", "checkout"], &[]);
    let config = std::fs::read_to_string(scratch.path().join("config/base.toml")).expect("config");
    assert!(config.contains("enabled = [\"fulfillment\"]"), "{config}");
    // Every module's generated deploy files pass the checks, not only fulfillment's.
    ci_script("validate-deploy", &[&scratch.path().display().to_string()]);
    scratch.build(&["app", "catalog-service", "checkout-service"]);
    let map = scratch.xtask_ok(&["boundaries"], &[]);
    assert!(
        map.contains("schema catalog<br/>service")
            && map.contains("schema fulfillment<br/>monolith"),
        "{map}"
    );
    scratch.xtask_ok(&["inline", "checkout"], &[]);
    scratch.xtask_ok(&["inline", "catalog"], &[]);
    assert_eq!(scratch.status(), "");
}

// ------------------------------------------------------------------ the extracted topology

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port")
}

/// A process of ours: the monolith or the service.
struct Proc {
    child: Option<Child>,
    port: u16,
    /// The admin port, serving `/metrics`.
    admin_port: u16,
    name: &'static str,
}

impl Proc {
    fn start(
        scratch: &Scratch,
        binary: &'static str,
        port: u16,
        vars: &[(String, String)],
    ) -> Proc {
        // A free one, so several processes run side by side.
        let admin_port = free_port();
        let mut command = scratch.command(
            &scratch_target()
                .join("debug")
                .join(binary)
                .display()
                .to_string(),
        );
        command
            .env("APP__SERVER__PORT", port.to_string())
            // Every process verifies tokens with the same key, as a deployment's would.
            .env("APP__AUTH__HS256_SECRET", auth::SECRET)
            .env("APP__SERVER__ADMIN_PORT", admin_port.to_string())
            .env("APP__TELEMETRY__LEVEL", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in vars {
            command.env(k, v);
        }
        let child = command.spawn().expect("the binary starts");
        let mut proc = Proc {
            child: Some(child),
            port,
            admin_port,
            name: binary,
        };
        proc.wait_ready();
        proc
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = http::blocking_get(&format!("http://127.0.0.1:{}/readyz", self.port))
                && r == 200
            {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                let mut err = String::new();
                if let Some(mut e) = self.child.as_mut().and_then(|c| c.stderr.take()) {
                    let _ = e.read_to_string(&mut err);
                }
                panic!("{} exited ({status}):\n{err}", self.name);
            }
            assert!(
                Instant::now() < deadline,
                "{} did not become ready",
                self.name
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The admin port's `/metrics`, parsed.
    fn scrape(&self) -> Vec<testkit::metrics::Sample> {
        let url = format!("http://127.0.0.1:{}/metrics", self.admin_port);
        let (status, text) = http::get_text(&url);
        assert_eq!(status, 200, "{url}: {text}");
        testkit::metrics::parse(&text)
    }

    /// SIGTERM, and wait for a clean exit.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let status = child.wait().expect("wait");
            assert!(
                status.success(),
                "{} exits cleanly after SIGTERM: {status}",
                self.name
            );
        }
    }

    /// SIGKILL.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Tokens for the processes these tests start: all share one HS256 secret.
mod auth {
    use module_api::Role;

    pub(crate) const SECRET: &str = "extraction-test-secret-of-at-least-32-bytes";

    /// The repository's local settings with the processes' secret: what they verify with.
    pub(crate) fn settings() -> runtime::config::Settings {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config");
        let vars = [("APP__AUTH__HS256_SECRET".to_owned(), SECRET.to_owned())];
        runtime::config::Settings::load(runtime::config::Sources {
            dir: &dir,
            environment: "local",
            env_vars: Some(vars.into_iter().collect()),
        })
        .expect("the repository's settings load")
    }

    pub(crate) fn token(roles: &[Role], subject: &str) -> String {
        runtime::auth::mint(
            &settings(),
            roles,
            subject,
            std::time::Duration::from_secs(3600),
        )
        .expect("a token")
    }

    /// The journey runs as a caller with both roles: a storefront and a back office.
    pub(crate) fn everyone() -> &'static str {
        static TOKEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        TOKEN.get_or_init(|| token(&[Role::Customer, Role::Staff], "journey"))
    }
}

/// A tiny blocking HTTP client over the async one.
mod http {
    use reqwest::{Client, Method, Result};

    /// Every client of the build is made by `module_api::tls` (reqwest has no TLS of its own).
    fn client() -> Client {
        module_api::tls::client_builder(None)
            .expect("a client builder")
            .build()
            .expect("a client")
    }

    fn runtime() -> &'static tokio::runtime::Runtime {
        static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
        RT.get_or_init(|| tokio::runtime::Runtime::new().expect("runtime"))
    }

    pub(crate) fn blocking_get(url: &str) -> Result<u16> {
        runtime().block_on(async { Ok(client().get(url).send().await?.status().as_u16()) })
    }

    pub(crate) use reqwest::Method as Verb;

    /// A GET without a token: the status and the body as text.
    pub(crate) fn get_text(url: &str) -> (u16, String) {
        runtime().block_on(async {
            let response = client().get(url).send().await.expect("reachable");
            let status = response.status().as_u16();
            (status, response.text().await.unwrap_or_default())
        })
    }

    /// Runs a future of the tests on the runtime of these helpers.
    pub(crate) fn block_on<F: std::future::Future>(future: F) -> F::Output {
        runtime().block_on(future)
    }

    pub(crate) fn call(
        method: Method,
        url: &str,
        body: Option<&serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        call_as(method, url, body, Some(super::auth::everyone()))
    }

    /// Sends `token` as the bearer token, or none.
    pub(crate) fn call_as(
        method: Method,
        url: &str,
        body: Option<&serde_json::Value>,
        token: Option<&str>,
    ) -> (u16, serde_json::Value) {
        runtime().block_on(async {
            let mut request = client().request(method, url);
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            if let Some(body) = body {
                request = request.json(body);
            }
            let response = request.send().await.expect("reachable");
            let status = response.status().as_u16();
            let text = response.text().await.unwrap_or_default();
            (
                status,
                serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
            )
        })
    }
}

fn get(url: &str) -> (u16, Value) {
    http::call(http::Verb::GET, url, None)
}

fn post(url: &str, body: &Value) -> (u16, Value) {
    http::call(http::Verb::POST, url, Some(body))
}

fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn order_body(sku: &str, quantity: i64, token: &str) -> Value {
    json!({"customer_email": "ada@example.com", "items": [{"sku": sku, "quantity": quantity}],
           "shipping_address": {"name": "Ada", "line1": "1 Rd", "city": "London", "postal_code": "N1", "country": "GB"},
           "payment_token": token})
}

fn place(monolith: &Proc, sku: &str, quantity: i64, token: &str) -> String {
    let (status, body) = post(
        &monolith.url("/api/checkout/orders"),
        &order_body(sku, quantity, token),
    );
    assert_eq!(status, 201, "{body}");
    body["id"].as_str().expect("id").to_owned()
}

fn order_becomes(monolith: &Proc, id: &str, status: &str) -> Value {
    eventually(&format!("order {id} to be {status}"), || {
        let (_, order) = get(&monolith.url(&format!("/api/checkout/orders/{id}")));
        (order["status"] == status).then_some(order)
    })
}

fn shipment_of(service: &Proc, order: &str, status: &str) -> Value {
    eventually(&format!("the shipment of {order} to be {status}"), || {
        let (_, page) = get(&service.url(&format!("/api/fulfillment/shipments?order_id={order}")));
        page["items"]
            .as_array()
            .and_then(|items| items.iter().find(|s| s["status"] == status).cloned())
    })
}

fn available(monolith: &Proc, sku: &str) -> i64 {
    get(&monolith.url(&format!("/api/catalog/products/{sku}"))).1["available"]
        .as_i64()
        .expect("available")
}

fn psql(database: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            database,
            "-Atc",
            sql,
        ])
        .output()
        .expect("psql");
    assert!(
        out.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

struct Databases(Vec<String>);

/// Removes a Redis namespace's keys when dropped.
struct Namespace(String);

impl Drop for Namespace {
    fn drop(&mut self) {
        let Ok(mut conn) =
            redis::Client::open("redis://127.0.0.1:6379/0").and_then(|c| c.get_connection())
        else {
            return;
        };
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}:*", self.0))
            .query(&mut conn)
            .unwrap_or_default();
        if !keys.is_empty() {
            let _: Result<i64, _> = redis::cmd("DEL").arg(keys).query(&mut conn);
        }
    }
}

impl Drop for Databases {
    fn drop(&mut self) {
        for db in &self.0 {
            let _ = Command::new("psql")
                .args(["-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-qc"])
                .arg(format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"))
                .output();
        }
    }
}

/// Extract fulfillment, move its data, run the monolith and the service as two processes on
/// PostgreSQL and Redis through the whole journey (compensations included), kill the
/// service with SIGKILL under load and restart it, then bring everything back.
#[test]
fn the_extracted_topology_runs_the_journey_and_survives_a_killed_service() {
    let scratch = Scratch::new();
    let id = uuid::Uuid::new_v4().simple().to_string();
    let (mono_db, svc_db) = (
        format!("t_e2e_m_{}", &id[..12]),
        format!("t_e2e_f_{}", &id[..12]),
    );
    let _databases = Databases(vec![mono_db.clone(), svc_db.clone()]);
    for db in [&mono_db, &svc_db] {
        psql("postgres", &format!("CREATE DATABASE \"{db}\""));
    }
    let namespace = format!("e2e-{}", &id[..12]);
    let _namespace = Namespace(namespace.clone());
    let common = |db: &str| -> Vec<(String, String)> {
        [
            ("APP__DATABASE__BACKEND", "postgres"),
            ("APP__DATABASE__POSTGRES__DATABASE", db),
            ("APP__DATABASE__POSTGRES__SSL_MODE", "disable"),
            ("APP__BUS__REDIS__NAMESPACE", namespace.as_str()),
            ("APP__MESSAGING__LEASE_MS", "3000"),
            // Published events stay in the outbox, where the test counts what each
            // module emitted.
            ("APP__MESSAGING__OUTBOX_RETENTION_SECS", "3600"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    };
    let move_vars: Vec<(&str, &str)> = vec![
        ("APP__DATABASE__BACKEND", "postgres"),
        ("APP__DATABASE__POSTGRES__SSL_MODE", "disable"),
        ("APP__BUS__REDIS__NAMESPACE", namespace.as_str()),
    ];

    // 1. Before: the monolith with every module, already on the Redis bus.
    scratch.build(&["app"]);
    let mut before_vars = common(&mono_db);
    before_vars.push(("APP__BUS__KIND".into(), "redis".into()));
    before_vars.push(("APP__BUS__INSTANCE".into(), "monolith-1".into()));
    let mut monolith = Proc::start(&scratch, "app", free_port(), &before_vars);
    let (status, _) = post(
        &monolith.url("/api/catalog/products"),
        &json!({"sku": "TEA-1", "name": "Tea", "price_minor": 450, "currency": "EUR", "initial_stock": 1000}),
    );
    assert_eq!(status, 201);
    eventually("checkout to price TEA-1", || {
        (get(&monolith.url("/api/checkout/prices/TEA-1")).0 == 200).then_some(())
    });
    let early = place(&monolith, "TEA-1", 2, "tok_visa");
    shipment_of(&monolith, &early, "ready");
    monolith.stop();

    // 2. Extract, build, move fulfillment's data out.
    scratch.xtask_ok(&["extract", "fulfillment"], &[]);
    scratch.build(&["app", "fulfillment-service"]);
    let moved = scratch.xtask_ok(
        &[
            "move-data",
            "fulfillment",
            "--out",
            "--monolith-database",
            &mono_db,
            "--service-database",
            &svc_db,
        ],
        &move_vars,
    );
    assert!(moved.contains("verified shipments"), "{moved}");
    assert_eq!(
        psql(
            &mono_db,
            "SELECT COUNT(*) FROM pg_namespace WHERE nspname = 'fulfillment'"
        ),
        "0"
    );
    assert_eq!(
        psql(&svc_db, "SELECT COUNT(*) FROM fulfillment.shipments"),
        "1"
    );

    // 3. Two processes.
    let mut mono_vars = common(&mono_db);
    mono_vars.push(("APP__BUS__INSTANCE".into(), "monolith-1".into()));
    let mut svc_vars = common(&svc_db);
    svc_vars.push(("APP__BUS__INSTANCE".into(), "fulfillment-1".into()));
    let mut monolith = Proc::start(&scratch, "app", free_port(), &mono_vars);
    let service_port = free_port();
    let mut service = Proc::start(&scratch, "fulfillment-service", service_port, &svc_vars);
    let (status, _) = get(&monolith.url("/api/fulfillment/shipments"));
    assert_eq!(status, 404, "the monolith no longer serves fulfillment");

    // The extracted service enforces the monolith's access rules from the same settings:
    // the monolith's own table's rows for every route the service serves, on a shipment of
    // its own, which the table dispatches and delivers.
    {
        use testkit::access::{
            Tokens, Who, check_every_caller, every_process_rows, fulfillment_rows, routes_of, tried,
        };
        let tokens = Tokens::new(&auth::settings());
        let order = place(&monolith, "TEA-1", 1, "tok_visa");
        let shipment = shipment_of(&service, &order, "ready");
        let mut rows = every_process_rows();
        rows.extend(fulfillment_rows(
            shipment["id"].as_str().expect("id"),
            &order,
        ));
        assert_eq!(
            tried(&rows),
            routes_of("fulfillment"),
            "the service's table tries every route the service serves"
        );
        http::block_on(check_every_caller(&service.url(""), &rows, &tokens));
        order_becomes(&monolith, &order, "delivered");

        // Checkout stayed in the monolith: another customer's order does not exist for a
        // customer; staff read any order.
        let url = monolith.url(&format!("/api/checkout/orders/{early}"));
        let (status, _) = http::call_as(http::Verb::GET, &url, None, tokens.of(Who::CustomerB));
        assert_eq!(status, 404, "another customer's order is not theirs to see");
        let (status, _) = http::call_as(http::Verb::GET, &url, None, tokens.of(Who::Staff));
        assert_eq!(status, 200, "staff read any order");
    }

    // The shipment made before the move is there, and completes the journey.
    let shipment = shipment_of(&service, &early, "ready");
    let (status, _) = post(
        &service.url(&format!(
            "/api/fulfillment/shipments/{}/dispatch",
            shipment["id"].as_str().expect("id")
        )),
        &json!({}),
    );
    assert_eq!(status, 200);
    order_becomes(&monolith, &early, "shipped");
    let (status, _) = post(
        &service.url(&format!(
            "/api/fulfillment/shipments/{}/deliver",
            shipment["id"].as_str().expect("id")
        )),
        &json!({}),
    );
    assert_eq!(status, 200);
    order_becomes(&monolith, &early, "delivered");

    // A new order, cancelled before dispatch: stock released, shipment cancelled.
    let stock = available(&monolith, "TEA-1");
    let cancelled = place(&monolith, "TEA-1", 3, "tok_visa");
    order_becomes(&monolith, &cancelled, "confirmed");
    shipment_of(&service, &cancelled, "ready");
    let (status, _) = post(
        &monolith.url(&format!("/api/checkout/orders/{cancelled}/cancel")),
        &json!({}),
    );
    assert_eq!(status, 200);
    shipment_of(&service, &cancelled, "cancelled");
    eventually("the stock to come back", || {
        (available(&monolith, "TEA-1") == stock).then_some(())
    });

    // A declined payment: rejected, stock released, no shipment.
    let declined = place(&monolith, "TEA-1", 1, "tok_decline");
    let order = order_becomes(&monolith, &declined, "rejected");
    assert_eq!(order["status_reason"], "payment_declined");
    eventually("the stock to come back", || {
        (available(&monolith, "TEA-1") == stock).then_some(())
    });

    // Dispatched, then a cancel: refused.
    let shipped = place(&monolith, "TEA-1", 1, "tok_visa");
    let s = shipment_of(&service, &shipped, "ready");
    post(
        &service.url(&format!(
            "/api/fulfillment/shipments/{}/dispatch",
            s["id"].as_str().expect("id")
        )),
        &json!({}),
    );
    order_becomes(&monolith, &shipped, "shipped");
    let (status, body) = post(
        &monolith.url(&format!("/api/checkout/orders/{shipped}/cancel")),
        &json!({}),
    );
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("order_already_shipped"))
    );

    service_metrics_show_the_journey(&service);

    // 4. Load, and the service killed with SIGKILL in the middle of it.
    // Before it: the shipment made before the move, the access table's, the cancelled
    // order's and the dispatched one's.
    const SHIPMENTS_BEFORE_LOAD: i64 = 4;
    let orders = 150;
    let placer = {
        let url = monolith.url("/api/checkout/orders");
        std::thread::spawn(move || {
            let mut ids = Vec::new();
            for i in 0..orders {
                let (status, body) = post(&url, &order_body("TEA-1", 1, "tok_visa"));
                assert_eq!(status, 201, "order {i}: {body}");
                ids.push(body["id"].as_str().expect("id").to_owned());
            }
            ids
        })
    };
    std::thread::sleep(Duration::from_millis(400));
    service.kill();
    std::thread::sleep(Duration::from_millis(1500));
    let mut service = Proc::start(&scratch, "fulfillment-service", service_port, &svc_vars);
    let ids = placer.join().expect("the placer finishes");
    for id in &ids {
        order_becomes(&monolith, id, "confirmed");
    }
    eventually("every confirmed order to have its shipment", || {
        let shipments: i64 = psql(&svc_db, "SELECT COUNT(*) FROM fulfillment.shipments")
            .parse()
            .ok()?;
        (shipments == SHIPMENTS_BEFORE_LOAD + orders).then_some(())
    });
    assert_eq!(
        psql(
            &svc_db,
            "SELECT COUNT(*) FROM (SELECT ordering_key FROM fulfillment.outbox \
             WHERE event_type = 'fulfillment.shipment_created.v1' \
             GROUP BY ordering_key HAVING COUNT(*) > 1) d"
        ),
        "0",
        // Counted in the outbox, which no constraint caps (shipments have a UNIQUE order
        // id, so counting them could not show a second handling).
        "exactly one shipment created per order"
    );
    assert_eq!(
        psql(&svc_db, "SELECT COUNT(*) FROM fulfillment.dead_letters"),
        "0"
    );

    // 5. An order confirmed while the service is down: its event waits in Redis for
    // fulfillment's group, and moving the data back in is refused (inlined, fulfillment
    // would take its events in-process and never read it), naming the group and the
    // stream. Once the service has run and handled it, the move goes ahead.
    service.stop();
    let waiting = place(&monolith, "TEA-1", 1, "tok_visa");
    order_becomes(&monolith, &waiting, "confirmed");
    eventually("checkout's relay to write its events to Redis", || {
        (psql(
            &mono_db,
            "SELECT COUNT(*) FROM checkout.outbox WHERE published_at IS NULL",
        ) == "0")
            .then_some(())
    });
    monolith.stop();
    let move_in = [
        "move-data",
        "fulfillment",
        "--in",
        "--monolith-database",
        mono_db.as_str(),
        "--service-database",
        svc_db.as_str(),
    ];
    let refused = scratch.xtask(&move_in, &move_vars);
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success(),
        "moved while an event waited in Redis:\n{said}"
    );
    assert!(
        said.contains(&format!("fulfillment on {namespace}:stream:checkout:"))
            && said.contains("1 not read"),
        "{said}"
    );
    assert_eq!(
        psql(&svc_db, "SELECT COUNT(*) FROM fulfillment.shipments"),
        (SHIPMENTS_BEFORE_LOAD + orders).to_string(),
        "a refused move changes nothing"
    );
    let mut service = Proc::start(&scratch, "fulfillment-service", service_port, &svc_vars);
    shipment_of(&service, &waiting, "ready");
    service.stop();

    // 6. And back: data in, module inlined, the monolith alone serves everything again.
    let back = scratch.xtask_ok(&move_in, &move_vars);
    assert!(back.contains("verified shipments"), "{back}");
    scratch.xtask_ok(&["inline", "fulfillment"], &[]);
    scratch.build(&["app"]);
    let monolith = Proc::start(&scratch, "app", free_port(), &mono_vars);
    let (status, page) = get(&monolith.url("/api/fulfillment/shipments?limit=100"));
    assert_eq!(status, 200);
    assert_eq!(
        page["items"].as_array().map(Vec::len),
        Some(100),
        "the shipments came back"
    );
    assert_eq!(
        psql(&mono_db, "SELECT COUNT(*) FROM fulfillment.shipments"),
        (SHIPMENTS_BEFORE_LOAD + orders + 1).to_string()
    );
    drop(monolith);
    assert!(
        scratch.status().lines().all(|l| l.starts_with("?? data")),
        "{}",
        scratch.status()
    );
}

/// The service's `/metrics`, scraped on its admin port after the journey above, shows what
/// an operator watches it by, with fulfillment's labels and the values that journey moved:
/// HTTP by route template, events handled, the outbox drained, the subscription's backlog
/// on the Redis bus drained, no dead letter, no failed Redis round trip, the pool; and
/// nothing of the modules it does not run.
fn service_metrics_show_the_journey(service: &Proc) {
    use testkit::metrics::{at_least, value};
    let module = [("module", "fulfillment")];
    // The sampler (outbox, pool) and the watchdog (backlog) report on timers: wait until
    // their figures are in and show everything delivered and published.
    let samples = eventually("the service's outbox and backlog to read empty", || {
        let samples = service.scrape();
        let drained = ["outbox_unpublished_events", "consumer_backlog"]
            .iter()
            .all(|family| value(&samples, family, &module) == Some(0.0));
        drained.then_some(samples)
    });
    assert_eq!(
        value(&samples, "outbox_oldest_unpublished_age_seconds", &module),
        Some(0.0)
    );

    // HTTP, by route template and status class: the access table's calls and the journey's.
    // Dispatch: the table's shipment, the one made before the move, the dispatched order's;
    // each refused twice with 401 and twice with 403 by the table.
    let dispatch = "/api/fulfillment/shipments/{id}/dispatch";
    for (route, method, ok, refused) in [
        (dispatch, "POST", 3.0, 4.0),
        ("/api/fulfillment/shipments/{id}/deliver", "POST", 2.0, 4.0),
        ("/api/fulfillment/shipments/{id}", "GET", 1.0, 4.0),
        ("/api/fulfillment/shipments", "GET", 7.0, 8.0),
    ] {
        let labels = |status| [("method", method), ("route", route), ("status", status)];
        at_least(&samples, "http_requests_total", &labels("2xx"), ok);
        at_least(&samples, "http_requests_total", &labels("4xx"), refused);
        at_least(
            &samples,
            "http_request_duration_seconds_count",
            &labels("2xx"),
            ok,
        );
        let [m, r, s] = labels("2xx");
        at_least(
            &samples,
            "http_request_duration_seconds_bucket",
            &[m, r, s, ("le", "+Inf")],
            ok,
        );
    }

    // Events: order_confirmed of three orders and order_cancelled of one handled;
    // shipment_created three times, dispatched three times, delivered twice published.
    at_least(&samples, "events_handled_total", &module, 4.0);
    at_least(
        &samples,
        "consumer_batch_duration_seconds_count",
        &[("module", "fulfillment"), ("outcome", "ok")],
        1.0,
    );
    at_least(&samples, "outbox_published_total", &module, 8.0);
    at_least(&samples, "fulfillment_shipments_dispatched_total", &[], 3.0);
    for family in [
        "dead_letters_total",
        "event_retries_total",
        "relay_failures_total",
        "consumer_stalled",
        "bus_duplicate_instance",
    ] {
        assert_eq!(value(&samples, family, &module), Some(0.0), "{family}");
    }
    // The Redis bus: the partitions this instance consumes, no failed round trip.
    at_least(&samples, "bus_partitions_held", &module, 1.0);
    let redis_errors: Vec<_> = samples
        .iter()
        .filter(|s| s.name == "redis_errors_total")
        .collect();
    assert!(
        redis_errors.len() >= 10 && redis_errors.iter().all(|s| s.value == 0.0),
        "every op of redis_errors_total, at zero: {redis_errors:?}"
    );

    // The pool.
    at_least(&samples, "db_pool_max_connections", &module, 1.0);
    at_least(&samples, "db_begin_duration_seconds_count", &module, 1.0);
    for state in ["idle", "in_use"] {
        at_least(
            &samples,
            "db_pool_connections",
            &[("module", "fulfillment"), ("state", state)],
            0.0,
        );
    }

    // Only fulfillment, and no id in any label.
    for sample in &samples {
        assert!(
            !sample.name.starts_with("checkout_")
                && !sample.name.starts_with("catalog_")
                && sample
                    .labels
                    .get("module")
                    .is_none_or(|m| m == "fulfillment"),
            "the service shows only its module: {sample:?}"
        );
        for value in sample.labels.values() {
            assert!(
                !value
                    .split('/')
                    .chain([value.as_str()])
                    .any(|part| uuid::Uuid::parse_str(part).is_ok()),
                "a label holds an id: {sample:?}"
            );
        }
    }
}

// ------------------------------------------------------------------ deploy files

/// One of this checkout's `.ci` scripts, run on any folder, sharing the main target
/// directory (where the validators' virtualenv lives).
fn ci_script(script: &str, args: &[&str]) {
    let main_target = scratch_target()
        .parent()
        .expect("the main target directory")
        .to_path_buf();
    let started = Instant::now();
    let out = Command::new(root().join(".ci").join(script))
        .args(args)
        .env("CARGO_TARGET_DIR", main_target)
        .stdin(Stdio::null())
        .output()
        .expect("the script runs");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        ".ci/{script} {args:?} failed:\n{said}"
    );
    eprintln!(
        "{said}.ci/{script} took {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn the_repository_deploy_files_pass_the_checks() {
    ci_script("validate-deploy", &[&root().display().to_string()]);
}

/// A freshly extracted service's Dockerfile, compose file and manifests pass the checks the
/// repository's own pass, and both binaries of the extracted topology run as their images
/// and manifests say: user 65532, read-only files but the data path, only the manifests'
/// environment, `migrate`, `/readyz`, a clean SIGTERM.
#[test]
fn a_generated_service_has_valid_deploy_files_and_runs_as_its_container_would() {
    let scratch = Scratch::new();
    scratch.xtask_ok(&["extract", "fulfillment"], &[]);
    let dir = scratch.path().display().to_string();
    ci_script("validate-deploy", &[&dir]);

    // setpriv needs root to become the image's user; CI runs as root.
    let uid = Command::new("id").arg("-u").output().expect("id");
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        eprintln!("SKIPPED the container-shaped runs: they need root, to switch to user 65532");
        return;
    }
    scratch.build(&["app", "fulfillment-service"]);
    // The scratch target is shared with the other extraction tests, which build `app`
    // with other module sets: take our binaries out of it at once.
    let bins = tempfile::tempdir().expect("temp dir");
    for binary in ["app", "fulfillment-service"] {
        std::fs::copy(
            scratch_target().join("debug").join(binary),
            bins.path().join(binary),
        )
        .expect("copy the binary");
    }
    let k8s = format!("{dir}/services/fulfillment/deploy/k8s");
    for (workload, dockerfile, binary) in [
        (
            "fulfillment-service",
            "services/fulfillment/Dockerfile",
            "fulfillment-service",
        ),
        ("shop", "Dockerfile", "app"),
    ] {
        let binary = bins.path().join(binary);
        ci_script(
            "smoke-container",
            &[
                &dir,
                &format!("{dir}/{dockerfile}"),
                &k8s,
                workload,
                &binary.display().to_string(),
            ],
        );
    }
}
