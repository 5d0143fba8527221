//! `cargo xtask move-data <module> --out | --in`: moves a module's data between the
//! monolith's database and its service's own database, whole, verified, and only when no
//! event can be lost or applied twice.
//!
//! What moves is the module's whole schema (PostgreSQL) or file (SQLite): its business
//! tables, and with them its outbox (unpublished events are published by the new owner),
//! its inbox (so an event handled before the move is still recognized after it), and its
//! dead letters. Before moving, it checks that:
//! - the module runs nowhere: no instance holds its relay lease or claims in its queue,
//!   and no instance is a live member of its Redis consumer group;
//! - its in-process queue (`bus_queue`) is drained: those deliveries cannot follow a move
//!   to the Redis bus (run the monolith with `bus.kind = "redis"` until it is empty);
//! - moving back in (`--in`), no event between the module and the modules of the monolith
//!   waits in Redis (delivered to a consumer group and not acknowledged, or not yet read):
//!   once inlined, those events travel in-process and nothing would read them there;
//! - the target holds no data of the module and is at the same migration.
//!
//! After copying it compares every table's row count and checksum on both sides, then
//! puts the source aside (the schema is renamed, the file is renamed) unless told to drop
//! it.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use futures::TryStreamExt;
use module_api::Module;
use runtime::config::{Backend, Settings};
use sea_orm::{ConnectionTrait, DatabaseConnection, Statement};
use secrecy::ExposeSecret;

use crate::progress::Steps;

#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// The module whose data moves.
    pub(crate) module: String,
    /// From the monolith's database to the service's.
    #[arg(
        long,
        conflicts_with = "into_monolith",
        required_unless_present = "into_monolith"
    )]
    pub(crate) out: bool,
    /// From the service's database back to the monolith's.
    #[arg(long = "in")]
    pub(crate) into_monolith: bool,
    /// Check everything and say what would move; change nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// Delete the source once the copy is verified, instead of keeping it renamed.
    #[arg(long)]
    pub(crate) drop_source: bool,
    /// The monolith's PostgreSQL database, if not the one its settings name.
    #[arg(long)]
    pub(crate) monolith_database: Option<String>,
    /// The service's PostgreSQL database, if not the one its settings name.
    #[arg(long)]
    pub(crate) service_database: Option<String>,
}

struct Side {
    name: &'static str,
    settings: Settings,
}

pub(crate) fn run(root: &std::path::Path, args: &Args) -> anyhow::Result<()> {
    let module = args.module.as_str();
    anyhow::ensure!(
        crate::boundaries::modules(root)?
            .iter()
            .any(|m| m == module),
        "there is no module {module:?}"
    );
    let service_dir = root.join("services").join(module).join("config");
    anyhow::ensure!(
        service_dir.is_dir(),
        "{module} has no service (services/{module}/config): run `cargo xtask extract {module}` first"
    );
    let load = |dir: PathBuf| {
        Settings::load_from_process_env_in(&dir.display().to_string())
            .map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))
    };
    let mut monolith = Side {
        name: "monolith",
        settings: load(root.join("config"))?,
    };
    let mut service = Side {
        name: "service",
        settings: load(service_dir)?,
    };
    if let Some(database) = &args.monolith_database {
        monolith.settings.database.postgres.database = database.clone();
    }
    if let Some(database) = &args.service_database {
        service.settings.database.postgres.database = database.clone();
    }
    let (from, to) = if args.out {
        (monolith, service)
    } else {
        (service, monolith)
    };
    anyhow::ensure!(
        from.settings.database.backend == to.settings.database.backend,
        "the {} uses {} and the {} {}: a move needs the same backend on both sides",
        from.name,
        from.settings.database.backend,
        to.name,
        to.settings.database.backend
    );
    let runtime = tokio::runtime::Runtime::new()?;
    let mut steps = Steps::new("move-data", 7);
    let aside = runtime.block_on(async {
        steps.step(if args.into_monolith {
            format!(
                "checking that {module} runs nowhere (its Redis consumer group, both sides) \
                 and that no event between it and the monolith waits in Redis"
            )
        } else {
            format!("checking that {module} runs nowhere (its Redis consumer group, both sides)")
        });
        check_not_consuming(&from.settings, module).await?;
        check_not_consuming(&to.settings, module).await?;
        if args.into_monolith {
            check_nothing_waits(&from.settings, module).await?;
        }
        match from.settings.database.backend {
            Backend::Postgres => postgres(root, module, &from, &to, args, &mut steps).await,
            Backend::Sqlite => sqlite(module, &from, &to, args, &mut steps).await,
        }
    })?;
    if let Some(aside) = aside {
        crate::progress::next(&what_next(module, &from, &to, &aside));
    }
    Ok(())
}

