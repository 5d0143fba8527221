//! `cargo xtask bench`: our service and its peers side by side under the same load.
//!
//! Targets (`--targets`, run side by side, alternated within each round because absolute
//! figures drift on a shared machine):
//! - `pg`: the monolith on PostgreSQL with the in-process bus;
//! - `sqlite`: the monolith on its embedded SQLite files;
//! - `extracted`: fulfillment as a service of its own (a real `cargo xtask extract` in a
//!   scratch copy), Redis Streams between it and the monolith (on the hybrid bus, as
//!   `extract` configures it: in-process between catalog and checkout), PostgreSQL;
//! - `peer`: the Node.js peer, started from `--peer-dir` (its `setup.sh` run first);
//! - `url=http://127.0.0.1:PORT`: any server already running on loopback that speaks the
//!   contract (its process is found by its listening port, for CPU and memory).
//!
//! Each of ours starts on a database seeded like the peer's: products `SKU-00000`.. with
//! 1,000,000 units, `--past-orders` orders placed through the whole journey, `ANALYZE`d;
//! then it is restarted, so memory is measured on a fresh process.
//!
//! Scenarios (`--scenarios`): `reads` (GET a random product), `place` (POST an order; behind
//! it our journey runs), `journey` (ours only: place for `--journey-secs`, count shipments
//! every second, then the latency from placement to `confirmed` and to the shipment's
//! creation, and of each step between (stock held, payment opened, confirmed, shipped), from
//! the timestamps the modules stored). For each: requests/s, latency
//! percentiles, server CPU per request (`/proc/<pid>/stat`), PostgreSQL CPU per request
//! (every `postgres` process, before and after), the load generator's own CPU, and
//! resident memory: idle, holding `--idle-connections` idle keep-alive connections (fresh
//! and after the load), peak under load.
//!
//! The load is generated in this process (`bench/load.rs`): hand-written HTTP/1.1 over
//! `--connections` keep-alive connections on `--load-threads` threads. Loopback only;
//! every phase is bounded in time.

mod load;
mod procfs;

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use sea_orm::{ConnectionTrait, Database, DatabaseBackend, DatabaseConnection, Statement};
use serde::Serialize;
use serde_json::json;

use crate::harness::{
    Launch, Process, create_database, drop_database, free_port, loopback_only, percentile,
    target_dir,
};
use load::{Load, Request};

#[derive(clap::Args, Debug, Clone)]
pub(crate) struct BenchArgs {
    /// What to measure, side by side: pg, pg=PATH (another build of ours), sqlite,
    /// sqlite=PATH, extracted, extracted-redis (the monolith on bus.kind = redis instead of
    /// hybrid), peer, url=http://127.0.0.1:PORT. The ratio column is the first to the peer.
    #[arg(long, value_delimiter = ',', default_value = "pg,peer")]
    pub(crate) targets: Vec<String>,
    /// Scenarios, each run on every target in turn: reads, place, journey.
    #[arg(long, value_delimiter = ',', default_value = "reads,place,journey")]
    pub(crate) scenarios: Vec<String>,
    /// Rounds: every scenario runs this many times on each target, alternating targets.
    #[arg(long, default_value_t = 2)]
    pub(crate) rounds: usize,
    /// Measured seconds of `reads` and `place`.
    #[arg(long, default_value_t = 20)]
    pub(crate) duration_secs: u64,
    /// Unmeasured seconds of the same load before each measured run.
    #[arg(long, default_value_t = 5)]
    pub(crate) warmup_secs: u64,
    /// Measured seconds of `journey`.
    #[arg(long, default_value_t = 60)]
    pub(crate) journey_secs: u64,
    /// Placements per second in `journey`; unset: as fast as answered.
    #[arg(long)]
    pub(crate) journey_rate: Option<f64>,
    /// Keep-alive connections sending load.
    #[arg(long, default_value_t = 64)]
    pub(crate) connections: usize,
    /// Threads of the load generator.
    #[arg(long, default_value_t = 1)]
    pub(crate) load_threads: usize,
    /// Products SKU-00000.. (the peer has 1,000).
    #[arg(long, default_value_t = 1000)]
    pub(crate) products: usize,
    /// Orders placed through the whole journey before measuring (ours).
    #[arg(long, default_value_t = 20000)]
    pub(crate) past_orders: usize,
    /// Seconds the targets idle after the last run before "idle after load" is read. The
    /// default is longer than jemalloc's 10 s decay (ours), so what an allocator hands back
    /// by itself has been handed back (five seconds read our memory half-way through it).
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(0..=900))]
    pub(crate) settle_secs: u64,
    /// Idle keep-alive connections held while measuring memory (0: skip).
    #[arg(long, default_value_t = 8000)]
    pub(crate) idle_connections: usize,
    /// Our log level (`info` is production's, and the peer logs every request at info).
    #[arg(long, default_value = "info")]
    pub(crate) log_level: String,
    /// Pooled PostgreSQL connections per module (ours).
    #[arg(long, default_value_t = 8)]
    pub(crate) pool: u32,
    /// Where the Node.js peer is (`setup.sh`, `run.sh`).
    #[arg(long, default_value = "../shared/peer-node")]
    pub(crate) peer_dir: PathBuf,
    /// Do not run the peer's `setup.sh` (its database is already set up).
    #[arg(long)]
    pub(crate) peer_no_setup: bool,
    /// Give up waiting for the journey to drain after this long.
    #[arg(long, default_value_t = 300)]
    pub(crate) timeout_secs: u64,
    /// PostgreSQL server (loopback only).
    #[arg(long, default_value = "127.0.0.1")]
    pub(crate) pg_host: String,
    #[arg(long, default_value_t = 5432)]
    pub(crate) pg_port: u16,
    /// Skip `cargo build --release` (use the binaries already built).
    #[arg(long)]
    pub(crate) no_build: bool,
    /// Run the debug binaries (already built, e.g. by `cargo test`): a smoke test of the
    /// bench itself, whose figures mean nothing.
    #[arg(long)]
    pub(crate) debug: bool,
    /// Also write the JSON report to this file.
    #[arg(long)]
    pub(crate) json: Option<PathBuf>,
}

fn log(line: &str) {
    eprintln!("[bench {}] {line}", chrono::Utc::now().format("%H:%M:%S"));
}

