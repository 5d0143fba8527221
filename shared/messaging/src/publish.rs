//! One transaction that publishes: what a request's use case, the payment recorder and an
//! event handler all write and publish through.
//!
//! A module holds a [`Store`] (its database and its outbox together). `store.begin(cause)`
//! opens a [`Tx`]; `db/` functions take it where they take a connection (it is one, and it
//! derefs to the sea-orm transaction); `tx.publish(&event)` checks the event against its
//! contract and keeps its envelope; `tx.commit()` writes every kept event to the outbox in
//! one multi-row `INSERT`, commits, wakes the relay if anything was published, and then
//! runs the hooks given to `tx.after_commit`. A `Tx` dropped without `commit` rolls back:
//! nothing is published and no hook runs. Rows given to `tx.insert_at_commit`, and changes
//! given to `tx.change_at_commit` (updates nothing in the transaction reads after), are
//! written with the outbox's, in the same statement on PostgreSQL: a round trip fewer for
//! each write a transaction leaves to its end.
//!
//! A batch whose only changes are such inserts needs no transaction around them on
//! PostgreSQL: [`Store::writes`] collects them and their events and writes them in one
//! statement ([`Writes`]).
//!
//! A transaction begun for a request has one cause, the request's, and `publish` uses it.
//! One that holds a batch (a consumer's, the payment recorder's) has none: each of its
//! events follows its own cause, given with [`Tx::publish_with`] (for a handler, the
//! event it handles: `incoming.cause`, see `on`).
//!
//! Self-contained on purpose: it needs only a module's database, its outbox and the
//! contracts.

use std::ops::Deref;
use std::sync::Arc;

use async_trait::async_trait;
use contracts::{Cause, ContractError, Envelope, Event};
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr, ExecResult,
    QueryResult, Statement,
};
use tokio::sync::Notify;

use crate::outbox::{Outbox, outbox_rows};
use store::{ModuleDb, Rows, write_together};

/// A module's database and its outbox: where its transactions begin.
#[derive(Clone, Debug)]
pub struct Store {
    db: ModuleDb,
    outbox: Outbox,
}

impl Store {
    pub fn new(db: ModuleDb, outbox: Outbox) -> Self {
        Self { db, outbox }
    }

    /// The module's database, for reads outside any transaction and for transactions
    /// that publish nothing.
    pub fn db(&self) -> &ModuleDb {
        &self.db
    }

    /// A connection of the module's pool, for reads outside any transaction.
    pub fn conn(&self) -> &DatabaseConnection {
        self.db.conn()
    }

    /// Begins a write transaction whose events are published as consequences of `cause`
    /// (a request's).
    pub async fn begin(&self, cause: &Cause) -> Result<Tx, DbErr> {
        let tx = self.db.begin().await?;
        Ok(Tx::new(tx, Some(cause.clone()), self.outbox.waker()))
    }

    /// Begins a write transaction for a batch whose events each follow a cause of their
    /// own ([`Tx::publish_with`]).
    pub async fn begin_batch(&self) -> Result<Tx, DbErr> {
        let tx = self.db.begin().await?;
        Ok(Tx::new(tx, None, self.outbox.waker()))
    }

    /// Collects inserts and events for a batch that writes nothing else: see [`Writes`].
    pub fn writes(&self) -> Writes {
        Writes {
            db: self.db.clone(),
            at_commit: AtCommit::default(),
            wake: self.outbox.waker(),
        }
    }
}

/// What a transaction or a batch's [`Writes`] writes when it commits: rows given to
/// [`AtCommit::insert_at_commit`], then the outbox rows of the events published, in one
/// statement on PostgreSQL.
#[derive(Default)]
pub struct AtCommit {
    events: Vec<Envelope>,
    changes: Vec<Statement>,
    inserts: Vec<(&'static str, Rows)>,
}

impl AtCommit {
    /// Publishes `event` as a consequence of `cause`, once the writes commit: in a batch,
    /// the cause of the one item it follows.
    pub fn publish_with<E: Event>(&mut self, cause: &Cause, event: &E) -> Result<(), PublishError> {
        self.events.push(Envelope::new(event, cause)?);
        Ok(())
    }

