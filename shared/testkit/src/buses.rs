//! Buses for tests: one that records what a module publishes and lets a test feed it
//! events (to test a module alone), and one that delivers every event twice (to prove
//! consumers are idempotent).

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use contracts::Envelope;
use futures::StreamExt;
use messaging::{
    Acker, BusError, Delivery, DeliveryTag, EventBus, Outgoing, SubscriberSpec, Subscription,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;

/// Records published events; delivers only what a test injects.
#[derive(Default)]
pub struct RecordingBus {
    published: Mutex<Vec<Envelope>>,
    subscribers: Mutex<HashMap<&'static str, mpsc::UnboundedSender<Delivery>>>,
    acked: Arc<Mutex<Vec<DeliveryTag>>>,
    next: AtomicI64,
}

impl RecordingBus {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Everything published so far.
    pub fn published(&self) -> Vec<Envelope> {
        self.published
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Published events of one type.
    pub fn published_of(&self, event_type: &str) -> Vec<Envelope> {
        self.published()
            .into_iter()
            .filter(|e| e.event_type == event_type)
            .collect()
    }

    /// Hands `raw` bytes to `module`'s subscription as a new delivery.
    pub fn inject_raw(&self, module: &str, raw: Vec<u8>) -> DeliveryTag {
        let tag = DeliveryTag::new(Injected(self.next.fetch_add(1, Ordering::SeqCst) + 1));
        let subscribers = self.subscribers.lock().unwrap_or_else(|e| e.into_inner());
        let sender = subscribers
            .get(module)
            .unwrap_or_else(|| panic!("{module} has not subscribed"));
        sender
            .send(Delivery {
                tag: tag.clone(),
                raw: Arc::from(raw),
                attempt: 1,
            })
            .expect("the subscription is open");
        tag
    }

    pub fn inject(&self, module: &str, envelope: &Envelope) -> DeliveryTag {
        self.inject_raw(module, envelope.to_bytes())
    }

    pub fn acked(&self, tag: &DeliveryTag) -> bool {
        self.acked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(tag)
    }

    /// Hands `envelope` to `module` and waits until its consumer settled it (applied it,
    /// or parked it): what a test of a module alone does with each event it feeds.
    pub async fn feed(&self, module: &str, envelope: &Envelope) {
        let tag = self.inject(module, envelope);
        crate::eventually(20, &format!("{module} to settle the event"), || async {
            self.acked(&tag).then_some(())
        })
        .await;
    }
}

/// `event` in a new envelope, as a test feeds it to a module: a fresh correlation, no cause.
pub fn envelope<E: contracts::Event>(event: &E) -> Envelope {
    Envelope::new(event, &contracts::Cause::fresh()).expect("a valid event")
}

/// What the recording bus's tags hold: the number of an injected delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Injected(i64);

struct RecordingAcker {
    acked: Arc<Mutex<Vec<DeliveryTag>>>,
    resend: mpsc::UnboundedSender<Delivery>,
    /// The last delivery of each tag, to send again on retry.
    attempts: Mutex<HashMap<DeliveryTag, Delivery>>,
}

#[async_trait]
impl Acker for RecordingAcker {
    async fn ack(&self, tags: &[DeliveryTag]) -> Result<(), BusError> {
        self.acked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(tags.iter().cloned());
        Ok(())
    }

    async fn retry(
        &self,
        tag: &DeliveryTag,
        delay: Duration,
        _error: &str,
    ) -> Result<(), BusError> {
        let last = self
            .attempts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(tag)
            .cloned();
        let Some(last) = last else {
            return Ok(());
        };
        let resend = self.resend.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = resend.send(Delivery {
                attempt: last.attempt + 1,
                ..last
            });
        });
        Ok(())
    }
}

#[async_trait]
impl EventBus for RecordingBus {
    fn kind(&self) -> &'static str {
        "recording"
    }

    async fn publish(&self, batch: &[Outgoing]) -> Result<(), BusError> {
        let mut published = self.published.lock().unwrap_or_else(|e| e.into_inner());
        for event in batch {
            let envelope = Envelope::from_bytes(event.envelope.as_bytes())
                .map_err(|e| BusError::Other(anyhow::anyhow!(e)))?;
            if !published.iter().any(|p| p.id == envelope.id) {
                published.push(envelope);
            }
        }
        Ok(())
    }

    async fn subscribe(&self, spec: SubscriberSpec) -> Result<Subscription, BusError> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.subscribers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(spec.module, tx.clone());
        let acker = Arc::new(RecordingAcker {
            acked: self.acked.clone(),
            resend: tx,
            attempts: Mutex::new(HashMap::new()),
        });
        let tracker = acker.clone();
        let deliveries = UnboundedReceiverStream::new(rx).map(move |d: Delivery| {
            tracker
                .attempts
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(d.tag.clone(), d.clone());
            d
        });
        Ok(Subscription {
            deliveries: Box::pin(deliveries),
            acker,
            reader: None,
        })
    }

    async fn check(&self) -> Result<(), BusError> {
        Ok(())
    }
}

/// Wraps a bus so that every event is published twice and every delivery is handed to
/// the consumer twice, the copy right behind the original (often in the same batch).
pub struct DuplicatingBus(pub Arc<dyn EventBus>);

impl DuplicatingBus {
    pub fn wrap(bus: Arc<dyn EventBus>) -> Arc<dyn EventBus> {
        Arc::new(DuplicatingBus(bus))
    }
}

#[async_trait]
impl EventBus for DuplicatingBus {
    fn kind(&self) -> &'static str {
        self.0.kind()
    }

    async fn publish(&self, batch: &[Outgoing]) -> Result<(), BusError> {
        self.0.publish(batch).await?;
        self.0.publish(batch).await
    }

    async fn subscribe(&self, spec: SubscriberSpec) -> Result<Subscription, BusError> {
        let inner = self.0.subscribe(spec).await?;
        let deliveries = inner
            .deliveries
            .flat_map(|d| {
                let copy = Delivery {
                    tag: DeliveryTag::new(Duplicate(d.tag.clone())),
                    raw: d.raw.clone(),
                    attempt: d.attempt,
                };
                futures::stream::iter([d, copy])
            })
            .boxed();
        Ok(Subscription {
            deliveries,
            acker: Arc::new(DuplicateAcker(inner.acker)),
            reader: inner.reader,
        })
    }

    async fn check(&self) -> Result<(), BusError> {
        self.0.check().await
    }

    fn hands_over_directly(&self) -> bool {
        self.0.hands_over_directly()
    }
}

/// What the tag of a copy holds: the tag of its original.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Duplicate(DeliveryTag);

/// Settles originals through the real acker; the copies need no settling.
struct DuplicateAcker(Arc<dyn Acker>);

fn is_copy(tag: &DeliveryTag) -> bool {
    tag.get::<Duplicate>().is_some()
}

#[async_trait]
impl Acker for DuplicateAcker {
    async fn ack(&self, tags: &[DeliveryTag]) -> Result<(), BusError> {
        let originals: Vec<DeliveryTag> = tags.iter().filter(|t| !is_copy(t)).cloned().collect();
        self.0.ack(&originals).await
    }

    async fn retry(&self, tag: &DeliveryTag, delay: Duration, error: &str) -> Result<(), BusError> {
        if is_copy(tag) {
            return Ok(());
        }
        self.0.retry(tag, delay, error).await
    }
}
