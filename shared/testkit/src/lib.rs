//! Test helpers: boot the app (or one module alone) on port 0 with a fresh database of its
//! own, on SQLite or PostgreSQL, so tests run in parallel; talk to it over HTTP.
//!
//! Requests go through the real authentication: [`TestApp::client`] carries a token of the
//! test configuration's HS256 secret with both the customer and the staff role (subject
//! [`TESTER`]), so tests of the business rules need not mind roles; tests of access send
//! their own tokens ([`TestApp::token`], [`TestApp::send`]) or none.
//!
//! PostgreSQL is reached with the `test` environment's settings (127.0.0.1:5432, owner
//! `postgres`); `TEST_PG_HOST`, `TEST_PG_PORT` and `TEST_PG_USER` override them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use actix_web::dev::ServerHandle;
use anyhow::Context;
use module_api::Module;
use runtime::config::{Settings, Sources};
use runtime::host::{Application, Hooks};
use serde_json::Value;

pub mod access;
mod buses;
pub mod metrics;
pub mod tls;

pub use buses::{DuplicatingBus, RecordingBus, envelope};
pub use module_api::Role;

/// The subject of the token [`TestApp::client`] sends.
pub const TESTER: &str = "tester";

/// A token for `roles` and `subject`, valid for a day, that apps started with `settings`
/// accept.
pub fn token(settings: &Settings, roles: &[Role], subject: &str) -> String {
    runtime::auth::mint(
        settings,
        roles,
        subject,
        std::time::Duration::from_secs(86_400),
    )
    .unwrap_or_else(|e| panic!("cannot mint a test token: {e:#}"))
}

/// A client whose requests carry `token` unless they set their own `Authorization`.
pub fn client_with_token(token: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
        .expect("a token is a valid header value");
    value.set_sensitive(true);
    headers.insert(reqwest::header::AUTHORIZATION, value);
    module_api::tls::client_builder(None)
        .expect("a client builder")
        .redirect(reqwest::redirect::Policy::none())
        .default_headers(headers)
        .build()
        .expect("a client")
}
pub use reqwest;
pub use serde_json::json;

/// Installs JSON logs on stdout when `TEST_LOG` is set (e.g. `TEST_LOG=debug`), once.
pub fn init_logs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if let Ok(level) = std::env::var("TEST_LOG") {
            let subscriber = runtime::telemetry::subscriber("test".into(), &level, std::io::stdout);
            let _ = runtime::telemetry::init(subscriber);
        }
    });
}

/// Polls `check` every 20 ms until it returns `Some`, or panics after `secs` seconds with
/// `what` in the message.
pub async fn eventually<T, F, Fut>(secs: u64, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {secs} s waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Runs each named `async fn(Backend)` as two tests, `<name>::sqlite` and `<name>::postgres`.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),+ $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$name($crate::Backend::Sqlite).await
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    super::$name($crate::Backend::Postgres).await
                }
            }
        )+
    };
}

pub use runtime::config::Backend as RuntimeBackend;

/// Which database a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The repository's `config/` folder.
pub fn config_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config")
}

/// The `test` environment's settings, untouched by the process environment.
pub fn test_settings() -> Settings {
    Settings::load(Sources {
        dir: &config_dir(),
        environment: "test",
        env_vars: Some(Default::default()),
    })
    .unwrap_or_else(|e| panic!("the test settings do not load: {e}"))
}

/// A database that exists for one test: a temporary folder of SQLite files, or a
/// PostgreSQL database dropped when this value is dropped.
pub struct TestDatabase {
    pub backend: Backend,
    _dir: Option<tempfile::TempDir>,
    pg: Option<PgDatabase>,
}

struct PgDatabase {
    admin_url: String,
    name: String,
}