/// What an operator does after a move: start the side that now owns the data, check it,
/// switch the traffic, and remove the copy kept aside once satisfied.
fn what_next(module: &str, from: &Side, to: &Side, aside: &str) -> Vec<String> {
    let port = to.settings.server.port;
    // On one machine the service takes another admin port than the monolith's, as
    // `cargo xtask extract` says.
    let (package, admin) = if to.name == "service" {
        (
            format!("{module}-service"),
            format!(
                "APP__SERVER__ADMIN_PORT={} ",
                crate::templates::ADMIN_PORT + port.saturating_sub(8080)
            ),
        )
    } else {
        ("app".to_owned(), String::new())
    };
    let mut next = Vec::new();
    if to.name == "monolith" {
        next.push(format!(
            "bring the code back too: cargo xtask inline {module}, then cargo build -p app"
        ));
    }
    next.push(format!(
        "start the {} on this database: {admin}cargo run -p {package} (or deploy it)",
        to.name
    ));
    next.push(format!(
        "verify it: curl -fsS http://127.0.0.1:{port}/readyz answers 200 once it migrated and \
         subscribed, and cargo run -p {package} -- dead-letters list --module {module} shows \
         the dead letters the {} had",
        from.name
    ));
    next.push(if to.name == "service" {
        format!(
            "switch: send /api/{module}/ to the service on port {port} (the monolith, without \
             {module} and on the Redis bus, answers 404 there); keep the monolith stopped \
             until its configuration no longer enables {module}"
        )
    } else {
        format!(
            "switch: send /api/{module}/ back to the monolith on port {port} and retire \
             {module}-service's deployment"
        )
    });
    next.push(format!(
        "once satisfied, remove the {}'s copy kept aside: {aside}",
        from.name
    ));
    next
}

fn stamp() -> String {
    chrono::Utc::now().format("%Y%m%d%H%M%S").to_string()
}

/// No instance of the module may be a live member of its Redis consumer group.
async fn check_not_consuming(settings: &Settings, module: &str) -> anyhow::Result<()> {
    if settings.bus.kind == runtime::config::BusKind::Local {
        return Ok(());
    }
    let redis = &settings.bus.redis;
    let client = redis::Client::open(redis.url.as_str())?;
    let Ok(Ok(mut conn)) = tokio::time::timeout(
        Duration::from_secs(3),
        client.get_multiplexed_async_connection(),
    )
    .await
    else {
        bail!(
            "Redis at {} does not answer: cannot check that {module} runs nowhere",
            redis.url
        );
    };
    if let Some(password) = &redis.password {
        let _: () = redis::cmd("AUTH")
            .arg(password.expose_secret())
            .query_async(&mut conn)
            .await?;
    }
    let now = chrono::Utc::now().timestamp_millis();
    let live: Vec<String> = redis::cmd("ZRANGEBYSCORE")
        .arg(format!("{}:members:{module}", redis.namespace))
        .arg(now)
        .arg("+inf")
        .query_async(&mut conn)
        .await?;
    anyhow::ensure!(
        live.is_empty(),
        "{module} still runs: {} consume its events from Redis; stop them first",
        live.join(", ")
    );
    Ok(())
}

/// Moving back in: no event between `module` and another module may wait in Redis, since
/// after `inline` they travel in-process and nothing would read what is left there.
async fn check_nothing_waits(settings: &Settings, module: &str) -> anyhow::Result<()> {
    if settings.bus.kind == runtime::config::BusKind::Local {
        return Ok(());
    }
    let waiting = runtime::host::waiting_in_redis(settings, module).await?;
    anyhow::ensure!(
        waiting.is_empty(),
        "events between {module} and the monolith still wait in Redis and would not follow \
         {module} back (once inlined they travel in-process): {}. Run the monolith and the \
         service until none waits (`redis-cli XINFO GROUPS` on the streams above shows no \
         pending and no lag), stop both, then move the data again",
        waiting.join("; ")
    );
    Ok(())
}

