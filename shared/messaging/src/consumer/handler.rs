//! What a module's handlers are written against: the [`Handler`] trait, the errors a
//! handler returns, and the helpers that decode an event's payload. A handler writes and
//! publishes through the consumer's [`Tx`].

use async_trait::async_trait;
use contracts::{Envelope, Event};
use sea_orm::DbErr;

use crate::publish::{PublishError, Tx};

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

/// An event a handler would publish does not fit its contract (or names no cause):
/// retrying cannot help, so the event being handled is parked.
impl From<PublishError> for HandlerError {
    fn from(e: PublishError) -> Self {
        HandlerError::Reject(e.to_string())
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
    /// which also holds their inbox keys and the outbox rows of what it publishes (each
    /// with the cause of the event it follows: `tx.publish_with(&Cause::following(event),
    /// ..)`). The events
    /// have distinct ordering keys (a subscription never hands out two of one key at
    /// once), so a handler may apply them in one set-based pass: many events per round
    /// trip. It must tolerate events of other keys and topics arriving in any order.
    async fn handle(&self, tx: &mut Tx, events: &[&Envelope]) -> Result<(), HandlerError>;
}
