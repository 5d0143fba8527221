//! The bus contract. A bus moves committed events from a producer's outbox to the modules
//! that subscribe to them; the in-process bus and the Redis Streams bus implement it alike
//! and pass the same conformance tests.
//!
//! What every implementation guarantees:
//! - `publish` returns `Ok` only once every event of the batch is durably accepted: a
//!   crash after that loses none of them. On error the relay publishes the batch again;
//!   subscribers deduplicate.
//! - A subscription delivers each event at least once, until it is acknowledged.
//! - Per key: a subscription never hands out an event while an earlier event with the same
//!   ordering key from the same producer is delivered and not yet acknowledged, or waiting
//!   to be retried. Events of other keys are not held up.
//! - A subscription never has more than `max_in_flight` deliveries unacknowledged.
//! - A retried delivery comes back after its delay with `attempt` one higher; so does a
//!   delivery whose consumer died (its lease or claim ran out), so a message that crashes
//!   its consumer every time still reaches the dead-letter store.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use uuid::Uuid;

/// One committed event on its way out, as the relay read it from the outbox.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub event_id: Uuid,
    pub event_type: String,
    /// The producing module.
    pub source: String,
    pub key: String,
    /// The serialized envelope, exactly as stored in the outbox.
    pub envelope: Arc<str>,
}

/// Which delivery to acknowledge or retry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DeliveryTag {
    /// A row of the consumer's local queue.
    Row(i64),
    /// An entry of a stream.
    Entry { stream: Arc<str>, id: Arc<str> },
}

/// One event handed to a consumer.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub tag: DeliveryTag,
    /// The envelope as it travelled; it may not even be JSON.
    pub raw: Arc<[u8]>,
    /// 1 on the first delivery, then one more each time the event comes back.
    pub attempt: u32,
}

/// What a consuming module asks of the bus.
#[derive(Debug, Clone)]
pub struct SubscriberSpec {
    pub module: &'static str,
    pub event_types: Vec<&'static str>,
    pub max_in_flight: usize,
}

/// Settles deliveries. Whatever happens to the transport, a delivery passed to `ack` or
/// `retry` stops counting against `max_in_flight` and its claim is no longer renewed: if
/// the transport did not take the settlement, the delivery comes back (its claim lapses)
/// and the inbox skips what was already done.
#[async_trait]
pub trait Acker: Send + Sync {
    /// Done with these (handled, duplicates, or dead-lettered): never deliver them again.
    async fn ack(&self, tags: &[DeliveryTag]) -> Result<(), BusError>;

    /// Deliver this one again after `delay`.
    async fn retry(&self, tag: &DeliveryTag, delay: Duration, error: &str) -> Result<(), BusError>;

    /// Deliver this one again after `delay` without counting this delivery as an
    /// attempt: nothing was wrong with the event (the consumer's own database was out of
    /// reach). A bus that cannot uncount falls back to [`Acker::retry`].
    async fn postpone(
        &self,
        tag: &DeliveryTag,
        delay: Duration,
        error: &str,
    ) -> Result<(), BusError> {
        self.retry(tag, delay, error).await
    }

    /// How many events wait for this subscription or are in flight, for the progress
    /// watchdog; `None` when the bus cannot tell cheaply.
    async fn backlog(&self) -> Result<Option<u64>, BusError> {
        Ok(None)
    }
}

/// A consuming module's open subscription: a stream of deliveries, and what settles them.
/// Dropping the stream ends the subscription; unsettled deliveries come back later.
pub struct Subscription {
    /// The bus's reader, which ends (handing back what it holds) once the stream is
    /// dropped; a graceful shutdown waits for it. Dropping the handle aborts the reader
    /// where it stands, as a killed process would: nothing is handed back, and what it
    /// held comes back only once its leases lapse. (Declared first, so dropping a whole
    /// subscription aborts the reader before the stream tells it to hand back.)
    pub reader: Option<tokio_util::task::AbortOnDropHandle<()>>,
    pub deliveries: BoxStream<'static, Delivery>,
    pub acker: Arc<dyn Acker>,
}

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("the bus cannot reach {0}")]
    Unavailable(String),
    #[error(
        "no module here consumes {event_type} for {consumer}: run {consumer} in this process or use the Redis bus"
    )]
    NoRoute {
        event_type: String,
        consumer: String,
    },
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl From<sea_orm::DbErr> for BusError {
    fn from(e: sea_orm::DbErr) -> Self {
        BusError::Other(anyhow::Error::new(e).context("bus database error"))
    }
}

#[async_trait]
pub trait EventBus: Send + Sync + 'static {
    /// `local` or `redis`, for logs and readiness.
    fn kind(&self) -> &'static str;

    /// Durably hands a batch of one producer's committed events, in commit order, to the
    /// transport.
    async fn publish(&self, batch: &[Outgoing]) -> Result<(), BusError>;

    /// Starts delivering the events a module subscribes to.
    async fn subscribe(&self, spec: SubscriberSpec) -> Result<Subscription, BusError>;

    /// A round trip to the transport, for readiness.
    async fn check(&self) -> Result<(), BusError>;
}
