//! `cargo xtask soak`: the order journey under sustained load and injected faults.
//!
//! Each scenario starts the release binary on loopback ports against a fresh database
//! (private PostgreSQL and Redis servers for the scenarios that stop them), places orders
//! over HTTP at a steady rate, injects its fault, waits for the backlog to drain within a
//! stated bound, and ends with the same audit of the module databases (`audit.rs`). It
//! prints a table, writes JSON, and exits non-zero naming each failed check with numbers.
//! Every run is bounded in count and time and stops by itself.

mod audit;
mod load;
mod provider;
mod scenarios;
mod servers;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

use crate::harness::{self, free_port, loopback_only, target_dir, wait_ready_within};
use audit::{Check, Dbs, Place, Streams};
use load::{OrderPlan, Run};
use servers::{Node, PrivatePostgres, PrivateRedis};

#[derive(clap::Args, Debug, Clone)]
pub(crate) struct SoakArgs {
    /// Which scenario to run; `all` runs every one in turn.
    #[arg(long, value_enum, default_value = "all")]
    pub(crate) scenario: Scenario,
    /// Runs the short subset meant for CI: a 15 s soak on PostgreSQL with the in-process
    /// bus, then sigkill, pg-restart and payment-outage (a 6 s outage at most), on the
    /// debug build that `cargo test` already made.
    #[arg(long)]
    pub(crate) ci: bool,
    /// Runs only on this backend (the soak scenario runs on both when unset; the fault
    /// scenarios on PostgreSQL).
    #[arg(long, value_enum)]
    pub(crate) backend: Option<Backend>,
    /// Runs only on this bus (soak and replica-kill run on both when unset).
    #[arg(long, value_enum)]
    pub(crate) bus: Option<BusKind>,
    /// Orders placed per second.
    #[arg(long, default_value_t = 200)]
    pub(crate) rate: u32,
    /// Sends orders from this many clients back to back, as fast as the app answers,
    /// instead of at `--rate` (a burst, to build a backlog).
    #[arg(long)]
    pub(crate) connections: Option<usize>,
    /// How long the soak scenario's steady load lasts, in seconds.
    #[arg(long, default_value_t = 60)]
    pub(crate) secs: u64,
    /// How long each fault scenario loads the app before its fault, in seconds.
    #[arg(long, default_value_t = 10)]
    pub(crate) warmup_secs: u64,
    /// How long the load goes on after a fault ends, in seconds.
    #[arg(long, default_value_t = 5)]
    pub(crate) after_secs: u64,
    /// The bound on draining: the backlog must be gone this many seconds after the load
    /// stops, or the run fails.
    #[arg(long, default_value_t = 60)]
    pub(crate) drain_secs: u64,
    /// How long PostgreSQL stays down in pg-restart, in seconds.
    #[arg(long, default_value_t = 8)]
    pub(crate) pg_outage_secs: u64,
    /// How long Redis stays down in redis-outage, in seconds.
    #[arg(long, default_value_t = 20)]
    pub(crate) redis_outage_secs: u64,
    /// How long the fake payment provider stays down in payment-outage, in seconds.
    #[arg(long, default_value_t = 30)]
    pub(crate) payment_outage_secs: u64,
    /// Runs redis-outage on the monolith with every module on the Redis bus instead of
    /// extracting fulfillment (which needs a release build of the service).
    #[arg(long)]
    pub(crate) redis_outage_monolith: bool,
    /// Runs the soak scenario with fulfillment extracted into its own service (a real
    /// `cargo xtask extract` in a scratch copy, release build) and every event on Redis
    /// Streams.
    #[arg(long)]
    pub(crate) extracted: bool,
    /// How long each phase (baseline, then slowed) of slow-module lasts, in seconds.
    #[arg(long, default_value_t = 15)]
    pub(crate) phase_secs: u64,
    /// Product reads per second during slow-module.
    #[arg(long, default_value_t = 100)]
    pub(crate) read_rate: u32,
    /// Orders whose cancel and dispatch are sent at the same instant in races.
    #[arg(long, default_value_t = 60)]
    pub(crate) race_orders: usize,
    /// Distinct products ordered.
    #[arg(long, default_value_t = 50)]
    pub(crate) products: usize,
    /// Requests in flight at once, at most; ticks beyond are counted as skipped.
    #[arg(long, default_value_t = 128)]
    pub(crate) max_in_flight: usize,
    /// The machine's PostgreSQL, for scenarios that do not restart it (loopback only).
    #[arg(long, default_value = "127.0.0.1")]
    pub(crate) pg_host: String,
    #[arg(long, default_value_t = 5432)]
    pub(crate) pg_port: u16,
    /// The machine's Redis, for scenarios that do not stop it (loopback only).
    #[arg(long, default_value = "redis://127.0.0.1:6379/0")]
    pub(crate) redis_url: String,
    /// Which build of the app to run (`--ci` means dev).
    #[arg(long, value_enum)]
    pub(crate) profile: Option<Profile>,
    /// Skips `cargo build` (runs the binaries already built).
    #[arg(long)]
    pub(crate) no_build: bool,
    /// Keeps every run's folder (logs, SQLite files); failed runs keep theirs anyway.
    #[arg(long)]
    pub(crate) keep: bool,
    /// Where to write the JSON report (default: soak-report.json in the target folder).
    #[arg(long)]
    pub(crate) json: Option<PathBuf>,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scenario {
    All,
    Soak,
    PgRestart,
    RedisOutage,
    Sigkill,
    ReplicaKill,
    SlowModule,
    Races,
    PaymentOutage,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    Postgres,
    Sqlite,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BusKind {
    Local,
    Redis,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Profile {
    Dev,
    Release,
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Postgres => "postgres",
            Self::Sqlite => "sqlite",
        })
    }
}

