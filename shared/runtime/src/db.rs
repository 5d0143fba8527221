//! One module, one schema: each module gets its own connection pool, scoped so that
//! unqualified table names resolve to the module's own place and nowhere else.
//!
//! - SQLite: one database file per module (`<dir>/<module>.db`), opened as `main`. A module's
//!   business rows, outbox and inbox share that file, so one transaction covers them all;
//!   no transaction ever spans two files (WAL commits are atomic per file only).
//! - PostgreSQL: one schema per module, and one login role per module (`<prefix><module>`)
//!   with rights on that schema only, connected with `search_path` set to it. A query naming
//!   another module's schema fails with "permission denied". Migrations run as the owner role.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use sea_orm::sqlx::postgres::PgSslMode;
use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbErr};
use secrecy::ExposeSecret;

use crate::config::{Backend, DatabaseSettings, PostgresSettings, SqliteSettings, SslMode};

use store::ModuleDb;

/// The PostgreSQL role a module connects as.
pub fn module_role(settings: &PostgresSettings, module: &str) -> String {
    format!("{}{}", settings.role_prefix, module)
}

/// The SQLite file of a module.
pub fn sqlite_file(settings: &SqliteSettings, module: &str) -> PathBuf {
    settings.dir.join(format!("{module}.db"))
}

/// Opens the pool a module runs on: its own file, or its own role and schema.
pub async fn connect_module(
    settings: &DatabaseSettings,
    module: &'static str,
) -> anyhow::Result<ModuleDb> {
    let (conn, writer) = match settings.backend {
        Backend::Sqlite => {
            // Its write transactions on a pool of one connection of their own (see
            // `ModuleDb::with_writer`).
            let sqlite = &settings.sqlite;
            async {
                let pool = connect_sqlite(sqlite, module, sqlite.max_connections).await?;
                let writer = connect_sqlite(sqlite, module, 1).await?;
                Ok::<_, DbErr>((pool, Some(writer)))
            }
            .await
        }
        Backend::Postgres => {
            let pg = &settings.postgres;
            let password = pg
                .role_passwords
                .get(module)
                .map(|s| s.expose_secret().to_owned());
            connect_postgres(
                pg,
                &module_role(pg, module),
                password,
                module,
                pg.max_connections,
            )
            .await
            .map(|pool| (pool, None))
        }
    }
    .with_context(|| {
        format!(
            "failed to connect module {module} to its {} database",
            settings.backend
        )
    })?;
    let db = ModuleDb::new(module, conn);
    Ok(match writer {
        Some(writer) => db.with_writer(writer),
        None => db,
    })
}

/// A pool of at most `max_connections` on a module's file (the module's write
/// transactions get a pool of one of their own: [`ModuleDb::with_writer`]).
async fn connect_sqlite(
    settings: &SqliteSettings,
    module: &str,
    max_connections: u32,
) -> Result<DatabaseConnection, DbErr> {
    std::fs::create_dir_all(&settings.dir).map_err(|e| {
        DbErr::Custom(format!(
            "cannot create data directory {}: {e}",
            settings.dir.display()
        ))
    })?;
    let file = sqlite_file(settings, module);
    // The URL only selects the driver; the file is set below, verbatim.
    let mut options = ConnectOptions::new(format!("sqlite://{}", file.display()));
    let busy = Duration::from_millis(settings.busy_timeout_ms);
    let statements = settings.statement_cache_capacity;
    options
        .max_connections(max_connections)
        .min_connections(1)
        .max_lifetime(Duration::from_secs(settings.max_lifetime_secs))
        .acquire_timeout(busy + Duration::from_secs(5))
        // A file does not drop connections: no ping before handing one out.
        .test_before_acquire(false)
        .sqlx_logging(false)
        .map_sqlx_sqlite_opts(move |o| {
            o.filename(&file)
                .statement_cache_capacity(statements)
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                // FULL: a commit reported to a caller (and an event relayed from it) survives
                // a power cut, not only a killed process.
                .synchronous(SqliteSynchronous::Full)
                .busy_timeout(busy)
                .foreign_keys(true)
        });
    Database::connect(options).await
}

