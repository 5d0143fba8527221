//! What a module gives the host: its name, its migrations, its settings check, and, once
//! started on its own database, the routes it serves, the handlers of the events it
//! consumes and any background work of its own.

use std::sync::Arc;

use actix_web::web;
use async_trait::async_trait;
use contracts::Event;
use futures::future::BoxFuture;
use kernel::FieldErrors;
use messaging::{Handler, Handling, Incoming, Prune, Store, Tx};
use sea_orm::{DatabaseConnection, DbErr};
use tokio_util::sync::CancellationToken;

/// A module of the system. The app lists the modules it knows; configuration says which of
/// them run in this process.
#[async_trait]
pub trait Module: Send + Sync + 'static {
    /// The module's name: its URL prefix (`/api/<name>`), schema, role and SQLite file.
    fn name(&self) -> &'static str;

    /// Checks the module's own settings table (`[modules.<name>]`); paths are relative to it.
    /// `environment` is the one the settings were loaded for: `production` may be stricter.
    fn check_settings(
        &self,
        _settings: &serde_json::Value,
        _environment: &str,
    ) -> Result<(), FieldErrors> {
        Ok(())
    }

    /// Brings the module's schema up to date on `conn`, whose unqualified names resolve to
    /// the module's own schema.
    async fn migrate(&self, conn: &DatabaseConnection) -> Result<(), DbErr>;

    /// The names of the module's migrations, in order: what a schema brought up to date
    /// by [`Module::migrate`] has recorded as applied.
    fn migrations(&self) -> Vec<String>;

    /// Starts the module on its own database.
    async fn start(&self, ctx: ModuleContext) -> anyhow::Result<StartedModule>;

    /// The OpenAPI description of the module's routes (full paths, `/api/<name>/...`),
    /// generated from the annotations beside its handlers.
    fn openapi(&self) -> utoipa::openapi::OpenApi {
        utoipa::openapi::OpenApi::default()
    }
}

/// What the host hands a module when starting it.
pub struct ModuleContext {
    /// The module's database and outbox: where its transactions begin and publish.
    pub store: Store,
    /// The module's settings table, already checked by [`Module::check_settings`].
    pub settings: serde_json::Value,
    /// The environment the settings were loaded for (`local`, `test`, `production`).
    pub environment: String,
}

/// Work a module runs in the background until the token is cancelled (at shutdown, after
/// HTTP has drained).
pub type BackgroundTask = Box<dyn FnOnce(CancellationToken) -> BoxFuture<'static, ()> + Send>;

/// A running module, as the host sees it.
pub struct StartedModule {
    /// Mounted under `/api/<name>`.
    pub routes: Arc<dyn Fn(&mut web::ServiceConfig) + Send + Sync>,
    /// The handlers of the events it consumes, registered with [`StartedModule::on`];
    /// together they must cover exactly the module's rows of `contracts::SUBSCRIPTIONS`.
    pub handlers: Vec<Arc<dyn Handler>>,
    pub tasks: Vec<BackgroundTask>,
    /// The module's own tables its cleaner prunes beside the outbox and inbox, every
    /// `messaging.cleanup_interval_secs`.
    pub prunes: Vec<(&'static str, Prune)>,
}

impl StartedModule {
    pub fn with_routes(routes: impl Fn(&mut web::ServiceConfig) + Send + Sync + 'static) -> Self {
        Self {
            routes: Arc::new(routes),
            handlers: Vec::new(),
            tasks: Vec::new(),
            prunes: Vec::new(),
        }
    }

    /// Handles the events of type `E` with `handler`, under `name`, the handler's inbox
    /// key (`catalog.reserve_stock`): a stable, declared string, never a Rust path. The
    /// handler gets the consumer's transaction and the batch's events of type `E`,
    /// decoded, each with its cause; see [`messaging::on`] for why it is written as a
    /// closure that boxes the future of a use case:
    /// `.on::<OrderPlacedV1>("catalog.reserve_stock", |tx, orders| Box::pin(reserve(tx, orders)))`.
    pub fn on<E>(
        mut self,
        name: &'static str,
        handler: impl for<'a> Fn(&'a mut Tx, Vec<Incoming<E>>) -> Handling<'a> + Send + Sync + 'static,
    ) -> Self
    where
        E: Event + Send + Sync + 'static,
    {
        self.handlers.push(messaging::on(name, handler));
        self
    }

    /// [`StartedModule::on`] for a handler that takes the batch's events one at a time,
    /// in batch order, in the same transaction (see [`messaging::on_each`]).
    pub fn on_each<E>(
        mut self,
        name: &'static str,
        handler: impl for<'a> Fn(&'a mut Tx, Incoming<E>) -> Handling<'a> + Send + Sync + 'static,
    ) -> Self
    where
        E: Event + Send + Sync + 'static,
    {
        self.handlers.push(messaging::on_each(name, handler));
        self
    }

    /// Deletes a table's expired rows on every pass of the module's cleaner.
    pub fn prune(mut self, table: &'static str, prune: Prune) -> Self {
        self.prunes.push((table, prune));
        self
    }

    pub fn task(
        mut self,
        task: impl FnOnce(CancellationToken) -> BoxFuture<'static, ()> + Send + 'static,
    ) -> Self {
        self.tasks.push(Box::new(task));
        self
    }
}

/// Reads a module's settings table into its typed form, naming the key at fault.
pub fn parse_settings<T: serde::de::DeserializeOwned>(
    settings: &serde_json::Value,
) -> Result<T, FieldErrors> {
    serde_path_to_error::deserialize(settings).map_err(|e| {
        let mut errors = FieldErrors::new();
        let path = e.path().to_string();
        errors.add(
            if path == "." { "(table)".into() } else { path },
            "invalid",
            e.inner().to_string(),
        );
        errors
    })
}