impl std::fmt::Display for BusKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Local => "local",
            Self::Redis => "redis",
        })
    }
}

/// What one scenario run found.
#[derive(Debug, Serialize)]
pub(crate) struct RunReport {
    pub(crate) scenario: String,
    pub(crate) variant: String,
    pub(crate) injected: String,
    pub(crate) load_secs: f64,
    pub(crate) sent: usize,
    pub(crate) accepted: usize,
    /// Placement answers per HTTP status (0: no answer).
    pub(crate) statuses: BTreeMap<u16, usize>,
    pub(crate) skipped_ticks: usize,
    pub(crate) placement_p50_ms: f64,
    pub(crate) placement_p99_ms: f64,
    /// From the end of the injection (or of the load, for the soak) to drained.
    pub(crate) recovery_secs: Option<f64>,
    pub(crate) drain_bound_secs: u64,
    pub(crate) checks: Vec<Check>,
    pub(crate) notes: Vec<String>,
    pub(crate) run_dir: Option<String>,
    pub(crate) passed: bool,
}

impl RunReport {
    fn new(scenario: &str, variant: &str, injected: &str) -> Self {
        Self {
            scenario: scenario.to_owned(),
            variant: variant.to_owned(),
            injected: injected.to_owned(),
            load_secs: 0.0,
            sent: 0,
            accepted: 0,
            statuses: BTreeMap::new(),
            skipped_ticks: 0,
            placement_p50_ms: f64::NAN,
            placement_p99_ms: f64::NAN,
            recovery_secs: None,
            drain_bound_secs: 0,
            checks: Vec::new(),
            notes: Vec::new(),
            run_dir: None,
            passed: false,
        }
    }

    fn check(&mut self, name: &str, ok: bool, detail: impl Into<String>) {
        self.checks.push(Check::new(name, ok, detail));
    }

