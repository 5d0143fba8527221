//! What a module's handlers are written against: the [`Handler`] trait, the errors a
//! handler returns, the [`Emitter`] that collects what it publishes, and the helpers that
//! decode an event's payload.

use std::sync::Arc;

use async_trait::async_trait;
use contracts::{Cause, Envelope, Event};
use sea_orm::{DatabaseTransaction, DbErr};
use tokio::sync::Notify;

/// Why a handler did not finish.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// Worth retrying: the database was busy, a dependency was down, ...
    #[error("{0:#}")]
    Retry(anyhow::Error),
    /// Retrying cannot help (the event contradicts the handler's data): park it now.
    #[error("{0}")]
    Reject(String),
}

impl From<DbErr> for HandlerError {
    fn from(e: DbErr) -> Self {
        HandlerError::Retry(anyhow::Error::new(e))
    }
}

impl From<anyhow::Error> for HandlerError {
    fn from(e: anyhow::Error) -> Self {
        HandlerError::Retry(e)
    }
}

/// What a handler publishes, committed with its work.
pub struct Emitter {
    pub(super) events: Vec<Envelope>,
    pub(super) wakes: Vec<Arc<Notify>>,
    pub(super) after_commit: Vec<Box<dyn FnOnce() + Send>>,
}

impl Emitter {
    pub(super) fn new() -> Self {
        Self {
            events: Vec::new(),
            wakes: Vec::new(),
            after_commit: Vec::new(),
        }
    }

    /// Publishes `event` as a consequence of `cause`, the event being handled: it keeps
    /// the correlation and the trace, and names `cause` as its causation.
    pub fn emit<E: Event>(&mut self, cause: &Envelope, event: &E) -> Result<(), HandlerError> {
        let envelope = Envelope::new(event, &Cause::following(cause))
            .map_err(|e| HandlerError::Reject(format!("would publish an invalid event: {e}")))?;
        self.events.push(envelope);
        Ok(())
    }

    /// Wakes `notify` once the handler's transaction has committed.
    pub fn wake_after_commit(&mut self, notify: Arc<Notify>) {
        self.wakes.push(notify);
    }

    /// Runs `f` once the handler's transaction has committed, and never if it rolls back
    /// (a business counter, say: a batch that is rolled back and handled again one event
    /// at a time must not count twice).
    pub fn after_commit(&mut self, f: impl FnOnce() + Send + 'static) {
        self.after_commit.push(Box::new(f));
    }
}

/// Reads an event's payload as `E`; one that does not fit is refused for good (the
/// consumer already checked the contract, so this means the handler was given the wrong
/// type).
pub fn decode<E: Event>(event: &Envelope) -> Result<E, HandlerError> {
    event
        .decode()
        .map_err(|err| HandlerError::Reject(err.to_string()))
}

/// [`decode`] for a batch, keeping each event beside its payload.
pub fn decode_all<'a, E: Event>(
    events: &[&'a Envelope],
) -> Result<Vec<(&'a Envelope, E)>, HandlerError> {
    events.iter().map(|e| Ok((*e, decode(e)?))).collect()
}

/// One of a module's event handlers.
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// A stable name, recorded in the inbox. Never derive it from a Rust path: renaming
    /// code must not make old events look new, nor orphan the ones already handled.
    fn name(&self) -> &'static str;

    /// The wire names of the events it handles.
    fn event_types(&self) -> &'static [&'static str];

    /// Does the work for `events`, in the order given, inside the consumer's transaction,
    /// which also holds their inbox keys and the outbox rows of what it emits. The events
    /// have distinct ordering keys (a subscription never hands out two of one key at
    /// once), so a handler may apply them in one set-based pass: many events per round
    /// trip. It must tolerate events of other keys and topics arriving in any order.
    async fn handle(
        &self,
        tx: &DatabaseTransaction,
        events: &[&Envelope],
        out: &mut Emitter,
    ) -> Result<(), HandlerError>;
}