/// The module's messaging tables say whether it runs here and whether its queue is empty.
async fn check_idle(conn: &DatabaseConnection, module: &str, side: &str) -> anyhow::Result<i64> {
    let now = chrono::Utc::now().timestamp_millis();
    let held = scalar(
        conn,
        &format!(
            "SELECT COUNT(*) FROM relay_lease WHERE holder IS NOT NULL AND held_until > {now}"
        ),
    )
    .await?;
    anyhow::ensure!(
        held == 0,
        "{module} still runs against the {side}'s database (its relay lease is held): stop it first"
    );
    let claimed = scalar(
        conn,
        &format!("SELECT COUNT(*) FROM bus_queue WHERE locked_until > {now}"),
    )
    .await?;
    anyhow::ensure!(
        claimed == 0,
        "{module} still runs against the {side}'s database (it is handling events): stop it first"
    );
    let queued = scalar(conn, "SELECT COUNT(*) FROM bus_queue").await?;
    anyhow::ensure!(
        queued == 0,
        "{module}'s in-process queue in the {side}'s database still holds {queued} event(s) that cannot follow the move: \
         run the {side} with bus.kind = \"redis\" and {module} enabled until the queue is empty, then stop it"
    );
    scalar(
        conn,
        "SELECT COUNT(*) FROM outbox WHERE published_at IS NULL",
    )
    .await
}

async fn scalar(conn: &DatabaseConnection, sql: &str) -> anyhow::Result<i64> {
    let row = conn
        .query_one_raw(Statement::from_string(
            conn.get_database_backend(),
            sql.to_owned(),
        ))
        .await
        .with_context(|| sql.to_owned())?
        .context("no row")?;
    Ok(row.try_get_by_index::<i64>(0)?)
}

async fn strings(conn: &DatabaseConnection, sql: &str) -> anyhow::Result<Vec<String>> {
    let rows = conn
        .query_all_raw(Statement::from_string(
            conn.get_database_backend(),
            sql.to_owned(),
        ))
        .await
        .with_context(|| sql.to_owned())?;
    rows.iter()
        .map(|r| Ok(r.try_get_by_index::<String>(0)?))
        .collect()
}

/// Brings `module`'s schema on `conn` to this build's migrations, the module's own.
async fn migrate(conn: &DatabaseConnection, module: &str) -> Result<(), sea_orm::DbErr> {
    let modules: [&dyn Module; 3] = [
        &catalog::Catalog,
        &checkout::Checkout,
        &fulfillment::Fulfillment,
    ];
    match modules.into_iter().find(|m| m.name() == module) {
        Some(m) => m.migrate(conn).await,
        None => Err(sea_orm::DbErr::Custom(format!(
            "this build has no migrations for module {module}"
        ))),
    }
}

fn report(
    steps: &mut Steps,
    module: &str,
    from: &Side,
    to: &Side,
    unpublished: i64,
    tables: &[(String, i64)],
    dry_run: bool,
) {
    let verb = if dry_run { "would move" } else { "moving" };
    steps.step(format!(
        "counted: {verb} {module} from the {}'s database to the {}'s, {} tables, {} rows",
        from.name,
        to.name,
        tables.len(),
        tables.iter().map(|(_, rows)| rows).sum::<i64>()
    ));
    for (table, rows) in tables {
        steps.detail(format!("{table:<24} {rows:>10} rows"));
    }
    if unpublished > 0 {
        eprintln!(
            "  ({unpublished} unpublished event(s) move with the outbox; the {} publishes them when it starts)",
            to.name
        );
    }
}

// ----------------------------------------------------------------------------- PostgreSQL

async fn owner(settings: &Settings, schema: &str) -> anyhow::Result<DatabaseConnection> {
    let pg = &settings.database.postgres;
    let conn = runtime::db::connect_postgres(
        pg,
        &pg.owner_user,
        pg.owner_password
            .as_ref()
            .map(|s| s.expose_secret().to_owned()),
        schema,
        2,
    )
    .await
    .with_context(|| {
        format!(
            "connecting to database {} as {}",
            pg.database, pg.owner_user
        )
    })?;
    conn.execute_unprepared("SET TIME ZONE 'UTC'").await?;
    Ok(conn)
}