/// Opens a pool as `user` whose unqualified names resolve to `schema`.
pub async fn connect_postgres(
    settings: &PostgresSettings,
    user: &str,
    password: Option<String>,
    schema: &str,
    max_connections: u32,
) -> Result<DatabaseConnection, DbErr> {
    let url = format!(
        "postgres://{}:{}/{}",
        settings.host, settings.port, settings.database
    );
    let mut options = ConnectOptions::new(url);
    let user = user.to_owned();
    let schema = schema.to_owned();
    let statement_timeout = settings.statement_timeout_ms;
    let statements = settings.statement_cache_capacity;
    let ssl_mode = match settings.ssl_mode {
        SslMode::Disable => PgSslMode::Disable,
        SslMode::Prefer => PgSslMode::Prefer,
        SslMode::Require => PgSslMode::Require,
        SslMode::VerifyCa => PgSslMode::VerifyCa,
        SslMode::VerifyFull => PgSslMode::VerifyFull,
    };
    let root_cert = settings.ssl_root_cert.clone();
    options
        .max_connections(max_connections)
        .min_connections(0)
        .acquire_timeout(Duration::from_millis(settings.acquire_timeout_ms))
        .connect_timeout(Duration::from_secs(5))
        .idle_timeout(Duration::from_secs(300))
        .max_lifetime(Duration::from_secs(settings.max_lifetime_secs))
        // A ping before every acquire cost one round trip per query; ping only connections
        // idle long enough to have been dropped (a restarted server, a proxy's timeout).
        // A connection that broke while in use fails its query, which callers retry.
        .test_before_acquire_if_idle_for(Duration::from_secs(10))
        .sqlx_logging(false)
        .map_sqlx_postgres_opts(move |o| {
            let o = o
                .statement_cache_capacity(statements)
                .username(&user)
                .ssl_mode(ssl_mode)
                .application_name(&format!("shop-{schema}"))
                .options([
                    ("search_path", schema.clone()),
                    ("statement_timeout", statement_timeout.to_string()),
                ]);
            let o = match &root_cert {
                Some(cert) => o.ssl_root_cert(cert),
                None => o,
            };
            match &password {
                Some(p) => o.password(p),
                None => o,
            }
        });
    Database::connect(options).await
}

/// Whether PostgreSQL aborted one of `e`'s statements to break a deadlock (SQLSTATE 40P01).
pub fn is_deadlock(e: &anyhow::Error) -> bool {
    use sea_orm::{DbErr, RuntimeErr};
    e.chain().any(|cause| {
        let runtime = match cause.downcast_ref::<DbErr>() {
            Some(DbErr::Exec(r) | DbErr::Query(r) | DbErr::Conn(r)) => r,
            _ => return false,
        };
        matches!(runtime, RuntimeErr::SqlxError(sqlx) if sqlx
            .as_database_error()
            .and_then(|db| db.code())
            .is_some_and(|code| code == "40P01"))
    })
}

/// Creates (when missing) a module's schema and role, runs its migrations as the owner,
/// and grants the module's role rights on that schema only. Idempotent, and safe when
/// several processes start at once (PostgreSQL: an advisory lock per schema).
pub async fn prepare_module<F>(
    settings: &DatabaseSettings,
    module: &'static str,
    migrate: F,
) -> anyhow::Result<()>
where
    F: AsyncFnOnce(&DatabaseConnection) -> Result<(), DbErr>,
{
    match settings.backend {
        Backend::Sqlite => {
            let conn = connect_sqlite(&settings.sqlite, module, settings.sqlite.max_connections)
                .await
                .with_context(|| format!("failed to open the {module} database file"))?;
            migrate(&conn)
                .await
                .with_context(|| format!("failed to migrate module {module}"))?;
            conn.close().await.ok();
        }
        Backend::Postgres => {
            let pg = &settings.postgres;
            let owner = connect_postgres(
                pg,
                &pg.owner_user,
                pg.owner_password
                    .as_ref()
                    .map(|s| s.expose_secret().to_owned()),
                module,
                1,
            )
            .await
            .with_context(|| format!("failed to connect as owner role {}", pg.owner_user))?;
            let result = prepare_postgres_module(pg, &owner, module, migrate).await;
            owner.close().await.ok();
            result?;
        }
    }
    Ok(())
}

