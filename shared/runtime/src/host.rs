//! The host: the part of `main` that the monolith and an extracted service share. Given the
//! settings and the modules this binary knows, it prepares each enabled module's schema,
//! opens its pool, picks the bus, starts each module, serves its routes with probes and
//! request ids, serves `/metrics` on the admin port, and runs each module's relay,
//! consumer, cleaner and background tasks, and the metrics sampler. On SIGTERM it drains
//! HTTP requests, then stops the background work (each worker finishes the batch in
//! hand), then the admin port (scrapes see the drain to its end), then closes the pools.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::{Server, ServerHandle};
use actix_web::middleware::{DefaultHeaders, from_fn};
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use anyhow::Context;
use messaging::hybrid_bus::HybridBus;
use messaging::local_bus::LocalBus;
use messaging::outbox::{Outbox, Relay};
use messaging::{
    Consumer, EventBus, Faults, RedisBus, RedisConfig, Store, SubscriberSpec, Subscription,
};
use metrics_exporter_prometheus::PrometheusHandle;
use module_api::{
    ApiError, Authenticate, BackgroundTask, BodyDeadline, BodyLimit, Module, ModuleContext,
    StartedModule,
};
use secrecy::ExposeSecret;
use store::ModuleDb;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use tracing_actix_web::TracingLogger;

use crate::admin::{self, Admin, ModuleLetters};
use crate::auth::Authenticator;
use crate::config::{BusKind, Settings};
use crate::db;
use crate::http::{RootSpan, request_id_middleware};
use crate::openapi::{self, Document};
use crate::probes::{self, Probe, Probes};
use crate::prometheus;

/// What a test may change about how an application is built. Production uses the default.
#[derive(Clone, Default)]
pub struct Hooks {
    /// Crash points and injected handler failures.
    pub faults: Faults,
    /// A bus to use instead of the one the settings choose (a recording bus, say).
    pub bus: Option<Arc<dyn EventBus>>,
    /// Wraps the bus the settings choose (to deliver every event twice, say).
    pub wrap_bus: Option<BusWrapper>,
}

/// Turns a bus into another (see [`Hooks::wrap_bus`]).
pub type BusWrapper = Arc<dyn Fn(Arc<dyn EventBus>) -> Arc<dyn EventBus> + Send + Sync>;