/// The module's tables, parents before the tables whose foreign keys point at them.
async fn tables_in_order(conn: &DatabaseConnection, schema: &str) -> anyhow::Result<Vec<String>> {
    let mut tables = strings(
        conn,
        &format!(
            "SELECT table_name::text FROM information_schema.tables \
             WHERE table_schema = '{schema}' AND table_type = 'BASE TABLE' AND table_name <> 'seaql_migrations' ORDER BY 1"
        ),
    )
    .await?;
    let edges = conn
        .query_all_raw(Statement::from_string(
            conn.get_database_backend(),
            format!(
                "SELECT c.conrelid::regclass::text AS child, c.confrelid::regclass::text AS parent FROM pg_constraint c \
                 JOIN pg_namespace n ON n.oid = c.connamespace WHERE c.contype = 'f' AND n.nspname = '{schema}'"
            ),
        ))
        .await?;
    let edges: Vec<(String, String)> = edges
        .iter()
        .map(|r| {
            let strip = |s: String| {
                s.rsplit('.')
                    .next()
                    .unwrap_or_default()
                    .trim_matches('"')
                    .to_owned()
            };
            Ok((
                strip(r.try_get("", "child")?),
                strip(r.try_get("", "parent")?),
            ))
        })
        .collect::<anyhow::Result<_>>()?;
    let mut ordered = Vec::new();
    while !tables.is_empty() {
        let ready = tables
            .iter()
            .position(|t| {
                !edges
                    .iter()
                    .any(|(child, parent)| child == t && parent != t && !ordered.contains(parent))
            })
            .context("foreign keys form a cycle")?;
        ordered.push(tables.remove(ready));
    }
    Ok(ordered)
}

async fn pg_checksum(
    conn: &DatabaseConnection,
    schema: &str,
    table: &str,
) -> anyhow::Result<(i64, String)> {
    let row = conn
        .query_one_raw(Statement::from_string(
            conn.get_database_backend(),
            format!(
                "SELECT COUNT(*) AS n, md5(COALESCE(string_agg(t::text, E'\\n' ORDER BY t::text), '')) AS sum \
                 FROM \"{schema}\".\"{table}\" t"
            ),
        ))
        .await?
        .context("no row")?;
    Ok((row.try_get("", "n")?, row.try_get("", "sum")?))
}