    fn record_load(&mut self, run: &Run, secs: f64) {
        self.load_secs = secs;
        self.sent = run.outcomes.len();
        self.accepted = run.accepted().len();
        self.statuses = run.statuses();
        self.skipped_ticks = run.skipped;
        let mut latencies = run.latencies(201, 0.0, f64::INFINITY);
        self.placement_p50_ms = harness::percentile(&mut latencies, 50.0);
        self.placement_p99_ms = harness::percentile(&mut latencies, 99.0);
    }
}

/// What every scenario run needs from the command line.
pub(crate) struct Ctx {
    pub(crate) args: SoakArgs,
    pub(crate) binary: PathBuf,
    pub(crate) client: reqwest::Client,
    runs: Mutex<usize>,
}

/// Where the app keeps its data in one run.
pub(crate) enum Store {
    Postgres {
        host: String,
        port: u16,
        database: String,
    },
    Sqlite {
        dir: PathBuf,
    },
}

/// What a scenario asks of its deployment.
#[derive(Clone, Copy)]
pub(crate) struct Shape {
    pub(crate) backend: Backend,
    pub(crate) bus: BusKind,
    /// PostgreSQL of our own (to restart it); else the machine's.
    pub(crate) private_pg: bool,
    /// Redis of our own (to stop it); else the machine's.
    pub(crate) private_redis: bool,
    /// Instances of the whole app sharing the database and bus.
    pub(crate) instances: usize,
    /// fulfillment in its own service (Redis bus, its own database).
    pub(crate) extracted: bool,
    /// Claims' lease, when the scenario needs a shorter one than the default.
    pub(crate) lease_ms: Option<u64>,
    /// Checkout pays through the HTTP adapter, at a fake provider served by the harness.
    pub(crate) fake_provider: bool,
}

impl Shape {
    pub(crate) fn new(backend: Backend, bus: BusKind) -> Self {
        Self {
            backend,
            bus,
            private_pg: false,
            private_redis: false,
            instances: 1,
            extracted: false,
            lease_ms: None,
            fake_provider: false,
        }
    }

    pub(crate) fn variant(&self) -> String {
        let mut v = format!("{}+{}", self.backend, self.bus);
        if self.extracted {
            v.push_str(", fulfillment extracted");
        }
        if self.instances > 1 {
            v.push_str(&format!(", {} instances", self.instances));
        }
        if self.fake_provider {
            v.push_str(", HTTP payment provider");
        }
        v
    }
}

/// The node of an extracted fulfillment service, beside the monolith.
pub(crate) const SERVICE_NODE: &str = "soak-fulfillment";

/// One running deployment: its processes, data and servers.
pub(crate) struct Deployment {
    pub(crate) nodes: Vec<Node>,
    pub(crate) dbs: Dbs,
    pub(crate) streams: Option<Streams>,
    pub(crate) store: Store,
    /// The extracted service's database, if any.
    service_db: Option<String>,
    pub(crate) pg: Option<PrivatePostgres>,
    pub(crate) redis: Option<PrivateRedis>,
    /// The fake payment provider checkout calls, if the scenario wants one.
    pub(crate) provider: Option<provider::FakeProvider>,
    pub(crate) dir: tempfile::TempDir,
    /// The scratch workspace the extracted service runs in.
    _scratch: Option<tempfile::TempDir>,
    /// Units each sku was created with (what the audit expects on hand).
    pub(crate) on_hand: HashMap<String, i64>,
    pub(crate) skus: Vec<String>,
    pub(crate) scarce: String,
}

impl Ctx {
    fn next_run(&self) -> usize {
        let mut n = self.runs.lock().unwrap_or_else(|e| e.into_inner());
        *n += 1;
        *n
    }

