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

use std::any::{Any, TypeId};
use std::fmt;
use std::hash::{Hash, Hasher};
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
    /// An earlier publish of this event may have handed it to a consumer and been cut
    /// short (a crash, a failed publish): a bus that counts deliveries counts that one, so
    /// an event that kills its consumer still reaches the dead-letter store.
    pub handed_before: bool,
}

/// Which delivery to acknowledge or retry. Opaque: a bus makes its tags from a value of a
/// type of its own ([`DeliveryTag::new`]) and reads them back by naming that type
/// ([`DeliveryTag::get`]), so only the bus that made a tag can look inside; everyone else
/// can only hand it back, compare it, hash it and print it. Tags of different types are
/// never equal.
#[derive(Clone)]
pub struct DeliveryTag(Arc<dyn TagValue>);

impl DeliveryTag {
    /// A tag holding `value`, a bus's own name for one delivery (its queue row, its stream
    /// entry): make `T` a type private to the bus.
    pub fn new<T>(value: T) -> Self
    where
        T: Any + fmt::Debug + Eq + Hash + Send + Sync,
    {
        Self(Arc::new(value))
    }

    /// The value the tag was made from, if it was made from a `T`.
    pub fn get<T: Any>(&self) -> Option<&T> {
        self.0.as_any().downcast_ref()
    }
}

impl PartialEq for DeliveryTag {
    fn eq(&self, other: &Self) -> bool {
        self.0.same(&*other.0)
    }
}

impl Eq for DeliveryTag {}

impl Hash for DeliveryTag {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.hash_into(state);
    }
}

impl fmt::Debug for DeliveryTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// What a tag holds, seen without its type: equality and hashing reach the value through
/// its type, so the tag's traits keep the value's.
trait TagValue: Any + fmt::Debug + Send + Sync {
    fn as_any(&self) -> &dyn Any;
    fn same(&self, other: &dyn TagValue) -> bool;
    fn hash_into(&self, state: &mut dyn Hasher);
}

impl<T: Any + fmt::Debug + Eq + Hash + Send + Sync> TagValue for T {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn same(&self, other: &dyn TagValue) -> bool {
        other.as_any().downcast_ref::<T>() == Some(self)
    }

    fn hash_into(&self, mut state: &mut dyn Hasher) {
        TypeId::of::<T>().hash(&mut state);
        self.hash(&mut state);
    }
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

    /// Whether `publish` may hand events to consumers itself (and return once they
    /// committed them) rather than only storing them: the relay then records, before each
    /// publish, the highest outbox id it hands over, so that after a crash the events an
    /// earlier publish may have handed out are published with
    /// [`Outgoing::handed_before`] set.
    fn hands_over_directly(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[derive(Debug, PartialEq, Eq, Hash)]
    struct Row(i64);

    #[derive(Debug, PartialEq, Eq, Hash)]
    struct OtherRow(i64);

    #[test]
    fn a_tag_is_read_back_only_as_the_type_it_was_made_from() {
        let tag = DeliveryTag::new(Row(7));
        assert_eq!(tag.get::<Row>(), Some(&Row(7)));
        assert_eq!(tag.get::<OtherRow>(), None);
        assert_eq!(tag.get::<i64>(), None);
        assert_eq!(format!("{tag:?}"), "Row(7)");
    }

    #[test]
    fn tags_are_equal_when_their_types_and_values_are() {
        let tags: HashSet<DeliveryTag> = [
            DeliveryTag::new(Row(7)),
            DeliveryTag::new(Row(7)),
            DeliveryTag::new(Row(8)),
            DeliveryTag::new(OtherRow(7)),
        ]
        .into_iter()
        .collect();
        assert_eq!(tags.len(), 3);
        assert!(tags.contains(&DeliveryTag::new(Row(7))));
        assert!(!tags.contains(&DeliveryTag::new(OtherRow(8))));
        assert_ne!(DeliveryTag::new(Row(7)), DeliveryTag::new(OtherRow(7)));
    }
}