async fn postgres(
    root: &std::path::Path,
    module: &str,
    from: &Side,
    to: &Side,
    args: &Args,
    steps: &mut Steps,
) -> anyhow::Result<Option<String>> {
    let _ = root;
    steps.step(format!(
        "checking the {}'s database: {module}'s schema there, nothing running on it, its queue empty",
        from.name
    ));
    let source = owner(&from.settings, module).await?;
    let exists = scalar(
        &source,
        &format!("SELECT COUNT(*) FROM pg_namespace WHERE nspname = '{module}'"),
    )
    .await?;
    anyhow::ensure!(
        exists == 1,
        "the {}'s database has no schema {module}: nothing to move",
        from.name
    );
    let unpublished = check_idle(&source, module, from.name).await?;
    let tables = tables_in_order(&source, module).await?;
    let mut counts = Vec::new();
    for table in &tables {
        counts.push((table.clone(), pg_checksum(&source, module, table).await?.0));
    }
    report(steps, module, from, to, unpublished, &counts, args.dry_run);
    steps.step(format!(
        "checking the {}'s database: {module}'s schema at this build's migrations, empty",
        to.name
    ));

    // The target: the module's schema (and role) at this build's migrations, empty.
    if !args.dry_run {
        let m = module.to_owned();
        runtime::db::prepare_module(&to.settings.database, leak(module), async move |conn| {
            migrate(conn, &m).await
        })
        .await
        .context("preparing the target schema")?;
    }
    let target_db = owner(&to.settings, module).await?;
    let has_schema = scalar(
        &target_db,
        &format!("SELECT COUNT(*) FROM pg_namespace WHERE nspname = '{module}'"),
    )
    .await?;
    if has_schema == 1 {
        let target_tables = tables_in_order(&target_db, module).await?;
        for table in &target_tables {
            let rows = scalar(
                &target_db,
                &format!("SELECT COUNT(*) FROM \"{module}\".\"{table}\""),
            )
            .await?;
            anyhow::ensure!(
                rows == 0,
                "the {}'s database already holds {rows} row(s) in {module}.{table}: refusing to mix data",
                to.name
            );
        }
        let versions = |conn: &DatabaseConnection| {
            let conn = conn.clone();
            async move {
                strings(
                    &conn,
                    &format!("SELECT version FROM \"{module}\".seaql_migrations ORDER BY version"),
                )
                .await
            }
        };
        let (source_versions, target_versions) =
            (versions(&source).await?, versions(&target_db).await?);
        anyhow::ensure!(
            source_versions == target_versions || args.dry_run,
            "the source is at migrations {source_versions:?} and the target at {target_versions:?}: migrate the source with this build first (app migrate)"
        );
    }
    if args.dry_run {
        eprintln!("\ndry run: checks passed; nothing was moved");
        return Ok(None);
    }

    // Copy, table by table, parents first, in one target transaction.
    steps.step(format!(
        "copying {} tables in one transaction, parents first",
        tables.len()
    ));
    let mut reader = source.get_postgres_connection_pool().acquire().await?;
    let mut writer = target_db.get_postgres_connection_pool().acquire().await?;
    sea_orm::sqlx::Executor::execute(&mut *writer, "BEGIN").await?;
    for table in &tables {
        let mut rows = reader
            .copy_out_raw(&format!(
                "COPY \"{module}\".\"{table}\" TO STDOUT (FORMAT binary)"
            ))
            .await?;
        let mut copy = writer
            .copy_in_raw(&format!(
                "COPY \"{module}\".\"{table}\" FROM STDIN (FORMAT binary)"
            ))
            .await?;
        while let Some(chunk) = rows.try_next().await? {
            copy.send(chunk).await?;
        }
        drop(rows);
        let copied = copy.finish().await?;
        steps.detail(format!("copied {table:<24} {copied:>10} rows"));
    }
    sea_orm::sqlx::Executor::execute(&mut *writer, "COMMIT").await?;
    drop(reader);
    drop(writer);
    // Serial ids carry on after the copied rows.
    let serials = target_db
        .query_all_raw(Statement::from_string(
            target_db.get_database_backend(),
            format!(
                "SELECT table_name::text AS t, column_name::text AS c FROM information_schema.columns \
                 WHERE table_schema = '{module}' AND (column_default LIKE 'nextval(%' OR is_identity = 'YES')"
            ),
        ))
        .await?;
    for row in serials {
        let (t, c): (String, String) = (row.try_get("", "t")?, row.try_get("", "c")?);
        target_db
            .execute_unprepared(&format!(
                "SELECT setval(pg_get_serial_sequence('\"{module}\".\"{t}\"', '{c}'), COALESCE((SELECT MAX(\"{c}\") FROM \"{module}\".\"{t}\"), 0) + 1, false)"
            ))
            .await?;
    }
    // Verify.
    steps.step(format!(
        "verifying {} tables: row counts and checksums on both sides",
        tables.len()
    ));
    for table in &tables {
        let a = pg_checksum(&source, module, table).await?;
        let b = pg_checksum(&target_db, module, table).await?;
        anyhow::ensure!(
            a == b,
            "{module}.{table} differs after the copy ({a:?} here, {b:?} there): the source is left as it was"
        );
        eprintln!("  verified {table:<24} {:>10} rows  md5 {}", a.0, a.1);
    }
    // Put the source aside.
    steps.step(format!("putting the {}'s copy aside", from.name));
    let aside = if args.drop_source {
        source
            .execute_unprepared(&format!("DROP SCHEMA \"{module}\" CASCADE"))
            .await?;
        eprintln!("dropped schema {module} in the {}'s database", from.name);
        "nothing (--drop-source dropped it)".to_owned()
    } else {
        let aside = format!("{module}_moved_{}", stamp());
        source
            .execute_unprepared(&format!("ALTER SCHEMA \"{module}\" RENAME TO \"{aside}\""))
            .await?;
        eprintln!(
            "the {}'s copy is kept as schema {aside} (drop it once you are satisfied)",
            from.name
        );
        format!(
            "DROP SCHEMA \"{aside}\" CASCADE in the {}'s database",
            from.name
        )
    };
    eprintln!("{module}'s data now lives in the {}'s database", to.name);
    Ok(Some(aside))
}

fn leak(module: &str) -> &'static str {
    Box::leak(module.to_owned().into_boxed_str())
}

// --------------------------------------------------------------------------------- SQLite

async fn sqlite_open(path: &std::path::Path) -> anyhow::Result<DatabaseConnection> {
    let options = sea_orm::ConnectOptions::new(format!("sqlite://{}?mode=rw", path.display()));
    Ok(sea_orm::Database::connect(options).await?)
}

