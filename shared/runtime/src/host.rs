//! The host: the part of `main` that the monolith and an extracted service share. Given the
//! settings and the modules this binary knows, it prepares each enabled module's schema,
//! opens its pool, starts it, serves its routes with probes and request ids, and on SIGTERM
//! drains requests, then background work, then closes the pools.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::{Server, ServerHandle};
use actix_web::middleware::from_fn;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tracing_actix_web::TracingLogger;

use crate::config::Settings;
use crate::db::{self, ModuleDb};
use crate::http::{ApiError, BodyLimit, RootSpan, request_id_middleware};
use crate::module::{Module, ModuleContext, StartedModule};
use crate::probes::{self, Probe, Probes};

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
                if let Err(errors) = module.check_settings(&settings.modules.section(name)) {
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

/// Creates or updates the schema (and, on PostgreSQL, the role) of each module.
pub async fn migrate(settings: &Settings, modules: &[Arc<dyn Module>]) -> anyhow::Result<()> {
    for module in modules {
        let m = module.clone();
        db::prepare_module(&settings.database, module.name(), async move |conn| {
            m.migrate(conn).await
        })
        .await?;
        tracing::info!(module = module.name(), "schema up to date");
    }
    Ok(())
}

/// A built application: bound to its port, not yet serving.
pub struct Application {
    port: u16,
    server: Server,
    dbs: Vec<ModuleDb>,
    background: CancellationToken,
}

impl Application {
    pub async fn build(settings: Settings, available: &[Arc<dyn Module>]) -> anyhow::Result<Self> {
        let modules = select_modules(&settings, available)?;
        if settings.database.migrate_on_start {
            migrate(&settings, &modules).await?;
        }
        let mut dbs = Vec::new();
        let mut started: Vec<(&'static str, StartedModule)> = Vec::new();
        let mut probes: Vec<Arc<dyn Probe>> = Vec::new();
        for module in &modules {
            let db = db::connect_module(&settings.database, module.name()).await?;
            probes.push(Arc::new(probes::DatabaseProbe(db.clone())));
            let ctx = ModuleContext {
                db: db.clone(),
                settings: settings.modules.section(module.name()),
            };
            let parts = module
                .start(ctx)
                .await
                .with_context(|| format!("failed to start module {}", module.name()))?;
            dbs.push(db);
            started.push((module.name(), parts));
        }

        let address = format!("{}:{}", settings.server.host, settings.server.port);
        let listener =
            TcpListener::bind(&address).with_context(|| format!("failed to bind {address}"))?;
        let port = listener.local_addr()?.port();
        let server = http_server(&settings, listener, started, Probes::new(probes))?;
        tracing::info!(
            address = %format!("http://{}:{port}", settings.server.host),
            modules = ?modules.iter().map(|m| m.name()).collect::<Vec<_>>(),
            backend = %settings.database.backend,
            "listening"
        );
        Ok(Self {
            port,
            server,
            dbs,
            background: CancellationToken::new(),
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the server as SIGTERM would: stop accepting, drain in-flight requests.
    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    /// Serves until SIGTERM/SIGINT (or [`ServerHandle::stop`]), then drains in order: HTTP
    /// requests, background work, then the database pools.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let served = self.server.await;
        self.background.cancel();
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

fn http_server(
    settings: &Settings,
    listener: TcpListener,
    modules: Vec<(&'static str, StartedModule)>,
    probes: Probes,
) -> anyhow::Result<Server> {
    let limit = web::Data::new(BodyLimit(settings.server.max_body_bytes));
    let probes = web::Data::new(probes);
    let modules = Arc::new(modules);
    let mut server = HttpServer::new(move || {
        let modules = modules.clone();
        App::new()
            .wrap(TracingLogger::<RootSpan>::new())
            .wrap(from_fn(request_id_middleware))
            .app_data(limit.clone())
            .app_data(probes.clone())
            .configure(probes::routes)
            .configure(move |cfg| {
                for (name, module) in modules.iter() {
                    let routes = module.routes.clone();
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

async fn no_route(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::not_found(
        "no_route",
        format!("there is no route for {} {}", req.method(), req.path()),
    ))
}
