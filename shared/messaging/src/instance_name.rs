//! One live process per instance name and module on the in-process bus. Claims are made in
//! the instance's name, and a process takes back every claim under its name when it
//! starts: two live processes under one name would take back, renew and delete each
//! other's claims, and one key could run on both at once.
//!
//! The name is held by something given back the moment its holder dies, so a restarted
//! process gets it at once: on PostgreSQL a session advisory lock on a connection of its
//! own (the server ends the session when the process's socket closes), on SQLite an
//! exclusive lock on a file beside the module's database (the kernel drops it with the
//! process). A second live process does not get it: it logs at ERROR, sets the
//! `bus_duplicate_instance` gauge, fails the bus's readiness check, and claims nothing
//! until the first one is gone; then it takes over by itself.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use sea_orm::{DbBackend, sqlx};
use tokio_util::task::AbortOnDropHandle;

use store::{ModuleDb, query};

/// What the reader and readiness need to know of the name.
#[derive(Default)]
pub(crate) struct NameState {
    /// This process holds the name: it may claim.
    owned: AtomicBool,
    /// Another live process holds it.
    duplicate: AtomicBool,
}

impl NameState {
    pub(crate) fn owned(&self) -> bool {
        self.owned.load(Ordering::Acquire)
    }

    pub(crate) fn duplicate(&self) -> bool {
        self.duplicate.load(Ordering::Acquire)
    }
}

/// Holds the name while it lives; dropping it gives the name back.
pub(crate) struct InstanceName {
    pub(crate) state: Arc<NameState>,
    /// Owns the lock (its connection or file): ending it gives the name back.
    _keeper: AbortOnDropHandle<()>,
}

enum Holder {
    Postgres(Option<sqlx::PgConnection>),
    Sqlite {
        path: Option<std::path::PathBuf>,
        file: Option<std::fs::File>,
    },
}

impl InstanceName {
    /// Tries to take `instance` for `db`'s module, then keeps trying (or keeps holding) in
    /// the background, every `every` while held and every `retry` while not. Fails only if
    /// the lock cannot even be tried (the database is out of reach, the lock file cannot
    /// be created).
    pub(crate) async fn take(
        db: &ModuleDb,
        instance: &str,
        every: Duration,
        retry: Duration,
    ) -> anyhow::Result<Self> {
        let mut holder = match db.backend() {
            DbBackend::Sqlite => Holder::Sqlite {
                path: lock_path(db, instance).await?,
                file: None,
            },
            _ => Holder::Postgres(None),
        };
        let key = format!("shop.bus_instance:{}:{instance}", db.module());
        let state = Arc::new(NameState::default());
        let held = hold(db, &key, &mut holder).await?;
        note(&state, db.module(), instance, Ok(held));
        let keeper = {
            let (db, state, instance) = (db.clone(), state.clone(), instance.to_owned());
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(if state.owned() { every } else { retry }).await;
                    let held = hold(&db, &key, &mut holder).await;
                    note(&state, db.module(), &instance, held);
                }
            })
        };
        Ok(Self {
            state,
            _keeper: AbortOnDropHandle::new(keeper),
        })
    }
}

/// Records what the last try found, logging each change.
fn note(state: &NameState, module: &str, instance: &str, held: anyhow::Result<bool>) {
    match held {
        Ok(true) => {
            if state.duplicate.swap(false, Ordering::AcqRel) {
                tracing::warn!(
                    module,
                    instance,
                    "the other process under this bus.instance is gone; this one takes work again"
                );
            }
            metrics::gauge!("bus_duplicate_instance", "module" => module.to_owned()).set(0.0);
            state.owned.store(true, Ordering::Release);
        }
        Ok(false) => {
            state.owned.store(false, Ordering::Release);
            if !state.duplicate.swap(true, Ordering::AcqRel) {
                tracing::error!(
                    module,
                    instance,
                    "another live process consumes this module under the same bus.instance; this one takes no work while it lives (give every process its own bus.instance)"
                );
            }
            metrics::gauge!("bus_duplicate_instance", "module" => module.to_owned()).set(1.0);
        }
        Err(e) => {
            // The lock's connection is gone (a database restart, say), and the lock with
            // it: claim nothing until it is taken again. Said once per loss, not on every
            // retry while the database is away.
            if state.owned.swap(false, Ordering::AcqRel) {
                tracing::warn!(module, instance, error = %format!("{e:#}"), "lost the bus instance name with its connection; retrying");
            } else {
                tracing::debug!(module, instance, error = %format!("{e:#}"), "cannot take the bus instance name yet; retrying");
            }
        }
    }
}