    /// Starts a deployment of `shape`, seeds products, and waits until it is ready.
    pub(crate) async fn deploy(&self, shape: Shape) -> anyhow::Result<Deployment> {
        let run = self.next_run();
        let tag = format!("soak_{}_{run}", std::process::id());
        let dir = tempfile::Builder::new()
            .prefix(&format!("{tag}-"))
            .tempdir()?;
        let pg = if shape.backend == Backend::Postgres && shape.private_pg {
            Some(PrivatePostgres::create()?)
        } else {
            None
        };
        let store = match shape.backend {
            Backend::Postgres => {
                let (host, port) = match &pg {
                    Some(pg) => ("127.0.0.1".to_owned(), pg.port),
                    None => (self.args.pg_host.clone(), self.args.pg_port),
                };
                loopback_only(&host)?;
                harness::create_database(&host, port, &tag).await?;
                Store::Postgres {
                    host,
                    port,
                    database: tag.clone(),
                }
            }
            Backend::Sqlite => Store::Sqlite {
                dir: dir.path().join("data"),
            },
        };
        let service_db = format!("{tag}_ful");
        if shape.extracted
            && let Store::Postgres { host, port, .. } = &store
        {
            harness::create_database(host, *port, &service_db).await?;
        }
        let redis = if shape.bus == BusKind::Redis && shape.private_redis {
            Some(PrivateRedis::create()?)
        } else {
            None
        };
        let provider = if shape.fake_provider {
            Some(provider::FakeProvider::start()?)
        } else {
            None
        };
        let streams = (shape.bus == BusKind::Redis).then(|| Streams {
            url: redis
                .as_ref()
                .map_or_else(|| self.args.redis_url.clone(), PrivateRedis::url),
            namespace: tag.replace('_', "-"),
        });
        let base = |database: &str| -> Vec<(String, String)> {
            let mut vars = match &store {
                Store::Postgres { host, port, .. } => vec![
                    ("APP__DATABASE__BACKEND", "postgres".to_owned()),
                    ("APP__DATABASE__POSTGRES__HOST", host.clone()),
                    ("APP__DATABASE__POSTGRES__PORT", port.to_string()),
                    ("APP__DATABASE__POSTGRES__DATABASE", database.to_owned()),
                    ("APP__DATABASE__POSTGRES__SSL_MODE", "disable".to_owned()),
                    ("APP__DATABASE__POSTGRES__MAX_CONNECTIONS", "10".to_owned()),
                ],
                Store::Sqlite { dir } => vec![
                    ("APP__DATABASE__BACKEND", "sqlite".to_owned()),
                    ("APP__DATABASE__SQLITE__DIR", dir.display().to_string()),
                ],
            };
            if let Some(streams) = &streams {
                vars.push(("APP__BUS__KIND", "redis".to_owned()));
                vars.push(("APP__BUS__REDIS__URL", streams.url.clone()));
                vars.push(("APP__BUS__REDIS__NAMESPACE", streams.namespace.clone()));
            }
            // Published events stay in the outbox: the audit reads the order each producer
            // committed its events in from there.
            vars.push(("APP__MESSAGING__OUTBOX_RETENTION_SECS", "3600".to_owned()));
            if let Some(lease) = shape.lease_ms {
                vars.push(("APP__MESSAGING__LEASE_MS", lease.to_string()));
            }
            if let Some(provider) = &provider {
                vars.push((
                    "APP__MODULES__CHECKOUT__PAYMENT__PROVIDER",
                    "http".to_owned(),
                ));
                vars.push(("APP__MODULES__CHECKOUT__PAYMENT__URL", provider.url()));
            }
            vars.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
        };
        let mut nodes = Vec::new();
        let mut scratch = None;
        if shape.extracted {
            let mut mono = base(&tag);
            mono.push(("APP__MODULES__ENABLED".into(), "catalog,checkout".into()));
            // What `extract` configures: in-process between catalog and checkout.
            mono.push(("APP__BUS__KIND".into(), "hybrid".into()));
            mono.push(("APP__BUS__INSTANCE".into(), "soak-a".into()));
            nodes.push(self.node("soak-a", &self.binary, mono, dir.path())?);
            let (copy, binary) = harness::extracted_service(self.args.no_build)?;
            let mut svc = base(&service_db);
            svc.push(("APP__BUS__INSTANCE".into(), SERVICE_NODE.into()));
            let mut node = self.node(SERVICE_NODE, &binary, svc, dir.path())?;
            node.cwd = copy.path().to_owned();
            nodes.push(node);
            scratch = Some(copy);
        } else {
            for i in 0..shape.instances {
                let name = format!("soak-{}", char::from(b'a' + i as u8));
                let mut vars = base(&tag);
                vars.push(("APP__BUS__INSTANCE".into(), name.clone()));
                nodes.push(self.node(&name, &self.binary, vars, dir.path())?);
            }
        }
        for node in &mut nodes {
            node.start()?;
            // Replicas would otherwise race to create the schemas and roles.
            wait_ready_within(&self.client, node.port, Duration::from_secs(90))
                .await
                .with_context(|| {
                    format!("{} did not become ready: {}", node.name, node.log_tail(20))
                })?;
        }
        let dbs = match &store {
            Store::Postgres {
                host,
                port,
                database,
            } => {
                let main = format!("postgres://postgres@{host}:{port}/{database}");
                let service = format!("postgres://postgres@{host}:{port}/{service_db}");
                Dbs::open(|module| Place::Postgres {
                    url: if shape.extracted && module == "fulfillment" {
                        service.clone()
                    } else {
                        main.clone()
                    },
                })
                .await?
            }
            Store::Sqlite { dir } => Dbs::open(|_| Place::Sqlite { dir: dir.clone() }).await?,
        };
        let mut deployment = Deployment {
            nodes,
            dbs,
            streams,
            store,
            service_db: shape.extracted.then_some(service_db),
            pg,
            redis,
            provider,
            dir,
            _scratch: scratch,
            on_hand: HashMap::new(),
            skus: Vec::new(),
            scarce: "SOAK-SCARCE".to_owned(),
        };
        self.seed(&mut deployment).await?;
        Ok(deployment)
    }