fn pg_admin() -> (String, u16, String) {
    let host = std::env::var("TEST_PG_HOST").unwrap_or_else(|_| "127.0.0.1".into());
    let port = std::env::var("TEST_PG_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(5432);
    let user = std::env::var("TEST_PG_USER").unwrap_or_else(|_| "postgres".into());
    (host, port, user)
}

impl TestDatabase {
    /// Creates the database and points `settings` at it.
    pub async fn create(backend: Backend, settings: &mut Settings) -> TestDatabase {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("a temporary folder");
                settings.database.backend = RuntimeBackend::Sqlite;
                settings.database.sqlite.dir = dir.path().to_path_buf();
                TestDatabase {
                    backend,
                    _dir: Some(dir),
                    pg: None,
                }
            }
            Backend::Postgres => {
                let (host, port, user) = pg_admin();
                let name = format!("t_{}", uuid::Uuid::new_v4().simple());
                let admin_url = format!("postgres://{user}@{host}:{port}/postgres");
                let admin = sea_orm::Database::connect(&admin_url)
                    .await
                    .unwrap_or_else(|e| {
                        panic!("PostgreSQL must run at {host}:{port} for the tests: {e}")
                    });
                sea_orm::ConnectionTrait::execute_unprepared(
                    &admin,
                    &format!("CREATE DATABASE \"{name}\""),
                )
                .await
                .expect("create the test database");
                admin.close().await.ok();
                settings.database.backend = RuntimeBackend::Postgres;
                let pg = &mut settings.database.postgres;
                pg.host = host;
                pg.port = port;
                pg.owner_user = user;
                pg.database = name.clone();
                TestDatabase {
                    backend,
                    _dir: None,
                    pg: Some(PgDatabase { admin_url, name }),
                }
            }
        }
    }

    /// The PostgreSQL database's name, on that backend.
    pub fn pg_name(&self) -> Option<&str> {
        self.pg.as_ref().map(|p| p.name.as_str())
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let url = self.admin_url.clone();
        let sql = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name);
        // Drop runs inside the test's runtime; a thread of its own may block on its own.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let admin = sea_orm::Database::connect(&url).await?;
                sea_orm::ConnectionTrait::execute_unprepared(&admin, &sql).await?;
                admin.close().await?;
                anyhow::Ok(())
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("note: test database {} was not dropped", self.name);
        }
    }
}

/// An app serving on a free port of 127.0.0.1, with a database of its own.
pub struct TestApp {
    pub address: String,
    /// The admin port's base URL (`/metrics`).
    pub admin_address: String,
    pub settings: Settings,
    /// Sends a token with the customer and staff roles (subject [`TESTER`]).
    pub client: reqwest::Client,
    /// Sends no token unless told to ([`TestApp::send`]).
    pub anonymous: reqwest::Client,
    pub modules: Vec<Arc<dyn Module>>,
    pub hooks: Hooks,
    /// The bus the app runs on.
    pub bus: Arc<dyn messaging::EventBus>,
    handle: ServerHandle,
    served: tokio::task::JoinHandle<anyhow::Result<()>>,
    pub db: TestDatabase,
}

/// How a test wants its app.
pub struct Spawn {
    pub backend: Backend,
    pub modules: Vec<Arc<dyn Module>>,
    pub settings: Settings,
    pub hooks: Hooks,
}

impl Spawn {
    pub fn new(backend: Backend, modules: Vec<Arc<dyn Module>>) -> Self {
        let mut settings = test_settings();
        settings.modules.enabled = modules.iter().map(|m| m.name().to_owned()).collect();
        // Stable for the life of the test, so a restarted app takes its claims back.
        settings.bus.instance = format!("test-{}", uuid::Uuid::new_v4().simple());
        Self {
            backend,
            modules,
            settings,
            hooks: Hooks::default(),
        }
    }

    /// One module booted alone, as its own tests boot it: what it publishes goes to the
    /// returned recording bus (no other module consumes it), and the test feeds it events
    /// through that bus.
    pub fn alone(backend: Backend, module: Arc<dyn Module>) -> (Self, Arc<RecordingBus>) {
        let bus = RecordingBus::new();
        let spawn = Spawn::new(backend, vec![module]).hooks(Hooks {
            bus: Some(bus.clone()),
            ..Hooks::default()
        });
        (spawn, bus)
    }

    pub fn configure(mut self, f: impl FnOnce(&mut Settings)) -> Self {
        f(&mut self.settings);
        self
    }

    pub fn hooks(mut self, hooks: Hooks) -> Self {
        self.hooks = hooks;
        self
    }

    pub async fn start(self) -> TestApp {
        init_logs();
        let Spawn {
            backend,
            modules,
            mut settings,
            hooks,
        } = self;
        let db = TestDatabase::create(backend, &mut settings).await;
        TestApp::start_on(settings, modules, hooks, db)
            .await
            .unwrap_or_else(|e| panic!("the app does not start: {e:#}"))
    }
}