/// Takes or keeps the lock; `Ok(false)` when another live process holds it.
async fn hold(db: &ModuleDb, key: &str, holder: &mut Holder) -> anyhow::Result<bool> {
    match holder {
        Holder::Postgres(conn) => {
            if let Some(c) = conn.as_mut() {
                // The session lives, so does its lock.
                if sqlx::query("SELECT 1").execute(&mut *c).await.is_ok() {
                    return Ok(true);
                }
                *conn = None;
            }
            let mut c = db
                .conn()
                .get_postgres_connection_pool()
                .acquire()
                .await
                .context("no connection for the instance lock")?
                .detach();
            let got: bool =
                sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
                    .bind(key)
                    .fetch_one(&mut c)
                    .await
                    .context("failed to take the instance lock")?;
            if got {
                *conn = Some(c);
            }
            Ok(got)
        }
        Holder::Sqlite { path, file } => {
            let Some(path) = path else {
                // An in-memory database: no other process can share it.
                return Ok(true);
            };
            if file.is_some() {
                return Ok(true);
            }
            let f = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&*path)
                .with_context(|| format!("cannot open the lock file {}", path.display()))?;
            match f.try_lock() {
                Ok(()) => {
                    *file = Some(f);
                    Ok(true)
                }
                Err(std::fs::TryLockError::WouldBlock) => Ok(false),
                Err(std::fs::TryLockError::Error(e)) => {
                    Err(e).with_context(|| format!("cannot lock {}", path.display()))
                }
            }
        }
    }
}

/// The lock file of `instance` beside the module's SQLite database file; none for an
/// in-memory database.
async fn lock_path(db: &ModuleDb, instance: &str) -> anyhow::Result<Option<std::path::PathBuf>> {
    let rows = query(
        db.conn(),
        "SELECT file FROM pragma_database_list WHERE name = 'main'",
        vec![],
    )
    .await?;
    let file: String = match rows.first() {
        Some(row) => row.try_get("", "file")?,
        None => String::new(),
    };
    if file.is_empty() {
        return Ok(None);
    }
    let name = file_safe(instance);
    Ok(Some(format!("{file}.bus-{name}.lock").into()))
}

/// `instance` as a file-name part, one to one: letters, digits and `-` stay, every other
/// byte becomes `_` and two hex digits, so `a.b` and `a_b` never share a lock file.
fn file_safe(instance: &str) -> String {
    let mut name = String::with_capacity(instance.len());
    for byte in instance.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'-' {
            name.push(char::from(byte));
        } else {
            name.push_str(&format!("_{byte:02x}"));
        }
    }
    name
}

#[cfg(test)]
mod tests {
    use super::file_safe;

    #[test]
    fn names_that_differ_get_lock_files_that_differ() {
        let names = [
            "a.b", "a_b", "a-b", "a/b", "a b", "ab", "a_2eb", "é", "host-1",
        ];
        let files: std::collections::HashSet<String> = names.iter().map(|n| file_safe(n)).collect();
        assert_eq!(files.len(), names.len(), "{files:?}");
        assert_eq!(file_safe("host-1"), "host-1");
        assert_eq!(file_safe("a/b"), "a_2fb");
        assert!(files.iter().all(|f| {
            f.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        }));
    }
}