/// Runs the bench as `args` says, prints the table and the JSON report.
pub(crate) fn run(args: BenchArgs) -> anyhow::Result<()> {
    loopback_only(&args.pg_host)?;
    let targets: Vec<Kind> = args
        .targets
        .iter()
        .map(|t| Kind::parse(t))
        .collect::<anyhow::Result<_>>()?;
    let scenarios: Vec<Scenario> = args
        .scenarios
        .iter()
        .map(|s| Scenario::parse(s))
        .collect::<anyhow::Result<_>>()?;
    if !args.no_build && !args.debug && targets.iter().any(Kind::ours) {
        log("building the release binary");
        crate::harness::build_release(&["app"], &[])?;
    }
    let main = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let loadgen = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.load_threads.max(1))
        .thread_name("load")
        .enable_all()
        .build()?;
    let mut running = Vec::new();
    let result = main.block_on(async {
        for kind in &targets {
            running.push(start(&args, kind).await?);
        }
        measure(&args, &scenarios, &mut running, loadgen.handle()).await
    });
    main.block_on(async {
        for target in running {
            target.stop(&args).await;
        }
    });
    let report = result?;
    let mut out = std::io::stdout().lock();
    out.write_all(table(&report).as_bytes())?;
    let json = serde_json::to_string_pretty(&report)?;
    if let Some(path) = &args.json {
        std::fs::write(path, &json).with_context(|| format!("writing {}", path.display()))?;
        writeln!(out, "JSON report: {}", path.display())?;
    } else {
        writeln!(out, "{json}")?;
    }
    drop(out);
    let mut next = Vec::new();
    if args.debug {
        next.push(
            "these were debug binaries (a smoke test of the bench): measure without --debug"
                .to_owned(),
        );
    }
    next.push(format!(
        "keep the figures: {}; BENCHMARKS.md records them with the command that made them",
        match &args.json {
            Some(path) => format!("the JSON report is in {}", path.display()),
            None => "--json PATH writes the report to a file".to_owned(),
        }
    ));
    next.push(
        "measure a change side by side with the build before it: cargo xtask bench \
         --targets pg,pg=/path/to/the/older/app"
            .to_owned(),
    );
    crate::progress::next(&next);
    if !report.failed.is_empty() {
        bail!(
            "{} of the targets failed: {}",
            report.failed.len(),
            report
                .failed
                .iter()
                .map(|(t, e)| format!("{t}: {e}"))
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    Ok(())
}

#[derive(Clone, Debug, PartialEq)]
enum Kind {
    /// The monolith on PostgreSQL; another binary than this workspace's when given (an
    /// older build, to measure a change side by side).
    Pg(Option<PathBuf>),
    /// The monolith on its embedded SQLite; another binary when given, as for `Pg`.
    Sqlite(Option<PathBuf>),
    /// Fulfillment as a service; the monolith on the hybrid bus, or (`true`) with every
    /// event over Redis.
    Extracted {
        redis_only: bool,
    },
    Peer,
    Url(String),
}

impl Kind {
    fn parse(text: &str) -> anyhow::Result<Self> {
        Ok(match text {
            "pg" => Self::Pg(None),
            "sqlite" => Self::Sqlite(None),
            "extracted" => Self::Extracted { redis_only: false },
            "extracted-redis" => Self::Extracted { redis_only: true },
            "peer" => Self::Peer,
            _ => match (
                text.strip_prefix("url="),
                text.strip_prefix("pg="),
                text.strip_prefix("sqlite="),
            ) {
                (Some(url), _, _) => Self::Url(url.to_owned()),
                (_, Some(binary), _) => Self::Pg(Some(PathBuf::from(binary))),
                (_, _, Some(binary)) => Self::Sqlite(Some(PathBuf::from(binary))),
                _ => bail!(
                    "unknown target {text:?}: pg, pg=PATH-OF-A-BINARY, sqlite, \
                     sqlite=PATH-OF-A-BINARY, extracted, extracted-redis, peer or \
                     url=http://127.0.0.1:PORT"
                ),
            },
        })
    }

    fn ours(&self) -> bool {
        matches!(self, Self::Pg(_) | Self::Sqlite(_) | Self::Extracted { .. })
    }

    fn name(&self) -> String {
        match self {
            Self::Pg(binary) => ours("ours-pg", binary),
            Self::Sqlite(binary) => ours("ours-sqlite", binary),
            Self::Extracted { redis_only: false } => "ours-extracted".into(),
            Self::Extracted { redis_only: true } => "ours-extracted(redis)".into(),
            Self::Peer => "peer".into(),
            Self::Url(url) => url.clone(),
        }
    }
}

/// `name`, followed by the file name of another build than this workspace's when given.
fn ours(name: &str, binary: &Option<PathBuf>) -> String {
    match binary {
        None => name.to_owned(),
        Some(binary) => format!(
            "{name}({})",
            binary.file_name().unwrap_or_default().to_string_lossy()
        ),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Scenario {
    Reads,
    Place,
    Journey,
}

impl Scenario {
    fn parse(text: &str) -> anyhow::Result<Self> {
        Ok(match text {
            "reads" => Self::Reads,
            "place" => Self::Place,
            "journey" => Self::Journey,
            _ => bail!("unknown scenario {text:?}: reads, place or journey"),
        })
    }
}

/// Where one of our modules keeps its tables, opened for counting and timestamps.
struct Store {
    conn: DatabaseConnection,
    /// The schema to qualify names with (PostgreSQL); SQLite has a file per module.
    schema: Option<&'static str>,
}

impl Store {
    async fn open(url: String, schema: Option<&'static str>) -> anyhow::Result<Self> {
        let mut options = sea_orm::ConnectOptions::new(url.clone());
        options
            .max_connections(1)
            .sqlx_logging(false)
            .acquire_timeout(Duration::from_secs(10));
        let conn = Database::connect(options)
            .await
            .with_context(|| format!("opening {url}"))?;
        Ok(Self { conn, schema })
    }

    fn table(&self, name: &str) -> String {
        match self.schema {
            Some(s) => format!("{s}.{name}"),
            None => name.to_owned(),
        }
    }

    fn pg(&self) -> bool {
        self.conn.get_database_backend() == DatabaseBackend::Postgres
    }

    /// A timestamp column as epoch milliseconds.
    fn epoch_ms(&self, column: &str) -> String {
        if self.pg() {
            format!("(EXTRACT(EPOCH FROM {column}) * 1000)::float8")
        } else {
            format!("((julianday({column}) - 2440587.5) * 86400000.0)")
        }
    }

    /// A UUID column as lowercase hex without dashes, whatever the backend stores.
    fn id(&self, column: &str) -> String {
        if self.pg() {
            format!("replace(CAST({column} AS text), '-', '')")
        } else {
            format!(
                "CASE WHEN typeof({column}) = 'blob' THEN lower(hex({column})) \
                 ELSE lower(replace({column}, '-', '')) END"
            )
        }
    }

    async fn rows(&self, sql: String) -> anyhow::Result<Vec<sea_orm::QueryResult>> {
        self.conn
            .query_all_raw(Statement::from_string(
                self.conn.get_database_backend(),
                sql.clone(),
            ))
            .await
            .with_context(|| sql)
    }

    async fn count(&self, table: &str) -> anyhow::Result<i64> {
        let rows = self
            .rows(format!("SELECT COUNT(*) FROM {}", self.table(table)))
            .await?;
        Ok(rows.first().context("no row")?.try_get_by_index::<i64>(0)?)
    }
}

/// Our modules' tables, for a target of ours.
struct Stores {
    catalog: Store,
    checkout: Store,
    fulfillment: Store,
}

/// How to start a process of ours again: its binary, folder and variables.
type Relaunch = (PathBuf, PathBuf, Vec<(String, String)>);

/// A target, started (or found) and ready.
struct Running {
    name: String,
    kind: Kind,
    port: u16,
    pids: Vec<u32>,
    /// Ours: the processes, how to restart the first, and where the data is.
    processes: Vec<Process>,
    launch: Option<Relaunch>,
    stores: Option<Stores>,
    databases: Vec<String>,
    namespace: Option<String>,
    _dirs: Vec<tempfile::TempDir>,
    memory: Memory,
}

impl Running {
    async fn stop(mut self, args: &BenchArgs) {
        if let Some(stores) = self.stores.take() {
            for s in [stores.catalog, stores.checkout, stores.fulfillment] {
                let _ = s.conn.close().await;
            }
        }
        self.processes.clear();
        for db in &self.databases {
            drop_database(&args.pg_host, args.pg_port, db).await;
        }
        if let Some(ns) = &self.namespace {
            crate::harness::clear_namespace("redis://127.0.0.1:6379/0", ns).await;
        }
    }
}

fn binary(args: &BenchArgs, name: &str) -> PathBuf {
    target_dir()
        .join(if args.debug { "debug" } else { "release" })
        .join(name)
}

fn pg_vars(args: &BenchArgs, database: &str) -> Vec<(String, String)> {
    [
        ("APP__DATABASE__BACKEND", "postgres".to_owned()),
        ("APP__DATABASE__POSTGRES__HOST", args.pg_host.clone()),
        ("APP__DATABASE__POSTGRES__PORT", args.pg_port.to_string()),
        ("APP__DATABASE__POSTGRES__DATABASE", database.to_owned()),
        ("APP__DATABASE__POSTGRES__SSL_MODE", "disable".to_owned()),
        (
            "APP__DATABASE__POSTGRES__MAX_CONNECTIONS",
            args.pool.to_string(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

fn launch(
    args: &BenchArgs,
    path: &Path,
    cwd: &Path,
    vars: &[(String, String)],
    port: u16,
) -> anyhow::Result<Process> {
    let mut vars = vars.to_vec();
    vars.push(("APP__TELEMETRY__LEVEL".into(), args.log_level.clone()));
    let vars = &vars[..];
    Launch {
        path: path.to_owned(),
        args: Vec::new(),
        cwd: cwd.to_owned(),
        vars,
        port,
        log: None,
    }
    .start()
}

/// Waits until `GET path` on `port` answers 2xx.
async fn wait_http(port: u16, path: &str, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    loop {
        if let Ok(Ok(mut c)) =
            tokio::time::timeout(Duration::from_secs(2), load::Conn::open(port)).await
            && let Ok(Ok(status)) =
                tokio::time::timeout(Duration::from_secs(3), c.exchange(request.as_bytes())).await
            && (200..300).contains(&status)
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("127.0.0.1:{port}{path} did not answer 2xx in time");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Numbers the databases of this run (several targets may run on PostgreSQL).
static NEXT_DB: AtomicUsize = AtomicUsize::new(0);

async fn start(args: &BenchArgs, kind: &Kind) -> anyhow::Result<Running> {
    let name = kind.name();
    log(&format!("starting {name}"));
    let mut running = Running {
        name,
        kind: kind.clone(),
        port: 0,
        pids: Vec::new(),
        processes: Vec::new(),
        launch: None,
        stores: None,
        databases: Vec::new(),
        namespace: None,
        _dirs: Vec::new(),
        memory: Memory::default(),
    };
    let tag = std::process::id();
    let pg_url = |db: &str| format!("postgres://postgres@{}:{}/{db}", args.pg_host, args.pg_port);
    match kind {
        Kind::Pg(other) => {
            let db = format!("bench_pg_{tag}_{}", NEXT_DB.fetch_add(1, Ordering::Relaxed));
            create_database(&args.pg_host, args.pg_port, &db).await?;
            running.databases.push(db.clone());
            let port = free_port()?;
            let (path, cwd, vars) = (
                other.clone().unwrap_or_else(|| binary(args, "app")),
                crate::workspace_root(),
                pg_vars(args, &db),
            );
            running
                .processes
                .push(launch(args, &path, &cwd, &vars, port)?);
            running.launch = Some((path, cwd, vars));
            running.port = port;
            running.stores = Some(Stores {
                catalog: Store::open(pg_url(&db), Some("catalog")).await?,
                checkout: Store::open(pg_url(&db), Some("checkout")).await?,
                fulfillment: Store::open(pg_url(&db), Some("fulfillment")).await?,
            });
        }
        Kind::Sqlite(other) => {
            let dir = tempfile::tempdir()?;
            let port = free_port()?;
            let vars: Vec<(String, String)> = vec![
                ("APP__DATABASE__BACKEND".into(), "sqlite".into()),
                (
                    "APP__DATABASE__SQLITE__DIR".into(),
                    dir.path().display().to_string(),
                ),
            ];
            let (path, cwd) = (
                other.clone().unwrap_or_else(|| binary(args, "app")),
                crate::workspace_root(),
            );
            running
                .processes
                .push(launch(args, &path, &cwd, &vars, port)?);
            running.launch = Some((path, cwd, vars));
            running.port = port;
            wait_http(port, "/readyz", Duration::from_secs(60)).await?;
            let file = |m: &str| {
                format!(
                    "sqlite://{}?mode=rw",
                    dir.path().join(format!("{m}.db")).display()
                )
            };
            running.stores = Some(Stores {
                catalog: Store::open(file("catalog"), None).await?,
                checkout: Store::open(file("checkout"), None).await?,
                fulfillment: Store::open(file("fulfillment"), None).await?,
            });
            running._dirs.push(dir);
        }
        Kind::Extracted { redis_only } => {
            anyhow::ensure!(!args.debug, "the extracted target runs release builds only");
            let (scratch, service) = crate::harness::extracted_service(args.no_build)?;
            // Numbered, like every database of the run: two extracted targets side by side.
            let n = NEXT_DB.fetch_add(1, Ordering::Relaxed);
            let (mono_db, svc_db) = (
                format!("bench_mono_{tag}_{n}"),
                format!("bench_ful_{tag}_{n}"),
            );
            for db in [&mono_db, &svc_db] {
                create_database(&args.pg_host, args.pg_port, db).await?;
                running.databases.push(db.clone());
            }
            let namespace = format!("bench-{tag}-{n}");
            running.namespace = Some(namespace.clone());
            let mut mono_vars = pg_vars(args, &mono_db);
            mono_vars.extend([
                (
                    "APP__MODULES__ENABLED".to_owned(),
                    "catalog,checkout".to_owned(),
                ),
                (
                    "APP__BUS__KIND".to_owned(),
                    if *redis_only { "redis" } else { "hybrid" }.to_owned(),
                ),
                ("APP__BUS__REDIS__NAMESPACE".to_owned(), namespace.clone()),
                ("APP__BUS__INSTANCE".to_owned(), "bench-monolith".to_owned()),
            ]);
            let mut svc_vars = pg_vars(args, &svc_db);
            svc_vars.extend([
                ("APP__BUS__REDIS__NAMESPACE".to_owned(), namespace.clone()),
                (
                    "APP__BUS__INSTANCE".to_owned(),
                    "bench-fulfillment".to_owned(),
                ),
            ]);
            let port = free_port()?;
            let (path, cwd) = (binary(args, "app"), crate::workspace_root());
            running
                .processes
                .push(launch(args, &path, &cwd, &mono_vars, port)?);
            running.launch = Some((path, cwd, mono_vars));
            let svc_port = free_port()?;
            running
                .processes
                .push(launch(args, &service, scratch.path(), &svc_vars, svc_port)?);
            wait_http(svc_port, "/readyz", Duration::from_secs(60)).await?;
            running.port = port;
            running.stores = Some(Stores {
                catalog: Store::open(pg_url(&mono_db), Some("catalog")).await?,
                checkout: Store::open(pg_url(&mono_db), Some("checkout")).await?,
                fulfillment: Store::open(pg_url(&svc_db), Some("fulfillment")).await?,
            });
            running._dirs.push(scratch);
        }
        Kind::Peer => {
            let dir = crate::workspace_root().join(&args.peer_dir);
            anyhow::ensure!(
                dir.join("run.sh").is_file(),
                "no Node.js peer at {} (set --peer-dir)",
                dir.display()
            );
            if !args.peer_no_setup {
                log("peer: setup.sh (its packages, and its database seeded afresh)");
                let status = std::process::Command::new("bash")
                    .arg(dir.join("setup.sh"))
                    .current_dir(&dir)
                    .stdout(std::process::Stdio::null())
                    .status()
                    .context("running the peer's setup.sh")?;
                anyhow::ensure!(status.success(), "the peer's setup.sh failed");
            }
            let port = free_port()?;
            let mut command = std::process::Command::new("bash");
            command
                .arg(dir.join("run.sh"))
                .current_dir(&dir)
                .env("PORT", port.to_string())
                .env("HOST", "127.0.0.1")
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null());
            running.processes.push(Process(
                command.spawn().context("starting the peer's run.sh")?,
            ));
            running.port = port;
        }
        Kind::Url(url) => {
            let rest = url
                .strip_prefix("http://")
                .context("a url target is http://127.0.0.1:PORT")?;
            let (host, port) = rest
                .trim_end_matches('/')
                .rsplit_once(':')
                .context("a url target names its port")?;
            loopback_only(host)?;
            running.port = port.parse()?;
        }
    }
    let port = running.port;
    if kind.ours() {
        wait_http(port, "/readyz", Duration::from_secs(60)).await?;
        seed(args, &running).await?;
        // A fresh process on the seeded data: memory is measured from there.
        if let Some((path, cwd, vars)) = &running.launch {
            running.processes.remove(0);
            running
                .processes
                .insert(0, launch(args, path, cwd, vars, port)?);
        }
        wait_http(port, "/readyz", Duration::from_secs(60)).await?;
        running.pids = running.processes.iter().map(|p| p.0.id()).collect();
    } else {
        wait_http(port, "/healthz", Duration::from_secs(60)).await?;
        running.pids = vec![procfs::listener_pid(port)?];
    }
    wait_http(
        port,
        "/api/catalog/products/SKU-00000",
        Duration::from_secs(10),
    )
    .await
    .with_context(|| format!("{}: product SKU-00000 is missing", running.name))?;
    Ok(running)
}

/// The peer's price of product `i`.
fn price(i: usize) -> usize {
    500 + (i * 37) % 10000
}

/// Products SKU-00000.. with 1,000,000 units each, `past_orders` orders through the whole
/// journey, then ANALYZE.
async fn seed(args: &BenchArgs, target: &Running) -> anyhow::Result<()> {
    use futures::StreamExt;
    let stores = target.stores.as_ref().context("ours has stores")?;
    let port = target.port;
    let started = Instant::now();
    let authorization: std::sync::Arc<str> = crate::harness::authorization()?.into();
    let created: Vec<anyhow::Result<()>> = futures::stream::iter(0..args.products)
        .map(|i| {
            let authorization = authorization.clone();
            async move {
                let mut c = load::Conn::open(port).await?;
                let body = json!({"sku": format!("SKU-{i:05}"), "name": format!("Product {i}"),
                "price_minor": price(i), "currency": "EUR", "initial_stock": 1_000_000})
                .to_string();
                let request = format!(
                    "POST /api/catalog/products HTTP/1.1\r\nHost: 127.0.0.1\r\n\
                 Authorization: {authorization}\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                let status = c.exchange(request.as_bytes()).await?;
                anyhow::ensure!(status == 201, "creating SKU-{i:05}: {status}");
                Ok(())
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    created.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
    // checkout learns prices from catalog's events
    let deadline = Instant::now() + Duration::from_secs(120);
    while stores.checkout.count("prices").await? < args.products as i64 {
        anyhow::ensure!(
            Instant::now() < deadline,
            "checkout never priced every product"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    log(&format!(
        "{}: {} products in {:.1} s; placing {} past orders",
        target.name,
        args.products,
        started.elapsed().as_secs_f64(),
        args.past_orders
    ));
    if args.past_orders > 0 {
        let mut placed = 0usize;
        while placed < args.past_orders {
            let outcome = load::run(Load {
                port,
                request: Request::Place,
                connections: 32,
                products: args.products,
                authorization: authorization.clone(),
                rate: None,
                duration: Duration::from_secs(5),
            })
            .await;
            anyhow::ensure!(
                outcome.errors == 0,
                "placing past orders: {}",
                outcome.first_error.unwrap_or_default()
            );
            placed += outcome.latencies_us.len();
            log(&format!(
                "{}: {placed} past orders placed (at least {} wanted; the load runs in 5 s rounds)",
                target.name, args.past_orders
            ));
        }
        drain(args, target, stores).await?;
    }
    for s in [&stores.catalog, &stores.checkout, &stores.fulfillment] {
        s.rows("ANALYZE".to_owned()).await?;
        if !s.pg() {
            // the write-ahead log back into the file, as a long-running database would be
            s.rows("PRAGMA wal_checkpoint(TRUNCATE)".to_owned()).await?;
        }
    }
    log(&format!(
        "{}: seeded in {:.1} s ({} orders)",
        target.name,
        started.elapsed().as_secs_f64(),
        stores.checkout.count("orders").await?
    ));
    Ok(())
}

/// Waits until every order placed so far has its shipment.
async fn drain(args: &BenchArgs, target: &Running, stores: &Stores) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(args.timeout_secs);
    let orders = stores.checkout.count("orders").await?;
    loop {
        let shipped = stores.fulfillment.count("shipments").await?;
        if shipped >= orders {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{}: only {shipped} of {orders} orders reached a shipment in {} s",
                target.name,
                args.timeout_secs
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Resident memory of a target, MiB.
#[derive(Debug, Default, Clone, Serialize)]
struct Memory {
    idle_mib: f64,
    /// Of `idle_mib`, the pages that map files (the program's code, its libraries).
    idle_file_mib: f64,
    idle_connections_mib: Option<f64>,
    peak_under_load_mib: f64,
    idle_after_load_mib: f64,
    idle_connections_after_load_mib: Option<f64>,
}

/// Percentiles of one run, ms.
#[derive(Debug, Clone, Serialize)]
struct Latency {
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
}

impl Latency {
    fn of(values: &mut [f64]) -> Self {
        Self {
            p50: percentile(values, 50.0),
            p90: percentile(values, 90.0),
            p99: percentile(values, 99.0),
            max: percentile(values, 100.0),
        }
    }
}

/// One scenario run on one target.
#[derive(Debug, Clone, Serialize)]
struct Run {
    round: usize,
    scenario: Scenario,
    target: String,
    requests: usize,
    errors: u64,
    first_error: Option<String>,
    seconds: f64,
    per_sec: f64,
    latency_ms: Latency,
    server_cpu_us_per_request: f64,
    postgres_cpu_us_per_request: f64,
    /// What PostgreSQL wrote to its write-ahead log during the window, per request: the
    /// figure of database work that does not drift with the machine's load. None where
    /// the target keeps nothing in PostgreSQL.
    postgres_wal_bytes_per_request: Option<f64>,
    load_generator_cpu_us_per_request: f64,
    peak_rss_mib: f64,
    journey: Option<Journey>,
}

/// What the journey scenario measured beyond placement.
#[derive(Debug, Clone, Serialize)]
struct Journey {
    /// Shipments created during the measured window, per second.
    shipments_per_sec: f64,
    /// Orders placed in the window that reached a shipment.
    journeys: usize,
    /// Orders placed but not yet shipped, sampled each second: (second, backlog).
    backlog: Vec<(u64, i64)>,
    backlog_max: i64,
    backlog_end: i64,
    /// Seconds from the end of placing until every order had its shipment.
    drain_secs: f64,
    to_confirmed_ms: Latency,
    to_shipment_ms: Latency,
    /// Each step's share of placement → shipment: the relay and consumer of each hop, and
    /// the payment between the two events checkout handles.
    steps_ms: StepLatencies,
    /// The seconds of placement whose slowest order took longest to its shipment, slowest
    /// first: a p99 made by a few stalls, dated, so they can be set beside the database's
    /// and the server's logs.
    slowest_seconds: Vec<SlowSecond>,
}

/// One second of placement and the slowest order placed in it.
#[derive(Debug, Clone, Serialize)]
struct SlowSecond {
    /// When the second began, UTC (RFC 3339, milliseconds).
    at: String,
    /// The slowest order's placement → shipment, ms.
    to_shipment_ms: f64,
    /// Its longest step, by the names of [`StepLatencies`], and how long it took, ms.
    step: &'static str,
    step_ms: f64,
}

impl SlowSecond {
    /// The `n` slowest seconds of `timeline`.
    fn of(timeline: &[Steps], n: usize) -> Vec<Self> {
        let mut worst: BTreeMap<i64, &Steps> = BTreeMap::new();
        for s in timeline {
            let second = (s.placed / 1000.0).floor() as i64;
            let slower = worst
                .get(&second)
                .is_none_or(|w| s.shipped - s.placed > w.shipped - w.placed);
            if slower {
                worst.insert(second, s);
            }
        }
        let mut seconds: Vec<(i64, &Steps)> = worst.into_iter().collect();
        seconds.sort_by(|a, b| {
            let took = |s: &Steps| s.shipped - s.placed;
            took(b.1).total_cmp(&took(a.1))
        });
        seconds
            .into_iter()
            .take(n)
            .map(|(second, s)| {
                let (step, step_ms) = s
                    .durations()
                    .into_iter()
                    .max_by(|a, b| a.1.total_cmp(&b.1))
                    .unwrap_or(("placed_to_held", 0.0));
                SlowSecond {
                    at: chrono::DateTime::from_timestamp(second, 0).map_or(String::new(), |t| {
                        t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
                    }),
                    to_shipment_ms: s.shipped - s.placed,
                    step,
                    step_ms,
                }
            })
            .collect()
    }
}

/// How long each step of the journey took, from one module's record to the next.
#[derive(Debug, Clone, Serialize)]
struct StepLatencies {
    /// Placed → stock held: checkout's relay, catalog's handler.
    placed_to_held: Latency,
    /// Stock held → payment opened: catalog's relay, checkout's handler.
    held_to_paying: Latency,
    /// Payment opened → confirmed: the payment worker and the provider.
    paying_to_confirmed: Latency,
    /// Confirmed → shipment: checkout's relay, fulfillment's handler.
    confirmed_to_shipped: Latency,
}

impl StepLatencies {
    fn of(timeline: &[Steps]) -> Self {
        let step = |i: usize| {
            Latency::of(
                &mut timeline
                    .iter()
                    .map(|s| s.durations()[i].1)
                    .collect::<Vec<_>>(),
            )
        };
        Self {
            placed_to_held: step(0),
            held_to_paying: step(1),
            paying_to_confirmed: step(2),
            confirmed_to_shipped: step(3),
        }
    }
}

#[derive(Debug, Serialize)]
struct Report {
    machine: Machine,
    settings: serde_json::Value,
    memory: BTreeMap<String, Memory>,
    runs: Vec<Run>,
    /// Targets whose run failed (its error): their later runs were skipped, the other
    /// targets' figures are still reported.
    failed: BTreeMap<String, String>,
}

#[derive(Debug, Serialize)]
struct Machine {
    cores: usize,
    load_average_before: String,
    load_average_after: String,
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

async fn measure(
    args: &BenchArgs,
    scenarios: &[Scenario],
    targets: &mut [Running],
    loadgen: &tokio::runtime::Handle,
) -> anyhow::Result<Report> {
    let load_before = load_average();
    for t in targets.iter_mut() {
        tokio::time::sleep(Duration::from_secs(2)).await;
        t.memory.idle_mib = procfs::rss_mib(&t.pids);
        t.memory.idle_file_mib = procfs::rss_file_mib(&t.pids);
        t.memory.idle_connections_mib = idle_connections(args, t, loadgen).await?;
        log(&format!(
            "{}: idle {:.1} MiB ({:.1} MiB of it mapped files); holding {} idle connections {}",
            t.name,
            t.memory.idle_mib,
            t.memory.idle_file_mib,
            args.idle_connections,
            t.memory
                .idle_connections_mib
                .map_or("skipped".into(), |m| format!("{m:.1} MiB"))
        ));
    }
    let mut runs = Vec::new();
    let mut failed = BTreeMap::new();
    for round in 1..=args.rounds {
        for scenario in scenarios {
            for t in targets.iter_mut() {
                if (*scenario == Scenario::Journey && !t.kind.ours())
                    || failed.contains_key(&t.name)
                {
                    continue;
                }
                // One target that fails (a journey that does not drain in time) must not
                // lose the figures of the others: it is reported failed, and skipped.
                let run = match one_run(args, round, *scenario, t, loadgen).await {
                    Ok(run) => run,
                    Err(e) => {
                        log(&format!(
                            "{} round {round} {scenario:?} failed, its later runs are skipped: {e:#}",
                            t.name
                        ));
                        // Stopped now, so its leftover work does not load the others' runs.
                        t.processes.clear();
                        failed.insert(t.name.clone(), format!("round {round} {scenario:?}: {e:#}"));
                        continue;
                    }
                };
                t.memory.peak_under_load_mib = t.memory.peak_under_load_mib.max(run.peak_rss_mib);
                log(&format!(
                    "{} round {round} {:?}: {:.0}/s, p50 {:.2} ms, p99 {:.2} ms, {} errors; \
                     CPU per request: server {:.0} µs, PostgreSQL {:.0} µs{}{}",
                    t.name,
                    scenario,
                    run.per_sec,
                    run.latency_ms.p50,
                    run.latency_ms.p99,
                    run.errors,
                    run.server_cpu_us_per_request,
                    run.postgres_cpu_us_per_request,
                    run.postgres_wal_bytes_per_request
                        .map_or(String::new(), |b| format!(", WAL {b:.0} B")),
                    run.journey.as_ref().map_or(String::new(), |j| format!(
                        "; shipments {:.0}/s, placement → shipment p99 {:.1} ms, backlog max {} end {}",
                        j.shipments_per_sec, j.to_shipment_ms.p99, j.backlog_max, j.backlog_end
                    ))
                ));
                if let Some(j) = &run.journey {
                    let slowest: Vec<String> = j
                        .slowest_seconds
                        .iter()
                        .map(|s| {
                            format!(
                                "{} {:.0} ms ({} {:.0})",
                                s.at, s.to_shipment_ms, s.step, s.step_ms
                            )
                        })
                        .collect();
                    log(&format!(
                        "{} round {round}: slowest seconds of placement: {}",
                        t.name,
                        slowest.join(", ")
                    ));
                }
                runs.push(run);
            }
        }
    }
    tokio::time::sleep(Duration::from_secs(args.settle_secs)).await;
    for t in targets.iter_mut() {
        if failed.contains_key(&t.name) {
            continue;
        }
        t.memory.idle_after_load_mib = procfs::rss_mib(&t.pids);
        t.memory.idle_connections_after_load_mib = idle_connections(args, t, loadgen).await?;
    }
    Ok(Report {
        machine: Machine {
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            load_average_before: load_before,
            load_average_after: load_average(),
        },
        settings: json!({
            "targets": args.targets, "scenarios": args.scenarios, "rounds": args.rounds,
            "duration_secs": args.duration_secs, "warmup_secs": args.warmup_secs,
            "journey_secs": args.journey_secs, "journey_rate": args.journey_rate,
            "connections": args.connections, "load_threads": args.load_threads,
            "products": args.products, "past_orders": args.past_orders,
            "idle_connections": args.idle_connections, "pool_per_module": args.pool, "settle_secs": args.settle_secs,
            "log_level": args.log_level,
            "debug_binaries": args.debug,
        }),
        memory: targets
            .iter()
            .map(|t| (t.name.clone(), t.memory.clone()))
            .collect(),
        runs,
        failed,
    })
}

/// Resident memory while `--idle-connections` idle keep-alive connections are open.
async fn idle_connections(
    args: &BenchArgs,
    t: &Running,
    loadgen: &tokio::runtime::Handle,
) -> anyhow::Result<Option<f64>> {
    if args.idle_connections == 0 {
        return Ok(None);
    }
    let (port, count) = (t.port, args.idle_connections);
    let conns = loadgen
        .spawn(tokio::time::timeout(
            Duration::from_secs(120),
            load::idle_connections(port, count),
        ))
        .await?
        .with_context(|| format!("{}: opening {count} connections took too long", t.name))?
        .with_context(|| format!("{}: opening {count} idle connections", t.name))?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss = procfs::rss_mib(&t.pids);
    drop(conns);
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok(Some(rss))
}

async fn one_run(
    args: &BenchArgs,
    round: usize,
    scenario: Scenario,
    t: &Running,
    loadgen: &tokio::runtime::Handle,
) -> anyhow::Result<Run> {
    let label = format!("{} round {round} {scenario:?}", t.name);
    let (request, duration, rate) = match scenario {
        Scenario::Reads => (Request::Read, Duration::from_secs(args.duration_secs), None),
        Scenario::Place => (
            Request::Place,
            Duration::from_secs(args.duration_secs),
            None,
        ),
        Scenario::Journey => (
            Request::Place,
            Duration::from_secs(args.journey_secs),
            args.journey_rate,
        ),
    };
    let authorization: std::sync::Arc<str> = crate::harness::authorization()?.into();
    let load = |duration| Load {
        port: t.port,
        request,
        connections: args.connections,
        products: args.products,
        authorization: authorization.clone(),
        rate,
        duration,
    };
    if args.warmup_secs > 0 {
        log(&format!("{label}: warm-up {} s", args.warmup_secs));
        let warm = loadgen
            .spawn(load::run(load(Duration::from_secs(args.warmup_secs))))
            .await?;
        if warm.errors > 0 {
            log(&format!(
                "{label}: {} errors in the warm-up, first: {}",
                warm.errors,
                warm.first_error.unwrap_or_default()
            ));
        }
    }
    if let Some(stores) = &t.stores
        && request == Request::Place
    {
        drain(args, t, stores).await?;
    }
    let ticks = procfs::ticks_per_sec();
    let me = [std::process::id()];
    let in_postgres = !matches!(t.kind, Kind::Sqlite(_) | Kind::Url(_));
    let wal0 = if in_postgres {
        wal_position(args).await?
    } else {
        0
    };
    let (server0, pg0, self0) = (
        procfs::cpu(&t.pids, ticks),
        procfs::postgres_cpu(ticks),
        procfs::cpu(&me, ticks),
    );
    let shipped0 = match &t.stores {
        Some(s) if scenario == Scenario::Journey => s.fulfillment.count("shipments").await?,
        _ => 0,
    };
    let window_start_ms = chrono::Utc::now().timestamp_millis() as f64;
    let done0 = load::DONE.load(std::sync::atomic::Ordering::Relaxed);
    let started = Instant::now();
    let task = loadgen.spawn(load::run(load(duration)));
    let mut peak = procfs::rss_mib(&t.pids);
    let mut backlog = Vec::new();
    let mut next_progress = started + Duration::from_secs(5);
    let mut next_backlog = started + Duration::from_secs(1);
    while !task.is_finished() {
        tokio::time::sleep(Duration::from_millis(100)).await;
        peak = peak.max(procfs::rss_mib(&t.pids));
        let now = Instant::now();
        if let Some(s) = &t.stores
            && scenario == Scenario::Journey
            && now >= next_backlog
        {
            next_backlog += Duration::from_secs(1);
            let placed = (load::DONE.load(std::sync::atomic::Ordering::Relaxed) - done0) as i64;
            let shipped = s.fulfillment.count("shipments").await? - shipped0;
            backlog.push((started.elapsed().as_secs(), placed - shipped));
        }
        if now >= next_progress {
            next_progress += Duration::from_secs(5);
            let done = load::DONE.load(std::sync::atomic::Ordering::Relaxed) - done0;
            let secs = started.elapsed().as_secs_f64();
            log(&format!(
                "{label}: {secs:.0}/{} s, {done} answered, {:.0}/s{}",
                duration.as_secs(),
                done as f64 / secs,
                backlog
                    .last()
                    .map_or(String::new(), |b| format!(", backlog {}", b.1))
            ));
        }
    }
    let outcome = task.await?;
    let window_end_ms = chrono::Utc::now().timestamp_millis() as f64;
    let (server1, pg1, self1) = (
        procfs::cpu(&t.pids, ticks),
        procfs::postgres_cpu(ticks),
        procfs::cpu(&me, ticks),
    );
    let wal = if in_postgres {
        Some(wal_position(args).await? - wal0)
    } else {
        None
    };
    let shipped_at_end = match &t.stores {
        Some(s) if scenario == Scenario::Journey => {
            s.fulfillment.count("shipments").await? - shipped0
        }
        _ => 0,
    };
    let requests = outcome.latencies_us.len();
    let per_request = |d: Duration| {
        if requests == 0 {
            f64::NAN
        } else {
            d.as_secs_f64() * 1e6 / requests as f64
        }
    };
    let mut latencies: Vec<f64> = outcome
        .latencies_us
        .iter()
        .map(|us| *us as f64 / 1000.0)
        .collect();
    let journey = match (&t.stores, scenario) {
        (Some(stores), Scenario::Journey) => {
            let drain_started = Instant::now();
            drain(args, t, stores).await?;
            let drain_secs = drain_started.elapsed().as_secs_f64();
            let timeline = timeline(stores, window_start_ms).await?;
            let shipped_in_window = timeline
                .iter()
                .filter(|s| s.shipped <= window_end_ms)
                .count();
            let mut confirmed: Vec<f64> = timeline.iter().map(|s| s.confirmed - s.placed).collect();
            let mut shipped: Vec<f64> = timeline.iter().map(|s| s.shipped - s.placed).collect();
            Some(Journey {
                shipments_per_sec: shipped_in_window as f64 / outcome.elapsed.as_secs_f64(),
                journeys: timeline.len(),
                backlog_max: backlog.iter().map(|b| b.1).max().unwrap_or(0),
                backlog_end: requests as i64 - shipped_at_end,
                backlog,
                drain_secs,
                to_confirmed_ms: Latency::of(&mut confirmed),
                to_shipment_ms: Latency::of(&mut shipped),
                steps_ms: StepLatencies::of(&timeline),
                slowest_seconds: SlowSecond::of(&timeline, 5),
            })
        }
        _ => {
            if let Some(stores) = &t.stores
                && request == Request::Place
            {
                drain(args, t, stores).await?;
            }
            None
        }
    };
    Ok(Run {
        round,
        scenario,
        target: t.name.clone(),
        requests,
        errors: outcome.errors,
        first_error: outcome.first_error,
        seconds: outcome.elapsed.as_secs_f64(),
        per_sec: requests as f64 / outcome.elapsed.as_secs_f64(),
        latency_ms: Latency::of(&mut latencies),
        server_cpu_us_per_request: per_request(server1.saturating_sub(server0)),
        postgres_cpu_us_per_request: per_request(pg1.saturating_sub(pg0)),
        postgres_wal_bytes_per_request: wal.map(|bytes| {
            if requests == 0 {
                f64::NAN
            } else {
                bytes as f64 / requests as f64
            }
        }),
        load_generator_cpu_us_per_request: per_request(self1.saturating_sub(self0)),
        peak_rss_mib: peak,
        journey,
    })
}

/// How far PostgreSQL's write-ahead log has been written, in bytes since its start (the
/// whole server's: the bench's own queries only read).
async fn wal_position(args: &BenchArgs) -> anyhow::Result<i64> {
    let store = Store::open(
        format!(
            "postgres://postgres@{}:{}/postgres",
            args.pg_host, args.pg_port
        ),
        None,
    )
    .await?;
    let rows = store
        .rows("SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::int8".into())
        .await?;
    let position = rows.first().context("no row")?.try_get_by_index::<i64>(0)?;
    store.conn.close().await?;
    Ok(position)
}

/// Epoch-ms timestamps of each order placed since `since_ms` and shipped, at each step of its
/// journey as the module that took it recorded it.
#[derive(Debug, Clone, Copy)]
struct Steps {
    /// Placed (checkout's order).
    placed: f64,
    /// Stock held (catalog's hold of the order).
    held: f64,
    /// Payment opened (checkout's attempt, written by the handler of `StockReservedV1`).
    paying: f64,
    /// Confirmed (checkout's order, once paid).
    confirmed: f64,
    /// Shipment created (fulfillment).
    shipped: f64,
}

impl Steps {
    /// Each step's duration, ms, named as the fields of [`StepLatencies`], in journey order.
    fn durations(&self) -> [(&'static str, f64); 4] {
        [
            ("placed_to_held", self.held - self.placed),
            ("held_to_paying", self.paying - self.held),
            ("paying_to_confirmed", self.confirmed - self.paying),
            ("confirmed_to_shipped", self.shipped - self.confirmed),
        ]
    }
}

/// The steps of each order placed since `since_ms` that reached its shipment.
async fn timeline(stores: &Stores, since_ms: f64) -> anyhow::Result<Vec<Steps>> {
    let (c, k, f) = (&stores.checkout, &stores.catalog, &stores.fulfillment);
    let orders = c
        .rows(format!(
            "SELECT {} AS id, {} AS created, {} AS confirmed, {} AS paying \
             FROM {} o JOIN {} p ON p.order_id = o.id \
             WHERE o.status = 'confirmed' AND {} >= {since_ms}",
            c.id("o.id"),
            c.epoch_ms("o.created_at"),
            c.epoch_ms("o.updated_at"),
            c.epoch_ms("p.created_at"),
            c.table("orders"),
            c.table("payment_attempts"),
            c.epoch_ms("o.created_at"),
        ))
        .await?;
    let by_order = |store: &Store, table: &str, column: &str| {
        format!(
            "SELECT {} AS id, {} AS at FROM {} WHERE {} >= {since_ms}",
            store.id("order_id"),
            store.epoch_ms(column),
            store.table(table),
            store.epoch_ms(column),
        )
    };
    let times = |rows: Vec<sea_orm::QueryResult>| -> anyhow::Result<HashMap<String, f64>> {
        let mut out = HashMap::new();
        for row in rows {
            out.insert(row.try_get::<String>("", "id")?, row.try_get("", "at")?);
        }
        Ok(out)
    };
    let held = times(k.rows(by_order(k, "order_holds", "updated_at")).await?)?;
    let shipped = times(f.rows(by_order(f, "shipments", "created_at")).await?)?;
    let mut out = Vec::new();
    for row in orders {
        let id: String = row.try_get("", "id")?;
        if let (Some(held), Some(shipped)) = (held.get(&id), shipped.get(&id)) {
            out.push(Steps {
                placed: row.try_get("", "created")?,
                held: *held,
                paying: row.try_get("", "paying")?,
                confirmed: row.try_get("", "confirmed")?,
                shipped: *shipped,
            });
        }
    }
    Ok(out)
}

/// The figures of the report, one line each, a column per target (rounds joined by " / ")
/// and, when the last target is not ours, the ratio of the first target's mean to its.
fn table(report: &Report) -> String {
    let targets: Vec<String> = report.memory.keys().cloned().collect();
    let mut order: Vec<String> = Vec::new();
    for r in &report.runs {
        if !order.contains(&r.target) {
            order.push(r.target.clone());
        }
    }
    for t in targets {
        if !order.contains(&t) {
            order.push(t);
        }
    }
    let peer = order
        .iter()
        .position(|t| !t.starts_with("ours-"))
        .filter(|p| *p > 0);
    let width = order
        .iter()
        .map(|t| t.chars().count() + 2)
        .max()
        .unwrap_or(0)
        .max(14);
    let mut out = format!("\n{:<52}", "figure");
    for t in &order {
        out.push_str(&format!("{t:>width$}"));
    }
    if let Some(p) = peer {
        out.push_str(&format!(
            "{:>24}",
            format!("{} ÷ {}", short(&order[0]), short(&order[p]))
        ));
    }
    out.push('\n');
    let mut line = |label: String, values: Vec<Vec<f64>>| {
        out.push_str(&format!("{label:<52}"));
        for v in &values {
            let text = if v.is_empty() {
                "-".to_owned()
            } else {
                v.iter().map(|x| fmt(*x)).collect::<Vec<_>>().join(" / ")
            };
            out.push_str(&format!("{text:>width$}"));
        }
        if let Some(p) = peer {
            let mean = |v: &Vec<f64>| v.iter().sum::<f64>() / v.len() as f64;
            if !values[0].is_empty() && !values[p].is_empty() {
                // 0 ÷ 0 (no errors on either side) or x ÷ 0 has no ratio to show.
                let ratio = mean(&values[0]) / mean(&values[p]);
                let text = if ratio.is_finite() {
                    format!("{ratio:.2}")
                } else {
                    "-".to_owned()
                };
                out.push_str(&format!("{text:>24}"));
            }
        }
        out.push('\n');
    };
    type Figure = (&'static str, fn(&Run) -> Option<f64>);
    let figures: [Figure; 18] = [
        ("req/s", |r| Some(r.per_sec)),
        ("latency p50, ms", |r| Some(r.latency_ms.p50)),
        ("latency p99, ms", |r| Some(r.latency_ms.p99)),
        ("errors", |r| Some(r.errors as f64)),
        ("server CPU per request, µs", |r| {
            Some(r.server_cpu_us_per_request)
        }),
        ("PostgreSQL CPU per request, µs", |r| {
            Some(r.postgres_cpu_us_per_request)
        }),
        ("PostgreSQL WAL per request, bytes", |r| {
            r.postgres_wal_bytes_per_request
        }),
        ("load generator CPU per request, µs", |r| {
            Some(r.load_generator_cpu_us_per_request)
        }),
        ("shipments/s in the window", |r| {
            r.journey.as_ref().map(|j| j.shipments_per_sec)
        }),
        ("backlog max, orders", |r| {
            r.journey.as_ref().map(|j| j.backlog_max as f64)
        }),
        ("backlog at end of placing, orders", |r| {
            r.journey.as_ref().map(|j| j.backlog_end as f64)
        }),
        ("placement → confirmed p99, ms", |r| {
            r.journey.as_ref().map(|j| j.to_confirmed_ms.p99)
        }),
        ("placement → shipment p50, ms", |r| {
            r.journey.as_ref().map(|j| j.to_shipment_ms.p50)
        }),
        ("placement → shipment p99, ms", |r| {
            r.journey.as_ref().map(|j| j.to_shipment_ms.p99)
        }),
        ("step p99: placed → stock held, ms", |r| {
            r.journey.as_ref().map(|j| j.steps_ms.placed_to_held.p99)
        }),
        ("step p99: stock held → payment opened, ms", |r| {
            r.journey.as_ref().map(|j| j.steps_ms.held_to_paying.p99)
        }),
        ("step p99: payment opened → confirmed, ms", |r| {
            r.journey
                .as_ref()
                .map(|j| j.steps_ms.paying_to_confirmed.p99)
        }),
        ("step p99: confirmed → shipment, ms", |r| {
            r.journey
                .as_ref()
                .map(|j| j.steps_ms.confirmed_to_shipped.p99)
        }),
    ];
    for scenario in [Scenario::Reads, Scenario::Place, Scenario::Journey] {
        if !report.runs.iter().any(|r| r.scenario == scenario) {
            continue;
        }
        for (name, get) in figures.iter() {
            let values: Vec<Vec<f64>> = order
                .iter()
                .map(|t| {
                    report
                        .runs
                        .iter()
                        .filter(|r| r.scenario == scenario && &r.target == t)
                        .filter_map(get)
                        .collect()
                })
                .collect();
            if values.iter().all(Vec::is_empty) {
                continue;
            }
            line(format!("{scenario:?}: {name}").to_lowercase(), values);
        }
    }
    type Mem = (&'static str, fn(&Memory) -> Option<f64>);
    let memory: [Mem; 6] = [
        ("memory idle, MiB", |m| Some(m.idle_mib)),
        ("  of it mapped files (code, libraries), MiB", |m| {
            Some(m.idle_file_mib)
        }),
        ("memory holding idle connections, MiB", |m| {
            m.idle_connections_mib
        }),
        ("memory peak under load, MiB", |m| {
            Some(m.peak_under_load_mib)
        }),
        ("memory idle after load, MiB", |m| {
            Some(m.idle_after_load_mib)
        }),
        ("memory holding idle connections after load, MiB", |m| {
            m.idle_connections_after_load_mib
        }),
    ];
    for (i, (name, get)) in memory.into_iter().enumerate() {
        // A failed target was stopped: only its figures from before the load are real.
        let values = order
            .iter()
            .map(|t| {
                report
                    .memory
                    .get(t)
                    .filter(|_| i < 2 || !report.failed.contains_key(t))
                    .and_then(get)
                    .into_iter()
                    .collect()
            })
            .collect();
        line(name.to_owned(), values);
    }
    for (target, error) in &report.failed {
        out.push_str(&format!(
            "{target} FAILED (its later runs skipped): {error}\n"
        ));
    }
    out.push_str(&format!(
        "load average before {}, after {}; {} cores\n",
        report.machine.load_average_before, report.machine.load_average_after, report.machine.cores
    ));
    out
}

fn short(name: &str) -> &str {
    name.strip_prefix("ours-").unwrap_or(name)
}

fn fmt(x: f64) -> String {
    if x.is_nan() {
        "-".to_owned()
    } else if x.abs() >= 100.0 {
        format!("{x:.0}")
    } else if x.abs() >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(target: &str, errors: u64) -> Run {
        let latency = Latency {
            p50: 1.0,
            p90: 2.0,
            p99: 3.0,
            max: 4.0,
        };
        Run {
            round: 1,
            scenario: Scenario::Place,
            target: target.to_owned(),
            requests: 100,
            errors,
            first_error: None,
            seconds: 1.0,
            per_sec: 100.0,
            latency_ms: latency,
            server_cpu_us_per_request: 10.0,
            postgres_cpu_us_per_request: 0.0,
            postgres_wal_bytes_per_request: Some(0.0),
            load_generator_cpu_us_per_request: 1.0,
            peak_rss_mib: 1.0,
            journey: None,
        }
    }

    #[test]
    fn the_ratio_column_shows_a_dash_where_the_peer_figure_is_zero() {
        let report = Report {
            machine: Machine {
                cores: 2,
                load_average_before: String::new(),
                load_average_after: String::new(),
            },
            settings: json!({}),
            memory: BTreeMap::new(),
            runs: vec![run("ours-pg", 0), run("peer", 0)],
            failed: BTreeMap::new(),
        };
        let table = table(&report);
        assert!(!table.contains("NaN"), "{table}");
        assert!(!table.contains("inf"), "{table}");
        let line = |name: &str| {
            table
                .lines()
                .find(|l| l.starts_with(name))
                .unwrap_or_else(|| panic!("no line {name:?} in {table}"))
                .to_owned()
        };
        assert!(line("place: errors").trim_end().ends_with('-'), "{table}");
        assert!(
            line("place: postgresql cpu").trim_end().ends_with('-'),
            "{table}"
        );
        assert!(line("place: req/s").trim_end().ends_with("1.00"), "{table}");
    }

    #[test]
    fn a_failed_target_is_named_in_the_table_beside_the_others_figures() {
        let report = Report {
            machine: Machine {
                cores: 2,
                load_average_before: String::new(),
                load_average_after: String::new(),
            },
            settings: json!({}),

            runs: vec![run("ours-sqlite", 0)],
            memory: BTreeMap::from([
                ("ours-sqlite".to_owned(), Memory::default()),
                ("ours-pg".to_owned(), Memory::default()),
            ]),
            failed: BTreeMap::from([(
                "ours-pg".to_owned(),
                "round 1 Journey: only 10 of 20 orders reached a shipment in 600 s".to_owned(),
            )]),
        };
        let table = table(&report);
        assert!(table.contains("ours-sqlite"), "{table}");
        assert!(
            table.contains("ours-pg FAILED (its later runs skipped): round 1 Journey: only 10"),
            "{table}"
        );
        let peak = table
            .lines()
            .find(|l| l.starts_with("memory peak under load"))
            .unwrap_or_else(|| panic!("no memory peak line in {table}"));
        assert!(peak.trim_end().ends_with('-'), "{table}");
    }
}