impl TestApp {
    /// Starts an app on an existing test database (say, to restart one).
    pub async fn start_on(
        mut settings: Settings,
        modules: Vec<Arc<dyn Module>>,
        hooks: Hooks,
        db: TestDatabase,
    ) -> anyhow::Result<TestApp> {
        settings.server.host = "127.0.0.1".into();
        settings.server.port = 0;
        let app = Application::build_with(settings.clone(), &modules, hooks.clone())
            .await
            .context("failed to build the app")?;
        let address = format!("http://127.0.0.1:{}", app.port());
        let admin_address = format!("http://127.0.0.1:{}", app.admin_port());
        let handle = app.handle();
        let bus = app.bus();
        let served = tokio::spawn(app.run_until_stopped());
        let anonymous = module_api::tls::client_builder(None)?
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let client = client_with_token(&token(&settings, &[Role::Customer, Role::Staff], TESTER));
        Ok(TestApp {
            address,
            admin_address,
            settings,
            client,
            anonymous,
            modules,
            hooks,
            bus,
            handle,
            served,
            db,
        })
    }

    /// Kills the app where it stands, as `kill -9` would: no drain, background work
    /// aborted mid-flight (open transactions roll back). Returns its database.
    pub async fn crash(self) -> (TestDatabase, Settings, Vec<Arc<dyn Module>>) {
        self.served.abort();
        let _ = self.served.await;
        self.handle.stop(false).await;
        (self.db, self.settings, self.modules)
    }

    /// Another process of this app on the same database, as a second replica behind a
    /// load balancer would be: its own port, instance name and `settings` changed by
    /// `configure`; the database stays this app's (stopping the replica leaves it).
    pub async fn replica(&self, configure: impl FnOnce(&mut Settings)) -> TestApp {
        let mut settings = self.settings.clone();
        settings.bus.instance = format!("{}-replica", settings.bus.instance);
        configure(&mut settings);
        let db = TestDatabase {
            backend: self.db.backend,
            _dir: None,
            pg: None,
        };
        TestApp::start_on(settings, self.modules.clone(), self.hooks.clone(), db)
            .await
            .unwrap_or_else(|e| panic!("the replica does not start: {e:#}"))
    }

    /// Starts the app again on the same database and instance name, with `hooks`.
    pub async fn restart(self, hooks: Hooks) -> TestApp {
        let (db, settings, modules) = self.crash().await;
        TestApp::start_on(settings, modules, hooks, db)
            .await
            .unwrap_or_else(|e| panic!("the app does not restart: {e:#}"))
    }

    /// Runs one SQL query on a module's database, as its owner, returning the first
    /// column of the first row as an integer: for tests that count rows.
    pub async fn count(&self, module: &'static str, sql: &str) -> i64 {
        let db = runtime::db::connect_module(&self.settings.database, module)
            .await
            .expect("connect to the module database");
        let row = sea_orm::ConnectionTrait::query_one_raw(
            db.conn(),
            sea_orm::Statement::from_string(db.backend(), sql.to_owned()),
        )
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .expect("a row");
        let n: i64 = row.try_get_by_index(0).expect("an integer");
        db.close().await.ok();
        n
    }