async fn prepare_postgres_module<F>(
    pg: &PostgresSettings,
    owner: &DatabaseConnection,
    module: &'static str,
    migrate: F,
) -> anyhow::Result<()>
where
    F: AsyncFnOnce(&DatabaseConnection) -> Result<(), DbErr>,
{
    // Module and role names were validated as [a-z][a-z0-9_]*, so quoting them is enough.
    let schema = quote_ident(module);
    let role_name = module_role(pg, module);
    let role = quote_ident(&role_name);
    let lock = format!("SELECT pg_advisory_lock(hashtext('shop.migrate.{module}'))");
    exec(owner, &lock).await?;
    let result = async {
        exec(owner, &format!("CREATE SCHEMA IF NOT EXISTS {schema}")).await?;
        if pg.provision_roles {
            // Roles are global to the cluster: several databases (and parallel tests) may
            // race to create the same one, which is fine.
            exec(
                owner,
                &format!(
                    "DO $$ BEGIN CREATE ROLE {role} LOGIN; \
                     EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$"
                ),
            )
            .await?;
            if let Some(password) = pg.role_passwords.get(module) {
                exec(owner, &set_password_statement(&role_name, password.expose_secret())).await?;
            }
        }
        if pg.provision_roles {
            exec(owner, REVOKE_PUBLIC_DEFAULTS).await?;
        }
        exec(owner, &format!("REVOKE ALL ON SCHEMA {schema} FROM PUBLIC")).await?;
        exec(owner, &format!("GRANT USAGE ON SCHEMA {schema} TO {role}")).await?;
        exec(
            owner,
            &format!(
                "ALTER DEFAULT PRIVILEGES IN SCHEMA {schema} \
                 GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {role}"
            ),
        )
        .await?;
        exec(
            owner,
            &format!(
                "ALTER DEFAULT PRIVILEGES IN SCHEMA {schema} GRANT USAGE, SELECT ON SEQUENCES TO {role}"
            ),
        )
        .await?;
        migrate(owner)
            .await
            .with_context(|| format!("failed to migrate module {module}"))?;
        // Tables created before the default privileges existed, or by another owner.
        exec(
            owner,
            &format!("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO {role}"),
        )
        .await?;
        exec(
            owner,
            &format!("GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {schema} TO {role}"),
        )
        .await?;
        // What the module's role may not do on tables it does not own: analyze those that
        // outgrew their planner statistics.
        for statement in crate::statistics::provision(&schema, &role) {
            exec(owner, &statement).await?;
        }
        anyhow::Ok(())
    }
    .await;
    let unlock = format!("SELECT pg_advisory_unlock(hashtext('shop.migrate.{module}'))");
    exec(owner, &unlock).await.ok();
    result.with_context(|| format!("failed to prepare schema {module} for role {role_name}"))
}