async fn sqlite_checksum(conn: &DatabaseConnection, table: &str) -> anyhow::Result<(i64, String)> {
    use sha2::{Digest, Sha256};
    let columns = strings(
        conn,
        &format!("SELECT name FROM pragma_table_info('{table}') ORDER BY cid"),
    )
    .await?;
    let expr = columns
        .iter()
        .map(|c| format!("quote(\"{c}\")"))
        .collect::<Vec<_>>()
        .join(" || '|' || ");
    let rows = strings(conn, &format!("SELECT {expr} FROM \"{table}\" ORDER BY 1")).await?;
    let mut hash = Sha256::new();
    for row in &rows {
        hash.update(row.as_bytes());
        hash.update(b"\n");
    }
    Ok((
        rows.len() as i64,
        hash.finalize().iter().map(|b| format!("{b:02x}")).collect(),
    ))
}

async fn sqlite_tables(conn: &DatabaseConnection) -> anyhow::Result<Vec<String>> {
    strings(
        conn,
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name",
    )
    .await
}

async fn sqlite(
    module: &str,
    from: &Side,
    to: &Side,
    args: &Args,
    steps: &mut Steps,
) -> anyhow::Result<Option<String>> {
    steps.step(format!(
        "checking the {}'s database: {module}'s file there, nothing running on it, its queue empty",
        from.name
    ));
    let source_path = runtime::db::sqlite_file(&from.settings.database.sqlite, module);
    let target_path = runtime::db::sqlite_file(&to.settings.database.sqlite, module);
    anyhow::ensure!(
        source_path.is_file(),
        "{} does not exist: nothing to move",
        source_path.display()
    );
    let source = sqlite_open(&source_path).await?;
    let unpublished = check_idle(&source, module, from.name).await?;
    let tables = sqlite_tables(&source).await?;
    let mut counts = Vec::new();
    for table in tables.iter().filter(|t| *t != "seaql_migrations") {
        counts.push((
            table.clone(),
            scalar(&source, &format!("SELECT COUNT(*) FROM \"{table}\"")).await?,
        ));
    }
    report(steps, module, from, to, unpublished, &counts, args.dry_run);
    steps.step(format!(
        "checking the {}'s database: {} holds no data of {module}",
        to.name,
        target_path.display()
    ));
    if target_path.exists() {
        // A service that started once made an empty file: that may be replaced, data not.
        let target = sqlite_open(&target_path).await?;
        for table in sqlite_tables(&target)
            .await?
            .iter()
            .filter(|t| *t != "seaql_migrations")
        {
            let rows = scalar(&target, &format!("SELECT COUNT(*) FROM \"{table}\"")).await?;
            anyhow::ensure!(
                rows == 0,
                "{} already holds {rows} row(s) in {table}: refusing to mix data",
                target_path.display()
            );
        }
        target.close().await?;
    }
    if args.dry_run {
        eprintln!("\ndry run: checks passed; nothing was moved");
        return Ok(None);
    }
    steps.step(format!(
        "copying {} to {}",
        source_path.display(),
        target_path.display()
    ));
    if target_path.exists() {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", target_path.display()));
        }
    }
    if let Some(dir) = target_path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    source
        .execute_unprepared("PRAGMA wal_checkpoint(TRUNCATE)")
        .await?;
    source
        .execute_unprepared(&format!(
            "VACUUM INTO '{}'",
            target_path.display().to_string().replace('\'', "''")
        ))
        .await
        .context("copying the database file")?;
    let target = sqlite_open(&target_path).await?;
    target
        .execute_unprepared("PRAGMA journal_mode = WAL")
        .await?;
    steps.step(format!(
        "verifying {} tables: row counts and checksums on both sides",
        tables.len()
    ));
    for table in &tables {
        let a = sqlite_checksum(&source, table).await?;
        let b = sqlite_checksum(&target, table).await?;
        anyhow::ensure!(
            a == b,
            "{table} differs after the copy ({a:?} here, {b:?} there): the source is left as it was"
        );
        eprintln!(
            "  verified {table:<24} {:>10} rows  sha256 {}",
            a.0,
            &a.1[..16]
        );
    }
    target.close().await?;
    source.close().await?;
    steps.step(format!("putting the {}'s copy aside", from.name));
    let aside = if args.drop_source {
        std::fs::remove_file(&source_path)?;
        eprintln!("deleted {}", source_path.display());
        "nothing (--drop-source deleted it)".to_owned()
    } else {
        let aside = format!("{}.moved-{}", source_path.display(), stamp());
        std::fs::rename(&source_path, &aside)?;
        eprintln!("the {}'s copy is kept as {aside}", from.name);
        format!("rm {aside}")
    };
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", source_path.display()));
    }
    eprintln!("{module}'s data now lives in {}", target_path.display());
    Ok(Some(aside))
}