/// Picks the modules the settings enable, in the order the settings list them, and checks
/// their settings. Refuses a name this binary does not know.
pub fn select_modules(
    settings: &Settings,
    available: &[Arc<dyn Module>],
) -> anyhow::Result<Vec<Arc<dyn Module>>> {
    let mut selected = Vec::new();
    let mut problems = Vec::new();
    for name in &settings.modules.enabled {
        match available.iter().find(|m| m.name() == name) {
            Some(module) => {
                if let Err(errors) =
                    module.check_settings(&settings.modules.section(name), &settings.environment)
                {
                    for (path, error) in errors.iter() {
                        problems.push(format!("modules.{name}.{path}: {}", error.message));
                    }
                }
                selected.push(module.clone());
            }
            None => problems.push(format!(
                "modules.enabled: this binary has no module {name:?} (it has: {})",
                available
                    .iter()
                    .map(|m| m.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }
    for section in settings.modules.sections.keys() {
        if !available.iter().any(|m| m.name() == section) {
            problems.push(format!("modules.{section}: no such module"));
        }
    }
    if problems.is_empty() {
        Ok(selected)
    } else {
        anyhow::bail!("invalid settings: {}", problems.join("; "))
    }
}

/// The highest open-file limit [`raise_open_file_limit`] asks for: Linux's default
/// `fs.nr_open`, above which the kernel refuses any limit.
const MOST_OPEN_FILES: u64 = 1 << 20;

/// Raises the process's soft limit on open files to its hard limit (at most
/// [`MOST_OPEN_FILES`]). Every connection, the HTTP clients' and the pools' alike, is a
/// descriptor, and a soft limit left at a distribution's default of 1,024 makes the server
/// stop accepting connections near a thousand, long before memory or the cores run out. The
/// limit the server runs with is logged; one it cannot raise is a warning. Returns the
/// limit in force (0 when it cannot be read).
pub fn raise_open_file_limit() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok(limits) => limits,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the open-file limit");
            return 0;
        }
    };
    let wanted = hard.min(MOST_OPEN_FILES);
    if soft >= wanted {
        tracing::info!(open_files = soft, "open-file limit");
        return soft;
    }
    match setrlimit(Resource::RLIMIT_NOFILE, wanted, hard) {
        Ok(()) => {
            tracing::info!(
                open_files = wanted,
                was = soft,
                "open-file limit raised to the hard limit"
            );
            wanted
        }
        Err(e) => {
            tracing::warn!(
                open_files = soft,
                hard,
                error = %e,
                "cannot raise the open-file limit: connections beyond it are refused"
            );
            soft
        }
    }
}

/// Creates or updates the schema (and, on PostgreSQL, the role) of each module.
///
/// Processes migrating other databases of the same PostgreSQL cluster at the same moment
/// (the monolith and an extracted service starting together) share its roles and can
/// deadlock on them; PostgreSQL then aborts one, which tries again after a pause.
pub async fn migrate(settings: &Settings, modules: &[Arc<dyn Module>]) -> anyhow::Result<()> {
    const ATTEMPTS: u32 = 5;
    for module in modules {
        let mut attempt = 1;
        loop {
            let m = module.clone();
            let prepared =
                db::prepare_module(&settings.database, module.name(), async move |conn| {
                    m.migrate(conn).await
                })
                .await;
            match prepared {
                Err(e) if attempt < ATTEMPTS && db::is_deadlock(&e) => {
                    tracing::warn!(module = module.name(), attempt, error = %format!("{e:#}"), "migrating deadlocked with another process; trying again");
                    tokio::time::sleep(std::time::Duration::from_millis(200 * u64::from(attempt)))
                        .await;
                    attempt += 1;
                }
                prepared => break prepared?,
            }
        }
        tracing::info!(module = module.name(), "schema up to date");
    }
    Ok(())
}

/// With `database.migrate_on_start` off, another step (`migrate`, a migration Job) brings
/// the schemas up to date. Starting on a schema it has not finished would run new code on
/// old tables, so the process refuses to start, naming the module and what is missing; the
/// orchestrator starts it again until the migrations ran.
async fn check_schema(module: &dyn Module, db: &ModuleDb) -> anyhow::Result<()> {
    let name = module.name();
    let applied: HashSet<String> =
        match store::query(db.conn(), "SELECT version FROM seaql_migrations", vec![]).await {
            Ok(rows) => rows
                .iter()
                .filter_map(|r| r.try_get::<String>("", "version").ok())
                .collect(),
            // No tracking table (or none this role can read): nothing counts as applied.
            Err(e) => {
                tracing::warn!(module = name, error = %e, "reading the applied migrations failed");
                HashSet::new()
            }
        };
    let expected = module.migrations();
    let missing: Vec<&String> = expected.iter().filter(|m| !applied.contains(*m)).collect();
    if let Some(first) = missing.first() {
        anyhow::bail!(
            "{name}'s schema is not up to date: {} of its {} migrations not applied (the first: {first}); \
             database.migrate_on_start is off, so run `migrate` before starting",
            missing.len(),
            expected.len()
        );
    }
    Ok(())
}

/// A built application: bound to its ports, not yet serving.
pub struct Application {
    port: u16,
    server: Server,
    admin_port: u16,
    admin_server: Server,
    dbs: Vec<ModuleDb>,
    workers: Vec<Worker>,
    bus: Arc<dyn EventBus>,
}

enum Worker {
    Relay(Relay),
    Consumer(Consumer, Subscription),
    Cleaner(
        ModuleDb,
        messaging::MessagingSettings,
        Vec<(&'static str, messaging::Prune)>,
    ),
    Task(&'static str, BackgroundTask),
    Sampler(Vec<ModuleDb>, PrometheusHandle),
    Statistics(Vec<ModuleDb>, Duration),
    /// Hands back what the C code (SQLite) freed: [`crate::c_heap`].
    CHeap,
}

/// The bus the settings ask for, over the modules of this process.
async fn choose_bus(settings: &Settings, dbs: &[ModuleDb]) -> anyhow::Result<Arc<dyn EventBus>> {
    match settings.bus.kind {
        BusKind::Local => {
            let mut bus = LocalBus::new(settings.bus.instance_name(), settings.messaging.clone());
            for db in dbs {
                if !contracts::subscriptions_of(db.module()).is_empty() {
                    bus.add_consumer(db.clone());
                }
            }
            let here: Vec<&str> = dbs.iter().map(|d| d.module()).collect();
            bus.check_routes(&here).context(
                "bus.kind = local needs every consumer of this process's events to run here",
            )?;
            Ok(Arc::new(bus))
        }
        BusKind::Redis => {
            let bus = RedisBus::connect(redis_config(settings), settings.messaging.clone()).await?;
            Ok(Arc::new(bus))
        }
        BusKind::Hybrid => {
            let bus =
                HybridBus::connect(redis_config(settings), settings.messaging.clone(), dbs).await?;
            Ok(Arc::new(bus))
        }
    }
}

/// Where events between `module` and the modules it trades events with wait in the Redis
/// these settings name (delivered to a consumer group and not acknowledged, or not yet
/// read), one line per group and stream: what `move-data --in` checks before a module
/// comes back, since once inlined those events travel in-process and nothing would read
/// what was left in Redis.
pub async fn waiting_in_redis(settings: &Settings, module: &str) -> anyhow::Result<Vec<String>> {
    let bus = tokio::time::timeout(
        Duration::from_secs(10),
        RedisBus::connect(redis_config(settings), settings.messaging.clone()),
    )
    .await
    .map_err(|_| anyhow::anyhow!("Redis at {} does not answer", settings.bus.redis.url))?
    .with_context(|| format!("cannot check what waits in Redis for or from {module}"))?;
    let mut routes: Vec<(&str, &str)> = contracts::subscribers_of(module)
        .into_iter()
        .map(|consumer| (module, consumer))
        .collect();
    let producers: BTreeSet<&str> = contracts::subscriptions_of(module)
        .into_iter()
        .map(contracts::source_of)
        .collect();
    routes.extend(producers.into_iter().map(|producer| (producer, module)));
    let mut waiting = Vec::new();
    for (producer, consumer) in routes {
        for group in bus.waiting_between(producer, consumer).await? {
            waiting.push(group.to_string());
        }
    }
    Ok(waiting)
}

fn redis_config(settings: &Settings) -> RedisConfig {
    let redis = &settings.bus.redis;
    RedisConfig {
        url: redis.url.clone(),
        username: Some(redis.username.clone()).filter(|u| !u.is_empty()),
        password: redis
            .password
            .as_ref()
            .map(|p| p.expose_secret().to_owned()),
        namespace: redis.namespace.clone(),
        partitions: redis.partitions,
        instance: settings.bus.instance_name(),
    }
}

/// Checks that a module's handlers cover exactly what the contracts say it consumes.
fn check_handlers(name: &str, parts: &StartedModule) -> anyhow::Result<()> {
    let handled: BTreeSet<&str> = parts
        .handlers
        .iter()
        .flat_map(|h| h.event_types().iter().copied())
        .collect();
    let declared: BTreeSet<&str> = contracts::subscriptions_of(name).into_iter().collect();
    anyhow::ensure!(
        handled == declared,
        "module {name} handles {handled:?} but contracts::SUBSCRIPTIONS says it consumes {declared:?}"
    );
    let mut registered = BTreeSet::new();
    for handler in &parts.handlers {
        for event_type in handler.event_types() {
            anyhow::ensure!(
                registered.insert((handler.name(), *event_type)),
                "module {name} has two handlers named {} for {event_type}",
                handler.name()
            );
        }
    }
    Ok(())
}

impl Application {
    pub async fn build(settings: Settings, available: &[Arc<dyn Module>]) -> anyhow::Result<Self> {
        Self::build_with(settings, available, Hooks::default()).await
    }

    pub async fn build_with(
        settings: Settings,
        available: &[Arc<dyn Module>],
        hooks: Hooks,
    ) -> anyhow::Result<Self> {
        let modules = select_modules(&settings, available)?;
        let authenticator = Authenticator::from_settings(&settings)?;
        authenticator.fetch_keys().await?;
        let metrics = prometheus::install()?;
        if settings.database.migrate_on_start {
            migrate(&settings, &modules).await?;
        }
        let mut dbs = Vec::new();
        for module in &modules {
            let db = db::connect_module(&settings.database, module.name()).await?;
            if !settings.database.migrate_on_start {
                check_schema(module.as_ref(), &db).await?;
            }
            dbs.push(db);
        }
        let bus = match &hooks.bus {
            Some(bus) => bus.clone(),
            None => choose_bus(&settings, &dbs).await?,
        };
        let bus = match &hooks.wrap_bus {
            Some(wrap) => wrap(bus),
            None => bus,
        };
        let instance = settings.bus.instance_name();
        let mut routes: Vec<(&'static str, Routes)> = Vec::new();
        let mut probes: Vec<Arc<dyn Probe>> = Vec::new();
        let mut workers = Vec::new();
        let mut letters = HashMap::new();
        for (module, db) in modules.iter().zip(&dbs) {
            let name = module.name();
            probes.push(Arc::new(probes::DatabaseProbe(db.clone())));
            let outbox = Outbox::new(name);
            let ctx = ModuleContext {
                store: Store::new(db.clone(), outbox.clone()),
                settings: settings.modules.section(name),
                environment: settings.environment.clone(),
            };
            let mut parts = module
                .start(ctx)
                .await
                .with_context(|| format!("failed to start module {name}"))?;
            check_handlers(name, &parts)?;
            workers.push(Worker::Relay(Relay {
                db: db.clone(),
                outbox: outbox.clone(),
                bus: bus.clone(),
                settings: settings.messaging.clone(),
                instance: instance.clone(),
                faults: hooks.faults.clone(),
            }));
            let replays = Arc::new(Notify::new());
            if !parts.handlers.is_empty() {
                let subscription = bus
                    .subscribe(SubscriberSpec {
                        module: name,
                        event_types: contracts::subscriptions_of(name),
                        max_in_flight: settings.messaging.max_in_flight,
                    })
                    .await
                    .with_context(|| format!("failed to subscribe module {name}"))?;
                let consumer = Consumer {
                    db: db.clone(),
                    outbox,
                    handlers: std::mem::take(&mut parts.handlers),
                    settings: settings.messaging.clone(),
                    faults: hooks.faults.clone(),
                    replays: replays.clone(),
                    progress: messaging::Progress::new(name),
                };
                probes.push(Arc::new(probes::ConsumerProbe(consumer.progress.clone())));
                workers.push(Worker::Consumer(consumer, subscription));
            }
            workers.push(Worker::Cleaner(
                db.clone(),
                settings.messaging.clone(),
                std::mem::take(&mut parts.prunes),
            ));
            for task in std::mem::take(&mut parts.tasks) {
                workers.push(Worker::Task(name, task));
            }
            letters.insert(
                name,
                ModuleLetters {
                    db: db.clone(),
                    replays,
                },
            );
            routes.push((name, parts.routes));
        }
        probes.push(Arc::new(probes::BusProbe(bus.clone())));
        workers.push(Worker::Sampler(dbs.clone(), metrics.clone()));
        workers.push(Worker::Statistics(
            dbs.clone(),
            Duration::from_millis(settings.database.postgres.refresh_statistics_ms),
        ));
        workers.push(Worker::CHeap);
        let admin = settings.operator.token.clone().map(|token| Admin {
            token,
            modules: letters,
            failures: Default::default(),
        });

        let address = format!("{}:{}", settings.server.host, settings.server.port);
        let listener =
            TcpListener::bind(&address).with_context(|| format!("failed to bind {address}"))?;
        let port = listener.local_addr()?.port();
        let document = openapi::document(modules.iter().map(|m| m.openapi()))
            .to_json()
            .context("failed to serialize the OpenAPI document")?;
        let server = http_server(
            &settings,
            listener,
            routes,
            Probes::new(probes),
            admin,
            (authenticator, Document(document)),
        )?;
        let admin_address = format!("{}:{}", settings.server.host, settings.server.admin_port);
        let admin_listener = TcpListener::bind(&admin_address).with_context(|| {
            format!("failed to bind the admin port {admin_address} (server.admin_port)")
        })?;
        let admin_port = admin_listener.local_addr()?.port();
        let admin_server = admin_server(admin_listener, metrics)?;
        tracing::info!(
            address = %format!("http://{}:{port}", settings.server.host),
            metrics = %format!("http://{}:{admin_port}/metrics", settings.server.host),
            modules = ?modules.iter().map(|m| m.name()).collect::<Vec<_>>(),
            backend = %settings.database.backend,
            bus = bus.kind(),
            instance = %instance,
            "listening"
        );
        Ok(Self {
            port,
            server,
            admin_port,
            admin_server,
            dbs,
            workers,
            bus,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The port serving `/metrics`.
    pub fn admin_port(&self) -> u16 {
        self.admin_port
    }

    pub fn bus(&self) -> Arc<dyn EventBus> {
        self.bus.clone()
    }

    /// Stops the server as SIGTERM would: stop accepting, drain in-flight requests.
    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    /// Serves until SIGTERM/SIGINT (or [`ServerHandle::stop`]), then drains in order: HTTP
    /// requests, background work, then the database pools. Dropping this future (a test
    /// simulating a crash) aborts every background task where it stands.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let cancel = CancellationToken::new();
        let mut tasks = JoinSet::new();
        for worker in self.workers {
            let token = cancel.child_token();
            match worker {
                Worker::Relay(relay) => {
                    let span = tracing::info_span!("relay", module = relay.db.module());
                    tasks.spawn(relay.run(token).instrument(span));
                }
                Worker::Consumer(consumer, subscription) => {
                    let span = tracing::info_span!("consumer", module = consumer.db.module());
                    tasks.spawn(consumer.run(subscription, token).instrument(span));
                }
                Worker::Cleaner(db, settings, prunes) => {
                    tasks.spawn(messaging::run_cleaner(db, settings, prunes, token));
                }
                Worker::Task(module, task) => {
                    let span = tracing::info_span!("task", module);
                    tasks.spawn(task(token).instrument(span));
                }
                Worker::Sampler(dbs, handle) => {
                    tasks.spawn(prometheus::sample(dbs, handle, token));
                }
                Worker::Statistics(dbs, every) => {
                    tasks.spawn(crate::statistics::keep(dbs, every, token));
                }
                Worker::CHeap => {
                    tasks.spawn(crate::c_heap::keep_trimmed(token));
                }
            }
        }
        let admin = StopOnDrop(self.admin_server.handle());
        let admin_served = tokio::spawn(self.admin_server);
        let served = self.server.await;
        cancel.cancel();
        let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!("background work did not stop in time; aborting it");
            tasks.abort_all();
        }
        admin.0.stop(true).await;
        match admin_served.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "the admin port failed"),
            Err(e) => tracing::warn!(error = %e, "the admin port's task failed"),
        }
        for db in self.dbs {
            let module = db.module();
            if let Err(e) = db.close().await {
                tracing::warn!(module, error = %e, "closing the pool failed");
            }
        }
        tracing::info!("stopped");
        served.context("the HTTP server failed")
    }
}

/// Stops a server when dropped: the admin port runs in a task of its own, and must not
/// outlive an application whose run was dropped (a test simulating a crash).
struct StopOnDrop(ServerHandle);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        // The command is sent at once; nobody needs to wait for it here.
        drop(self.0.stop(false));
    }
}

type Routes = Arc<dyn Fn(&mut web::ServiceConfig) + Send + Sync>;

/// How long background work may take to finish its batch at shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

fn http_server(
    settings: &Settings,
    listener: TcpListener,
    modules: Vec<(&'static str, Routes)>,
    probes: Probes,
    admin: Option<Admin>,
    (authenticator, document): (Authenticator, Document),
) -> anyhow::Result<Server> {
    // Routes find the verifier by its trait (`module_api::RouteAccess`).
    let authenticator: web::Data<dyn Authenticate> =
        web::Data::from(Arc::new(authenticator) as Arc<dyn Authenticate>);
    let document = web::Data::new(document);
    let limit = web::Data::new(BodyLimit(settings.server.max_body_bytes));
    let deadline = web::Data::new(BodyDeadline(Duration::from_millis(
        settings.server.body_timeout_ms,
    )));
    let probes = web::Data::new(probes);
    let admin = admin.map(web::Data::new);
    let modules = Arc::new(modules);
    let mut server = HttpServer::new(move || {
        let modules = modules.clone();
        let admin = admin.clone();
        App::new()
            // Browsers must not guess a content type (a JSON error rendered as HTML).
            .wrap(DefaultHeaders::new().add(("X-Content-Type-Options", "nosniff")))
            .wrap(from_fn(prometheus::record_http))
            .wrap(TracingLogger::<RootSpan>::new())
            .wrap(from_fn(request_id_middleware))
            .app_data(limit.clone())
            .app_data(deadline.clone())
            .app_data(authenticator.clone())
            .app_data(probes.clone())
            .app_data(document.clone())
            .configure(probes::routes)
            .configure(openapi::routes)
            .configure(move |cfg| {
                if let Some(admin) = admin {
                    cfg.app_data(admin);
                    admin::routes(cfg);
                }
            })
            .configure(move |cfg| {
                for (name, routes) in modules.iter() {
                    let routes = routes.clone();
                    cfg.service(web::scope(&format!("/api/{name}")).configure(move |c| routes(c)));
                }
            })
            .default_service(web::to(no_route))
    })
    .keep_alive(Duration::from_secs(settings.server.keep_alive_secs))
    .shutdown_timeout(settings.server.shutdown_timeout_secs)
    .listen(listener)?;
    if settings.server.workers > 0 {
        server = server.workers(settings.server.workers);
    }
    Ok(server.run())
}

/// The admin port: `/metrics` alone, on one worker. It stops with the application (see
/// [`Application::run_until_stopped`]), not on its own signal handling, so it keeps
/// answering while the main port drains.
fn admin_server(listener: TcpListener, metrics: PrometheusHandle) -> anyhow::Result<Server> {
    let metrics = web::Data::new(metrics);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(metrics.clone())
            .route("/metrics", web::get().to(prometheus::endpoint))
            .default_service(web::to(no_route))
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(1)
    .listen(listener)?;
    Ok(server.run())
}

async fn no_route(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::not_found(
        "no_route",
        format!("there is no route for {} {}", req.method(), req.path()),
    ))
}