    /// Inserts `rows` into `table` when the writes commit, before the outbox rows and in
    /// the same statement on PostgreSQL (`store::insert_rows_together`), in the order
    /// given: for rows nothing in the transaction reads or writes after (they are not there
    /// until then). An insert that fails fails the commit, and nothing of it is kept.
    pub fn insert_at_commit(&mut self, table: &'static str, rows: Rows) {
        self.inserts.push((table, rows));
    }

    /// Runs `change` when the writes commit, before the inserts and in the same statement
    /// on PostgreSQL (`store::write_together`, which says what such a statement may hold),
    /// in the order given: for a change nothing in the transaction reads or writes after,
    /// and whose rows no other change or insert at commit touches.
    pub fn change_at_commit(&mut self, change: Statement) {
        self.changes.push(change);
    }

    fn publishes(&self) -> bool {
        !self.events.is_empty()
    }

    /// Every insert, the outbox's last, each event's `publish` span started.
    fn rows(&mut self) -> Vec<(&'static str, Rows)> {
        let mut inserts = std::mem::take(&mut self.inserts);
        if self.publishes() {
            crate::trace::published(&mut self.events);
            inserts.push(("outbox", outbox_rows(&self.events)));
        }
        inserts
    }

    /// Writes the changes, then every insert and the outbox rows, on `conn`.
    async fn write(&mut self, conn: &impl ConnectionTrait) -> Result<(), DbErr> {
        let changes = std::mem::take(&mut self.changes);
        let inserts = self.rows();
        write_together(conn, changes, inserts).await
    }
}

/// The writes of a batch whose only changes are inserts that nothing reads back before
/// they are done, and the events they publish (each with its own cause): on PostgreSQL
/// [`Writes::commit`] writes them all in one statement, which is atomic on its own, so no
/// `BEGIN` and `COMMIT` round trips surround it; on SQLite, in one transaction. What the
/// batch reads first, it reads on the pool ([`Store::conn`]); a read in a transaction
/// sees nothing more under PostgreSQL's read committed. It is not a connection: nothing
/// can write through it but its commit.
pub struct Writes {
    db: ModuleDb,
    at_commit: AtCommit,
    wake: Arc<Notify>,
}

impl Writes {
    /// Where the inserts and events go.
    pub fn at_commit(&mut self) -> &mut AtCommit {
        &mut self.at_commit
    }

    /// Writes the inserts and the outbox rows, all or none, and wakes the relay if
    /// anything was published.
    pub async fn commit(mut self) -> Result<(), DbErr> {
        if self.db.backend() == DbBackend::Postgres {
            self.at_commit.write(self.db.conn()).await?;
        } else {
            let tx = self.db.begin().await?;
            self.at_commit.write(&tx).await?;
            tx.commit().await?;
        }
        if self.at_commit.publishes() {
            self.wake.notify_one();
        }
        Ok(())
    }
}

/// Why an event could not be published.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The event does not fit its contract: the code that built it is at fault.
    #[error("would publish an invalid event: {0}")]
    Contract(#[from] ContractError),
    /// [`Tx::publish`] on a batch's transaction, which has no cause of its own.
    #[error(
        "this transaction holds a batch and has no cause of its own: publish each event with the cause it follows"
    )]
    NoCause,
}

/// Work run once a transaction has committed.
type Hook = Box<dyn FnOnce() + Send + Sync>;

/// A module's write transaction, with the events it publishes and what runs once it has
/// committed. See the module's documentation.
pub struct Tx {
    tx: DatabaseTransaction,
    cause: Option<Cause>,
    /// Rows and events written at commit.
    at_commit: AtCommit,
    hooks: Vec<Hook>,
    wake: Arc<Notify>,
}

impl Tx {
    /// A transaction of `tx`, which the caller began (the consumer's engine, after the
    /// inbox keys of its batch).
    pub(crate) fn new(tx: DatabaseTransaction, cause: Option<Cause>, wake: Arc<Notify>) -> Self {
        Self {
            tx,
            cause,
            at_commit: AtCommit::default(),
            hooks: Vec::new(),
            wake,
        }
    }