    fn node(
        &self,
        name: &str,
        binary: &std::path::Path,
        vars: Vec<(String, String)>,
        dir: &std::path::Path,
    ) -> anyhow::Result<Node> {
        let admin_port = free_port()?;
        let mut vars = vars;
        vars.push(("APP__SERVER__ADMIN_PORT".into(), admin_port.to_string()));
        Ok(Node {
            name: name.to_owned(),
            path: binary.to_owned(),
            cwd: crate::workspace_root(),
            vars,
            port: free_port()?,
            admin_port,
            log: dir.join(format!("{name}.log")),
            process: None,
        })
    }

    /// Creates the products (plenty of stock, and one scarce sku) and waits until
    /// checkout prices them.
    async fn seed(&self, d: &mut Deployment) -> anyhow::Result<()> {
        let port = d.nodes[0].port;
        let skus: Vec<String> = (0..self.args.products.max(1))
            .map(|i| format!("SOAK-{i}"))
            .collect();
        // Enough that only the scarce sku ever runs out, at any rate and length asked.
        let orders = u64::from(self.args.rate) * (self.args.secs + 120) + 1000;
        let stock = (orders * 4 / skus.len() as u64 + 100) as i64;
        harness::create_products(&self.client, port, &skus, stock).await?;
        harness::create_products(&self.client, port, std::slice::from_ref(&d.scarce), 5).await?;
        let mut all = skus.clone();
        all.push(d.scarce.clone());
        harness::wait_priced(&self.client, port, &all, Duration::from_secs(60)).await?;
        for sku in &skus {
            d.on_hand.insert(sku.clone(), stock);
        }
        d.on_hand.insert(d.scarce.clone(), 5);
        d.skus = skus;
        Ok(())
    }
}