/// Takes from PUBLIC, in this database only, what PostgreSQL gives every role by default:
/// `USAGE` and `CREATE` on schema `public` and `TEMPORARY` on the database, so that a module
/// role reaches its own schema and nothing else. A right granted to PUBLIC cannot be
/// revoked from one role (each role holds it through PUBLIC), hence PUBLIC; the database is
/// the system's own, and the owner role keeps its rights as owner. Only when the rights are
/// still there (a REVOKE takes a row lock that concurrent starts would fight over), under a
/// lock of its own.
const REVOKE_PUBLIC_DEFAULTS: &str = "BEGIN; \
    SELECT pg_advisory_xact_lock(hashtext('shop.migrate.public')); \
    DO $$ BEGIN \
      IF EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'public') \
         AND (has_schema_privilege('public', 'public', 'USAGE') \
              OR has_schema_privilege('public', 'public', 'CREATE')) THEN \
        REVOKE ALL ON SCHEMA public FROM PUBLIC; \
      END IF; \
      IF has_database_privilege('public', current_database(), 'TEMPORARY') THEN \
        EXECUTE format('REVOKE TEMPORARY ON DATABASE %I FROM PUBLIC', current_database()); \
      END IF; \
    END $$; \
    COMMIT";

/// `ALTER ROLE … PASSWORD` with a SCRAM-SHA-256 verifier computed here: the statement, which
/// the server may log (`log_statement`, or the `STATEMENT:` line of an error), never holds
/// the plaintext.
pub fn set_password_statement(role: &str, password: &str) -> String {
    format!(
        "ALTER ROLE {} PASSWORD {}",
        quote_ident(role),
        quote_literal(&crate::scram::verifier(password))
    )
}

