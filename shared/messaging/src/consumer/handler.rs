//! What a module's handlers are written against: [`on`], which registers a function of
//! the consumer's [`Tx`] and a batch of decoded events of one type ([`Incoming`]) (and
//! [`on_each`], one event at a time), the
//! errors a handler returns, and the [`Handler`] trait the engine runs (what [`on`]
//! makes, and what the bus tests implement directly).

use std::marker::PhantomData;
use std::sync::Arc;

use async_trait::async_trait;
use contracts::{Cause, Envelope, Event};
use futures::future::BoxFuture;
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

/// One event of a batch handed to a module's handler, decoded.
#[derive(Debug, Clone)]
pub struct Incoming<E> {
    pub event: E,
    /// The cause of what the handler publishes as a consequence of this event (its
    /// correlation, this event as causation, the span that published it):
    /// `tx.publish_with(&incoming.cause, &event)`.
    pub cause: Cause,
}

/// What a handler function returns: the future of its work, borrowing the transaction.
pub type Handling<'a> = BoxFuture<'a, Result<(), HandlerError>>;

/// A module's handler of the events of type `E`, registered under `name` (its inbox key):
/// `on::<OrderPlacedV1>("catalog.reserve_stock", |tx, orders| Box::pin(reserve(tx, orders)))`.
///
/// The handler is a function of the consumer's transaction and the batch's events of type
/// `E`, decoded, each with its cause, in batch order: a handler works set-based over a
/// batch (see [`Handler::handle`]). It is a closure that returns a boxed future rather
/// than an `async fn` or a trait to implement: a bound cannot name the future of an `async
/// fn` that borrows its transaction, and a trait would bring back a type and an `impl`
/// block per handler. The closure only hands its two arguments to an ordinary `async fn`
/// of the module's use cases (`async fn reserve(tx: &mut Tx, orders:
/// Vec<Incoming<OrderPlacedV1>>)`) and pins its future, so a registration reads as one line
/// naming the event type, the inbox name and the use case; a handler that needs state of
/// its own captures it and passes a clone to each call. A payload that does not decode as
/// `E` rejects the batch for good, so its event is parked (the consumer already checked
/// the contract, so this means the handler was registered for the wrong type).
pub fn on<E>(
    name: &'static str,
    handler: impl for<'a> Fn(&'a mut Tx, Vec<Incoming<E>>) -> Handling<'a> + Send + Sync + 'static,
) -> Arc<dyn Handler>
where
    E: Event + Send + Sync + 'static,
{
    Arc::new(Typed {
        name,
        types: [E::TYPE],
        handler,
        event: PhantomData::<fn() -> E>,
    })
}

/// [`on`] for a handler that takes the batch's events one at a time, in batch order, in
/// the same transaction: `on_each::<OrderCancelledV1>("catalog.release_stock", |tx,
/// cancelled| Box::pin(release(tx, cancelled)))`. The batch is decoded whole first, so a
/// payload that does not decode rejects it before any event is handled.
pub fn on_each<E>(
    name: &'static str,
    handler: impl for<'a> Fn(&'a mut Tx, Incoming<E>) -> Handling<'a> + Send + Sync + 'static,
) -> Arc<dyn Handler>
where
    E: Event + Send + Sync + 'static,
{
    let handler = Arc::new(handler);
    on(name, move |tx, events| {
        let handler = handler.clone();
        Box::pin(async move {
            for event in events {
                (*handler)(&mut *tx, event).await?;
            }
            Ok(())
        })
    })
}

/// A handler registered with [`on`]: decodes, then calls the module's function.
struct Typed<E, F> {
    name: &'static str,
    types: [&'static str; 1],
    handler: F,
    event: PhantomData<fn() -> E>,
}

#[async_trait]
impl<E, F> Handler for Typed<E, F>
where
    E: Event + Send + Sync + 'static,
    F: for<'a> Fn(&'a mut Tx, Vec<Incoming<E>>) -> Handling<'a> + Send + Sync + 'static,
{
    fn name(&self) -> &'static str {
        self.name
    }

    fn event_types(&self) -> &[&'static str] {
        &self.types
    }

    async fn handle(&self, tx: &mut Tx, events: &[&Envelope]) -> Result<(), HandlerError> {
        let incoming = events
            .iter()
            .map(|e| {
                Ok(Incoming {
                    event: decode(e)?,
                    cause: Cause::following(e),
                })
            })
            .collect::<Result<Vec<_>, HandlerError>>()?;
        (self.handler)(tx, incoming).await
    }
}

/// One of a module's event handlers, as the consumer's engine runs it. Modules register
/// theirs with [`on`]; the bus tests implement it directly.
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// A stable name, recorded in the inbox. Never derive it from a Rust path: renaming
    /// code must not make old events look new, nor orphan the ones already handled. One
    /// name may serve several event types, one registration each.
    fn name(&self) -> &'static str;

    /// The wire names of the events it handles.
    fn event_types(&self) -> &[&'static str];

    /// Does the work for `events`, in the order given, inside the consumer's transaction,
    /// which also holds their inbox keys and the outbox rows of what it publishes (each
    /// with the cause of the event it follows: `Cause::following(event)`). The events
    /// have distinct ordering keys (a subscription never hands out two of one key at
    /// once), so a handler may apply them in one set-based pass: many events per round
    /// trip. It must tolerate events of other keys and topics arriving in any order.
    async fn handle(&self, tx: &mut Tx, events: &[&Envelope]) -> Result<(), HandlerError>;
}