    /// Publishes `event` as a consequence of the transaction's cause, once it commits.
    pub fn publish<E: Event>(&mut self, event: &E) -> Result<(), PublishError> {
        let cause = self.cause.as_ref().ok_or(PublishError::NoCause)?;
        self.at_commit.publish_with(cause, event)
    }

    /// Publishes `event` as a consequence of `cause`, once the transaction commits: in a
    /// batch, the cause of the one item it follows ([`AtCommit::publish_with`]).
    pub fn publish_with<E: Event>(&mut self, cause: &Cause, event: &E) -> Result<(), PublishError> {
        self.at_commit.publish_with(cause, event)
    }

    /// Inserts `rows` into `table` when the transaction commits: see
    /// [`AtCommit::insert_at_commit`].
    pub fn insert_at_commit(&mut self, table: &'static str, rows: Rows) {
        self.at_commit.insert_at_commit(table, rows)
    }

    /// Runs `change` when the transaction commits: see [`AtCommit::change_at_commit`].
    pub fn change_at_commit(&mut self, change: Statement) {
        self.at_commit.change_at_commit(change)
    }

    /// Where the inserts and events written at commit go, as with [`Writes::at_commit`].
    pub fn at_commit(&mut self) -> &mut AtCommit {
        &mut self.at_commit
    }

    /// Runs `f` once the transaction has committed, after the hooks given before it, and
    /// never if it rolls back (a business counter: a batch rolled back and handled again
    /// one event at a time must not count twice; a wake-up of a worker that reads what
    /// this transaction writes).
    pub fn after_commit(&mut self, f: impl FnOnce() + Send + Sync + 'static) {
        self.hooks.push(Box::new(f));
    }

    /// Writes the published events to the outbox, commits, wakes the relay if anything
    /// was published, then runs the hooks in the order they were given.
    pub async fn commit(mut self) -> Result<(), DbErr> {
        self.write_outbox().await?;
        self.commit_written().await?.run();
        Ok(())
    }

    /// The first half of [`Tx::commit`]: the changes given to [`Tx::change_at_commit`],
    /// the rows given to [`Tx::insert_at_commit`] and the outbox rows, in this transaction,
    /// in one statement on PostgreSQL.
    pub(crate) async fn write_outbox(&mut self) -> Result<(), DbErr> {
        self.at_commit.write(&self.tx).await
    }

    /// The second half of [`Tx::commit`]: commits, and hands back what is due once it did
    /// (the consumer's engine runs its crash points between the halves).
    pub(crate) async fn commit_written(self) -> Result<Committed, DbErr> {
        self.tx.commit().await?;
        Ok(Committed {
            wake: self.at_commit.publishes().then_some(self.wake),
            hooks: self.hooks,
        })
    }
}

/// What is due once a transaction committed: waking the relay, and the hooks.
pub(crate) struct Committed {
    wake: Option<Arc<Notify>>,
    hooks: Vec<Hook>,
}

impl Committed {
    pub(crate) fn run(self) {
        if let Some(wake) = self.wake {
            wake.notify_one();
        }
        for hook in self.hooks {
            hook();
        }
    }
}

impl Deref for Tx {
    type Target = DatabaseTransaction;

    fn deref(&self) -> &DatabaseTransaction {
        &self.tx
    }
}

/// A `Tx` is a connection, so `db/` functions that take `&impl ConnectionTrait` take it.
#[async_trait]
impl ConnectionTrait for Tx {
    fn get_database_backend(&self) -> DbBackend {
        self.tx.get_database_backend()
    }

    async fn execute_raw(&self, stmt: Statement) -> Result<ExecResult, DbErr> {
        self.tx.execute_raw(stmt).await
    }

    async fn execute_unprepared(&self, sql: &str) -> Result<ExecResult, DbErr> {
        self.tx.execute_unprepared(sql).await
    }

    async fn query_one_raw(&self, stmt: Statement) -> Result<Option<QueryResult>, DbErr> {
        self.tx.query_one_raw(stmt).await
    }

    async fn query_all_raw(&self, stmt: Statement) -> Result<Vec<QueryResult>, DbErr> {
        self.tx.query_all_raw(stmt).await
    }

    fn support_returning(&self) -> bool {
        self.tx.support_returning()
    }
}