async fn exec(conn: &DatabaseConnection, sql: &str) -> Result<(), DbErr> {
    conn.execute_unprepared(sql).await.map(|_| ())
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::config::Sources;

    /// The machine's PostgreSQL (127.0.0.1:5432) serves TLS with Debian's self-signed
    /// "snakeoil" certificate, made for the name `localhost`.
    const SNAKEOIL: &str = "/etc/ssl/certs/ssl-cert-snakeoil.pem";

    fn postgres(host: &str, mode: SslMode, root: Option<PathBuf>) -> PostgresSettings {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config");
        let settings = crate::config::Settings::load(Sources {
            dir: &dir,
            environment: "test",
            env_vars: Some(Default::default()),
        })
        .expect("the test settings load");
        let mut pg = settings.database.postgres;
        pg.host = host.into();
        pg.port = 5432;
        pg.database = "postgres".into();
        pg.ssl_mode = mode;
        pg.ssl_root_cert = root;
        pg
    }

    async fn encrypted(pg: &PostgresSettings) -> Result<bool, DbErr> {
        let conn = connect_postgres(pg, "postgres", None, "public", 1).await?;
        let row = conn
            .query_one_raw(sea_orm::Statement::from_string(
                conn.get_database_backend(),
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            ))
            .await?
            .ok_or_else(|| DbErr::Custom("no row".into()))?;
        let ssl = row.try_get::<bool>("", "ssl")?;
        conn.close().await.ok();
        Ok(ssl)
    }

    /// `verify-full` connects only to a server whose certificate the CA file vouches for
    /// and that names the host; `verify-ca` checks the CA but not the name.
    #[tokio::test]
    async fn verify_full_checks_the_server_certificate_against_the_ca_file_and_the_host() {
        let snakeoil = Some(PathBuf::from(SNAKEOIL));
        let full = postgres("localhost", SslMode::VerifyFull, snakeoil.clone());
        assert!(
            encrypted(&full)
                .await
                .expect("the certificate names localhost"),
            "the connection is encrypted"
        );
        let by_address = postgres("127.0.0.1", SslMode::VerifyFull, snakeoil.clone());
        encrypted(&by_address)
            .await
            .expect_err("the certificate does not name 127.0.0.1");
        let ca_only = postgres("127.0.0.1", SslMode::VerifyCa, snakeoil);
        assert!(
            encrypted(&ca_only)
                .await
                .expect("verify-ca ignores the name")
        );

        // Another CA, even one for the same name, is not trusted.
        let dir = tempfile::tempdir().expect("dir");
        let other = dir.path().join("other-ca.pem");
        let made = std::process::Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ed25519", "-nodes", "-days", "1"])
            .args(["-subj", "/CN=localhost", "-keyout"])
            .arg(dir.path().join("key.pem"))
            .arg("-out")
            .arg(&other)
            .output()
            .expect("openssl runs");
        assert!(made.status.success(), "{made:?}");
        let untrusted = postgres("localhost", SslMode::VerifyFull, Some(other));
        encrypted(&untrusted)
            .await
            .expect_err("a server the CA file does not vouch for is refused");
    }

    /// A pooled connection older than its lifetime is closed when it comes back to the
    /// pool and another opened in its place, so a pool a burst filled shrinks back once the burst has passed (the pool
    /// hands idle connections out in turn: without a lifetime the background loops' trickle
    /// kept every one of them, with its prepared statements, for good).
    #[tokio::test]
    async fn a_pooled_connection_older_than_its_lifetime_is_replaced() {
        let mut pg = postgres("127.0.0.1", SslMode::Disable, None);
        pg.max_lifetime_secs = 1;
        let conn = connect_postgres(&pg, "postgres", None, "public", 1)
            .await
            .expect("connects");
        let backend = || async {
            let row = conn
                .query_one_raw(sea_orm::Statement::from_string(
                    conn.get_database_backend(),
                    "SELECT pg_backend_pid() AS pid",
                ))
                .await
                .expect("runs")
                .expect("a row");
            row.try_get::<i32>("", "pid").expect("a pid")
        };
        let first = backend().await;
        assert_eq!(backend().await, first, "a young connection is kept");
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        // Its last use: past its lifetime, it is closed when it comes back.
        backend().await;
        assert_ne!(backend().await, first, "an old one is not");
        conn.close().await.ok();
    }

    /// A connection keeps no more prepared statements than its cache holds: the ones it
    /// drops are closed on the server too. (The default of 100 kept every batch size's
    /// statement of a burst on every pooled connection until the process stopped.)
    #[tokio::test]
    async fn a_connection_keeps_no_more_prepared_statements_than_its_cache_holds() {
        let mut pg = postgres("127.0.0.1", SslMode::Disable, None);
        pg.statement_cache_capacity = 4;
        let conn = connect_postgres(&pg, "postgres", None, "public", 1)
            .await
            .expect("connects");
        let backend = conn.get_database_backend();
        for i in 0..10 {
            conn.query_one_raw(sea_orm::Statement::from_sql_and_values(
                backend,
                format!("SELECT $1::int + {i} AS n"),
                [1.into()],
            ))
            .await
            .expect("runs");
        }
        let row = conn
            .query_one_raw(sea_orm::Statement::from_string(
                backend,
                "SELECT count(*) AS n FROM pg_prepared_statements",
            ))
            .await
            .expect("counts")
            .expect("a row");
        let kept = row.try_get::<i64>("", "n").expect("a count");
        assert!(
            (1..=4).contains(&kept),
            "{kept} statements prepared on a connection whose cache holds 4"
        );
        conn.close().await.ok();
    }

    /// A deadlock PostgreSQL broke is told from other failures, through the context the
    /// migration adds, so that migrating tries again only then.
    #[tokio::test]
    async fn a_deadlock_is_told_from_other_database_errors() {
        let pg = postgres("127.0.0.1", SslMode::Disable, None);
        let a = connect_postgres(&pg, "postgres", None, "public", 1)
            .await
            .expect("connects");
        let b = connect_postgres(&pg, "postgres", None, "public", 1)
            .await
            .expect("connects");
        // Keys of this run's own: another test's advisory locks are left alone.
        let one = std::process::id() as i32;
        let two = one.wrapping_neg().wrapping_sub(1);
        let (lock_one, lock_two) = (
            format!("SELECT pg_advisory_lock({one})"),
            format!("SELECT pg_advisory_lock({two})"),
        );
        exec(&a, &lock_one).await.expect("a takes one");
        exec(&b, &lock_two).await.expect("b takes two");
        // Each waits for the other's: PostgreSQL aborts one of the two waits, whose
        // connection then lets go of its lock so that the other gets it.
        let wait = async |conn: &DatabaseConnection, sql: &str| {
            let waited = exec(conn, sql).await;
            if waited.is_err() {
                exec(conn, "SELECT pg_advisory_unlock_all()").await.ok();
            }
            waited
        };
        let (from_a, from_b) = tokio::join!(wait(&a, &lock_two), wait(&b, &lock_one));
        let failed = match (from_a, from_b) {
            (Err(e), Ok(())) | (Ok(()), Err(e)) => e,
            other => panic!("one of the two waits fails: {other:?}"),
        };
        let failed = anyhow::Error::new(failed).context("failed to migrate module catalog");
        assert!(is_deadlock(&failed), "{failed:#}");
        let other = exec(&a, "SELECT * FROM no_such_table")
            .await
            .expect_err("no such table");
        assert!(!is_deadlock(&anyhow::Error::new(other).context("failed")));
        for conn in [&a, &b] {
            exec(conn, "SELECT pg_advisory_unlock_all()").await.ok();
        }
        a.close().await.ok();
        b.close().await.ok();
    }

    #[test]
    fn setting_a_password_sends_a_verifier_not_the_plaintext() {
        let statement = set_password_statement("shop_catalog", "pa'ss-W0rd-plain");
        assert!(
            statement.starts_with("ALTER ROLE \"shop_catalog\" PASSWORD 'SCRAM-SHA-256$4096:"),
            "{statement}"
        );
        assert!(
            !statement.contains("pa'ss") && !statement.contains("W0rd"),
            "{statement}"
        );
    }

    /// On SQLite a module's write transactions queue for one connection of their own:
    /// writers at once all commit, in turn, even with no busy timeout at all. (Each on a
    /// connection of the pool, they meet the file's lock: with no timeout they fail at
    /// once, and with one they sleep in SQLite's busy handler, 1 to 100 ms a try, while
    /// the lock is free: at 1,650 orders/s the embedded journey fell behind by 20,930
    /// orders in 40 s that way.) Writes outside a transaction queue there too.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_writers_queue_for_one_write_connection_not_for_the_file_lock() {
        let dir = tempfile::tempdir().expect("dir");
        let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config");
        let mut settings = crate::config::Settings::load(Sources {
            dir: &config,
            environment: "test",
            env_vars: Some(Default::default()),
        })
        .expect("the test settings load")
        .database;
        settings.backend = Backend::Sqlite;
        settings.sqlite.dir = dir.path().into();
        settings.sqlite.max_connections = 4;
        settings.sqlite.busy_timeout_ms = 0;
        let db = connect_module(&settings, "catalog").await.expect("opens");
        db.conn()
            .execute_unprepared("CREATE TABLE t (n INTEGER NOT NULL)")
            .await
            .expect("table");
        let writers = (0..8).map(|w| {
            let db = db.clone();
            tokio::spawn(async move {
                for i in 0..20 {
                    let tx = db
                        .begin()
                        .await
                        .expect("begins without waiting on the lock");
                    tx.execute_unprepared(&format!("INSERT INTO t (n) VALUES ({})", w * 100 + i))
                        .await
                        .expect("inserts");
                    // Held across an await, as a handler's transaction is.
                    tokio::task::yield_now().await;
                    tx.commit().await.expect("commits");
                    db.writes()
                        .execute_unprepared("INSERT INTO t (n) VALUES (-1)")
                        .await
                        .expect("a write outside a transaction");
                }
            })
        });
        for writer in writers.collect::<Vec<_>>() {
            writer.await.expect("every writer finished");
        }
        let row = db
            .conn()
            .query_one_raw(sea_orm::Statement::from_string(
                db.backend(),
                "SELECT COUNT(*) AS n FROM t",
            ))
            .await
            .expect("counts")
            .expect("a row");
        assert_eq!(row.try_get::<i64>("", "n").expect("n"), 8 * 20 * 2);
        db.close().await.expect("closes");
    }
}