    /// Waits until `modules` are drained: every outbox row published, every queue empty
    /// and each of `also_waiting` (a module and a `SELECT COUNT(*)` of work still to do,
    /// such as payment attempts pending) at zero, seen twice, a few polls apart, with
    /// nothing changed in between (outbox rows, inbox keys, queued rows, dead letters).
    /// Nothing these modules were given can take effect after that, so a count made then
    /// is final: use it before asserting that something did not happen (after a sleep it
    /// only did not happen yet).
    pub async fn drained(&self, modules: &[&'static str], also_waiting: &[(&'static str, &str)]) {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        let pause = std::time::Duration::from_millis(self.settings.messaging.poll_interval_ms * 5);
        loop {
            let first = self.fingerprint(modules, also_waiting).await;
            if first.iter().all(|(_, waiting)| *waiting == 0) {
                tokio::time::sleep(pause).await;
                if self.fingerprint(modules, also_waiting).await == first {
                    return;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{modules:?} not drained in 30 s: ([outbox rows, inbox keys, dead letters], waiting) = {first:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Per module: what it recorded, and how much work still waits.
    async fn fingerprint(
        &self,
        modules: &[&'static str],
        also_waiting: &[(&'static str, &str)],
    ) -> Vec<([i64; 3], i64)> {
        let mut all = Vec::with_capacity(modules.len());
        for module in modules {
            let mut waiting = self
                .count(
                    module,
                    "SELECT COUNT(*) FROM outbox WHERE published_at IS NULL",
                )
                .await
                + self.count(module, "SELECT COUNT(*) FROM bus_queue").await;
            for (m, sql) in also_waiting {
                if m == module {
                    waiting += self.count(module, sql).await;
                }
            }
            all.push((
                [
                    self.count(module, "SELECT COUNT(*) FROM outbox").await,
                    self.count(module, "SELECT COUNT(*) FROM inbox").await,
                    self.count(module, "SELECT COUNT(*) FROM dead_letters")
                        .await,
                ],
                waiting,
            ));
        }
        all
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    /// The admin port's `/metrics`, in the Prometheus text format.
    pub async fn scrape(&self) -> Reply {
        read(
            self.client
                .get(format!("{}/metrics", self.admin_address))
                .send()
                .await,
        )
        .await
    }

    /// A token this app accepts, for `roles` and `subject`.
    pub fn token(&self, roles: &[Role], subject: &str) -> String {
        token(&self.settings, roles, subject)
    }

    /// Sends a request with `token` as its bearer token (none when `None`) and `body` as
    /// JSON.
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Reply {
        let mut request = self.anonymous.request(method, self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        read(request.send().await).await
    }

    pub async fn get(&self, path: &str) -> Reply {
        read(self.client.get(self.url(path)).send().await).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Reply {
        read(self.client.post(self.url(path)).json(body).send().await).await
    }

    pub async fn post_empty(&self, path: &str) -> Reply {
        read(self.client.post(self.url(path)).send().await).await
    }

    pub async fn patch(&self, path: &str, body: &Value) -> Reply {
        read(self.client.patch(self.url(path)).json(body).send().await).await
    }

    /// Sends a raw body with the given content type.
    pub async fn send_raw(
        &self,
        method: reqwest::Method,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> Reply {
        read(
            self.client
                .request(method, self.url(path))
                .header("content-type", content_type)
                .body(body)
                .send()
                .await,
        )
        .await
    }

    /// Stops the app as SIGTERM would and waits until it has drained; returns its
    /// database so another app can start on it.
    pub async fn stop(self) -> TestDatabase {
        self.handle.stop(true).await;
        match self.served.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("the app stopped with an error: {e:#}"),
            Err(e) => panic!("the app task failed: {e}"),
        }
        self.db
    }
}

/// An HTTP answer, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
    pub text: String,
}

impl Reply {
    /// The `error.fields` keys of an error answer, sorted.
    pub fn error_fields(&self) -> Vec<String> {
        let mut fields: Vec<String> = self.body["error"]["fields"]
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default();
        fields.sort();
        fields
    }

    pub fn error_code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Panics with the body when the status is not `expected`.
    #[track_caller]
    pub fn expect_status(&self, expected: u16) -> &Self {
        assert_eq!(
            self.status, expected,
            "unexpected status; body: {}",
            self.text
        );
        self
    }
}

/// A module's store (its database and outbox) on the database `settings` name, opened
/// apart from any app: for tests that drive a module's use cases after its app stopped.
pub async fn module_store(
    settings: &runtime::config::DatabaseSettings,
    module: &'static str,
) -> module_api::Store {
    let db = runtime::db::connect_module(settings, module)
        .await
        .unwrap_or_else(|e| panic!("connect to {module}'s database: {e:#}"));
    module_api::Store::new(db, messaging::outbox::Outbox::new(module))
}

/// Reads a whole answer; a request that does not reach the app fails the test.
pub async fn read(result: reqwest::Result<reqwest::Response>) -> Reply {
    let response = result.expect("the request reaches the app");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.expect("the body is readable");
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Reply {
        status,
        headers,
        body,
        text,
    }
}

/// Removes every key of a Redis namespace (on the machine's Redis) when dropped: a test
/// that shares a namespace between processes of its own leaves nothing behind.
pub struct RedisKeys(pub String);

impl Drop for RedisKeys {
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