impl Deployment {
    /// An order plan over the given instances.
    pub(crate) fn plan(&self, ports: Vec<u16>, t0: Instant) -> OrderPlan {
        OrderPlan {
            ports: Arc::new(Mutex::new(ports)),
            skus: Arc::new(self.skus.clone()),
            scarce: Some(self.scarce.clone()),
            decline_every: 20,
            cancel_every: 25,
            t0,
        }
    }

    /// Audits, and records in `report` whether every instance is still alive (those the
    /// scenario killed aside).
    pub(crate) async fn audit(
        &mut self,
        report: &mut RunReport,
        accepted: &[String],
    ) -> anyhow::Result<()> {
        let expect = audit::Expect {
            accepted,
            on_hand: &self.on_hand,
            dead_letters: 0,
        };
        let checks = audit::audit(&self.dbs, self.streams.as_ref(), &expect).await?;
        report.checks.extend(checks);
        let mut died = Vec::new();
        for node in &mut self.nodes {
            if node.died() {
                died.push(format!("{}: {}", node.name, node.log_tail(5)));
            }
        }
        report.check(
            "no instance died by itself",
            died.is_empty(),
            if died.is_empty() {
                "every instance the scenario did not kill is running".to_owned()
            } else {
                died.join("; ")
            },
        );
        Ok(())
    }

    /// Waits for the drain and records it: `from` is the end of the injection (or of the
    /// load), and the bound counts from when the load stopped.
    pub(crate) async fn drain(
        &self,
        report: &mut RunReport,
        accepted: usize,
        from: Instant,
        bound: Duration,
    ) {
        let limit = from.elapsed() + bound;
        report.drain_bound_secs = bound.as_secs();
        let (took, last) =
            audit::wait_drained(&self.dbs, self.streams.as_ref(), accepted, from, limit).await;
        report.recovery_secs = took.map(|t| t.as_secs_f64());
        report.check(
            "backlog drained within the bound",
            took.is_some(),
            match took {
                Some(t) => format!(
                    "drained {:.1} s after the end of the fault or load (bound: {} s after the load stopped)",
                    t.as_secs_f64(),
                    bound.as_secs()
                ),
                None => format!(
                    "not drained {} s after the load stopped: {} orders stored, {} pending, \
                     {} live orders vs {} live shipments, {} unpublished outbox rows, \
                     {} queued bus rows, {} pending stream entries, {} groups behind",
                    bound.as_secs(),
                    last.orders,
                    last.pending_orders,
                    last.live_orders,
                    last.live_shipments,
                    last.unpublished,
                    last.queued,
                    last.stream_pending,
                    last.streams_behind
                ),
            },
        );
    }

    /// Stops the processes, removes the databases and stream keys; keeps the run's
    /// folder when asked or when the run failed.
    pub(crate) async fn tear_down(mut self, keep: bool) -> Option<String> {
        for node in &mut self.nodes {
            if let Some(mut process) = node.process.take() {
                process.terminate(Duration::from_secs(20));
            }
        }
        self.dbs.close().await;
        if let Store::Postgres {
            host,
            port,
            database,
        } = &self.store
        {
            harness::drop_database(host, *port, database).await;
            if let Some(db) = &self.service_db {
                harness::drop_database(host, *port, db).await;
            }
        }
        if let Some(streams) = &self.streams {
            harness::clear_namespace(&streams.url, &streams.namespace).await;
        }
        drop(self.pg.take());
        drop(self.redis.take());
        if let Some(provider) = self.provider.take() {
            provider.stop().await;
        }
        if keep {
            Some(self.dir.keep().display().to_string())
        } else {
            None
        }
    }
}

/// Loads a deployment in the background until the returned flag is set.
pub(crate) struct Loader {
    pub(crate) stop: Arc<AtomicBool>,
    pub(crate) task: tokio::task::JoinHandle<Run>,
    pub(crate) started: Instant,
}

impl Loader {
    pub(crate) fn start(ctx: &Ctx, plan: OrderPlan, rate: f64) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let client = ctx.client.clone();
        let max = ctx.args.max_in_flight;
        let flag = stop.clone();
        // A hard stop, whatever the scenario does.
        let until = Instant::now() + Duration::from_secs(1800);
        let connections = ctx.args.connections;
        let task = tokio::spawn(async move {
            let make = move |i| plan.place(&client, i);
            match connections {
                Some(n) => load::closed_loop(n, until, flag, make).await,
                None => load::open_loop(rate, until, flag, max, make).await,
            }
        });
        Self {
            stop,
            task,
            started: Instant::now(),
        }
    }

    pub(crate) async fn finish(self) -> anyhow::Result<(Run, f64)> {
        self.stop.store(true, Ordering::Relaxed);
        let secs = self.started.elapsed().as_secs_f64();
        Ok((self.task.await?, secs))
    }
}

/// The runs a command line asks for, in order.
fn runs(args: &SoakArgs) -> Vec<(Scenario, Shape)> {
    use Scenario::*;
    let backends = match args.backend {
        Some(b) => vec![b],
        None => vec![Backend::Postgres, Backend::Sqlite],
    };
    let buses = match args.bus {
        Some(b) => vec![b],
        None => vec![BusKind::Local, BusKind::Redis],
    };
    let fault_backend = args.backend.unwrap_or(Backend::Postgres);
    let fault_bus = args.bus.unwrap_or(BusKind::Local);
    if args.ci {
        return vec![
            (Soak, Shape::new(Backend::Postgres, BusKind::Local)),
            (Sigkill, Shape::new(Backend::Postgres, BusKind::Local)),
            (PgRestart, Shape::new(Backend::Postgres, BusKind::Local)),
            (PaymentOutage, Shape::new(Backend::Postgres, BusKind::Local)),
        ];
    }
    let wanted = |s: Scenario| args.scenario == All || args.scenario == s;
    let mut out = Vec::new();
    if wanted(Soak) && args.extracted {
        out.push((Soak, Shape::new(Backend::Postgres, BusKind::Redis)));
    } else if wanted(Soak) {
        for b in &backends {
            for k in &buses {
                out.push((Soak, Shape::new(*b, *k)));
            }
        }
    }
    if wanted(PgRestart) {
        out.push((PgRestart, Shape::new(Backend::Postgres, fault_bus)));
    }
    if wanted(RedisOutage) {
        out.push((RedisOutage, Shape::new(Backend::Postgres, BusKind::Redis)));
    }
    if wanted(Sigkill) {
        out.push((Sigkill, Shape::new(fault_backend, fault_bus)));
    }
    if wanted(ReplicaKill) {
        for k in &buses {
            out.push((ReplicaKill, Shape::new(Backend::Postgres, *k)));
        }
    }
    if wanted(SlowModule) {
        out.push((SlowModule, Shape::new(Backend::Postgres, fault_bus)));
    }
    if wanted(Races) {
        out.push((Races, Shape::new(fault_backend, fault_bus)));
    }
    if wanted(PaymentOutage) {
        out.push((PaymentOutage, Shape::new(fault_backend, fault_bus)));
    }
    out
}

/// Runs the command: build, every run in turn, the table, the JSON, the verdict.
pub(crate) fn run(mut args: SoakArgs) -> anyhow::Result<()> {
    if args.ci {
        args.secs = args.secs.min(15);
        args.rate = args.rate.min(100);
        args.warmup_secs = args.warmup_secs.min(5);
        args.pg_outage_secs = args.pg_outage_secs.min(5);
        args.payment_outage_secs = args.payment_outage_secs.min(6);
        args.profile.get_or_insert(Profile::Dev);
    }
    loopback_only(&args.pg_host)?;
    let redis_host = args
        .redis_url
        .trim_start_matches("redis://")
        .split([':', '/'])
        .next()
        .unwrap_or_default()
        .to_owned();
    loopback_only(&redis_host)?;
    let profile = args.profile.unwrap_or(Profile::Release);
    if !args.no_build {
        let mut command =
            std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        match profile {
            Profile::Release => command.args(["build", "--quiet", "--release", "-p", "app"]),
            // The very build `cargo test --workspace` makes (app's integration tests need
            // its binary), with the same features: after the tests, nothing to rebuild.
            Profile::Dev => command.args(["test", "--quiet", "--workspace", "--no-run"]),
        };
        anyhow::ensure!(command.status()?.success(), "building the app failed");
    }
    let binary = target_dir()
        .join(match profile {
            Profile::Dev => "debug",
            Profile::Release => "release",
        })
        .join("app");
    let json = args
        .json
        .clone()
        .unwrap_or_else(|| target_dir().join("soak-report.json"));
    let plan = runs(&args);
    anyhow::ensure!(!plan.is_empty(), "no scenario matches these options");
    let ctx = Ctx {
        client: crate::harness::client_builder()?
            .pool_max_idle_per_host(args.max_in_flight)
            .build()?,
        args,
        binary,
        runs: Mutex::new(0),
    };
    let runtime = tokio::runtime::Runtime::new()?;
    let started = Instant::now();
    let mut reports = Vec::new();
    for (scenario, shape) in plan {
        eprintln!(
            "[soak {:>5.0}s] {:?} on {} ...",
            started.elapsed().as_secs_f64(),
            scenario,
            shape.variant()
        );
        let report = runtime.block_on(scenarios::run(&ctx, scenario, shape));
        eprintln!(
            "[soak {:>5.0}s] {:?} on {}: {}",
            started.elapsed().as_secs_f64(),
            scenario,
            shape.variant(),
            if report.passed { "passed" } else { "FAILED" }
        );
        reports.push(report);
    }
    print(&reports);
    if let Some(parent) = json.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&json, serde_json::to_string_pretty(&reports)?)?;
    eprintln!("report written to {}", json.display());
    let failed: Vec<String> = reports
        .iter()
        .filter(|r| !r.passed)
        .map(|r| format!("{} ({})", r.scenario, r.variant))
        .collect();
    if !failed.is_empty() {
        // The checks above already say what failed, with numbers; an error's backtrace
        // would only bury them.
        eprintln!(
            "soak: {} of {} runs failed: {}",
            failed.len(),
            reports.len(),
            failed.join(", ")
        );
        std::process::exit(1);
    }
    Ok(())
}

fn print(reports: &[RunReport]) {
    let mut out = format!(
        "\n{:<14} {:<44} {:>8} {:>8} {:>9} {:>9} {:>10}  {}\n",
        "scenario", "variant", "sent", "201", "p99 ms", "skipped", "recovery", "result"
    );
    for r in reports {
        out.push_str(&format!(
            "{:<14} {:<44} {:>8} {:>8} {:>9} {:>9} {:>10}  {}\n",
            r.scenario,
            r.variant,
            r.sent,
            r.accepted,
            if r.placement_p99_ms.is_nan() {
                "-".to_owned()
            } else {
                format!("{:.1}", r.placement_p99_ms)
            },
            r.skipped_ticks,
            r.recovery_secs
                .map_or("-".to_owned(), |s| format!("{s:.1} s")),
            if r.passed { "passed" } else { "FAILED" }
        ));
    }
    for r in reports {
        out.push_str(&format!(
            "\n{} ({}): injected: {}\n",
            r.scenario, r.variant, r.injected
        ));
        for c in &r.checks {
            out.push_str(&format!(
                "  {} {}: {}\n",
                if c.ok { "ok  " } else { "FAIL" },
                c.name,
                c.detail
            ));
        }
        for n in &r.notes {
            out.push_str(&format!("  note: {n}\n"));
        }
        if let Some(dir) = &r.run_dir {
            out.push_str(&format!("  logs and data kept in {dir}\n"));
        }
    }
    eprint!("{out}");
}
