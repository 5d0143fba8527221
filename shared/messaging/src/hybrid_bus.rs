//! The bus of a process that runs some modules while others run elsewhere (the monolith
//! once a module is extracted): an event travels in-process ([`LocalBus`], handed to the
//! consumer directly where it can be) when its producer and its consumer both run here, and
//! over Redis Streams ([`RedisBus`]) when either runs elsewhere. One event consumed both
//! here and elsewhere takes both ways; `publish` returns once both took it.
//!
//! Per-key order holds because a consumer gets each producer's events by one way only:
//! the route of a (producer, consumer) pair is fixed by where the two run. A module that
//! consumes from producers of both kinds has two subscriptions merged into one: a quarter
//! of its `max_in_flight` (at least one) over Redis, the rest in-process; each delivery's
//! tag says which bus settles it.
//!
//! A route that travelled over Redis before (the process ran on the Redis bus) may have
//! left events in its consumer group. At start the hybrid bus removes such groups when
//! nothing waits in them, and refuses to start while something does: those events would
//! be stranded, and the group, read by nobody, would hold the stream's trimming back.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;

use crate::bus::{Acker, BusError, DeliveryTag, EventBus, Outgoing, SubscriberSpec, Subscription};
use crate::local_bus::LocalBus;
use crate::redis_bus::{RedisBus, RedisConfig};
use crate::settings::MessagingSettings;
use store::ModuleDb;

pub struct HybridBus {
    local: LocalBus,
    redis: RedisBus,
}

impl HybridBus {
    /// The bus of a process running the modules of `dbs`, under the instance name of
    /// `redis`. Fails when Redis is out of reach, when a route that now travels in-process
    /// still has events waiting in its Redis consumer group, or when `max_in_flight` is 1
    /// (a merged subscription holds at least one delivery of each bus).
    pub async fn connect(
        redis: RedisConfig,
        settings: MessagingSettings,
        dbs: &[ModuleDb],
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(
            settings.max_in_flight >= 2,
            "bus.kind = hybrid needs messaging.max_in_flight of at least 2: a module that \
             consumes both in-process and over Redis holds at least one delivery of each"
        );
        let here: Vec<&'static str> = dbs.iter().map(|db| db.module()).collect();
        let mut local = LocalBus::new(redis.instance.clone(), settings.clone());
        for db in dbs {
            let consumes_here = contracts::subscriptions_of(db.module())
                .iter()
                .any(|t| here.contains(&contracts::source_of(t)));
            if consumes_here {
                local.add_consumer(db.clone());
            }
        }
        let redis = RedisBus::connect_beside(redis, settings, here).await?;
        let waiting = redis.retire_in_process_groups().await?;
        anyhow::ensure!(
            waiting.is_empty(),
            "events that now travel in-process still wait in Redis consumer groups from when \
             they travelled over Redis: {}. Run this process with bus.kind = \"redis\" until \
             they are handled, then start it again",
            waiting
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        );
        Ok(Self { local, redis })
    }

    /// Trims a producer's streams now (it also happens every few seconds of publishing).
    pub async fn trim_now(&self, producer: &str) -> Result<(), BusError> {
        self.redis.trim_now(producer).await
    }

    fn in_process(&self, producer: &str, consumer: &str) -> bool {
        !self.redis.over_redis(producer, consumer)
    }
}

#[async_trait]
impl EventBus for HybridBus {
    fn kind(&self) -> &'static str {
        "hybrid"
    }

    async fn publish(&self, batch: &[Outgoing]) -> Result<(), BusError> {
        let elsewhere: Vec<&Outgoing> = batch
            .iter()
            .filter(|e| {
                contracts::consumers_of(&e.event_type)
                    .iter()
                    .any(|consumer| !self.in_process(&e.source, consumer))
            })
            .collect();
        let here = self.local.publish_where(batch, |producer, consumer| {
            self.in_process(producer, consumer)
        });
        let elsewhere = async {
            if elsewhere.is_empty() {
                Ok(())
            } else {
                self.redis.publish_events(elsewhere.iter().copied()).await
            }
        };
        let (here, elsewhere) = tokio::join!(here, elsewhere);
        here.and(elsewhere)
    }

    async fn subscribe(&self, spec: SubscriberSpec) -> Result<Subscription, BusError> {
        let (local_types, redis_types): (Vec<&'static str>, Vec<&'static str>) = spec
            .event_types
            .iter()
            .partition(|t| self.in_process(contracts::source_of(t), spec.module));
        if redis_types.is_empty() {
            return self.local.subscribe(spec).await;
        }
        if local_types.is_empty() {
            return self.redis.subscribe(spec).await;
        }
        let over_redis = (spec.max_in_flight / 4).max(1);
        let in_process = spec.max_in_flight.saturating_sub(over_redis).max(1);
        let local = self
            .local
            .subscribe(SubscriberSpec {
                module: spec.module,
                event_types: local_types,
                max_in_flight: in_process,
            })
            .await?;
        let redis = self
            .redis
            .subscribe(SubscriberSpec {
                module: spec.module,
                event_types: redis_types,
                max_in_flight: over_redis,
            })
            .await?;
        // Dropping the merged stream drops both, which tells both readers to hand back and
        // end; the merged reader ends once both did, and aborting it aborts both.
        let readers: Vec<_> = [local.reader, redis.reader].into_iter().flatten().collect();
        let reader = tokio::spawn(async move {
            futures::future::join_all(readers).await;
        });
        Ok(Subscription {
            reader: Some(tokio_util::task::AbortOnDropHandle::new(reader)),
            deliveries: futures::stream::select(local.deliveries, redis.deliveries).boxed(),
            acker: Arc::new(HybridAcker {
                local: local.acker,
                redis: redis.acker,
            }),
        })
    }

    async fn check(&self) -> Result<(), BusError> {
        let (local, redis) = tokio::join!(self.local.check(), self.redis.check());
        local.and(redis)
    }

    fn hands_over_directly(&self) -> bool {
        self.local.hands_over_directly()
    }
}

/// Settles each delivery of a merged subscription with the bus that made it.
struct HybridAcker {
    local: Arc<dyn Acker>,
    redis: Arc<dyn Acker>,
}

impl HybridAcker {
    fn of(&self, tag: &DeliveryTag) -> &dyn Acker {
        if RedisBus::stream_entry(tag).is_some() {
            &*self.redis
        } else {
            &*self.local
        }
    }
}

#[async_trait]
impl Acker for HybridAcker {
    async fn ack(&self, tags: &[DeliveryTag]) -> Result<(), BusError> {
        let (redis, local): (Vec<DeliveryTag>, Vec<DeliveryTag>) = tags
            .iter()
            .cloned()
            .partition(|tag| RedisBus::stream_entry(tag).is_some());
        let local = async {
            if local.is_empty() {
                Ok(())
            } else {
                self.local.ack(&local).await
            }
        };
        let redis = async {
            if redis.is_empty() {
                Ok(())
            } else {
                self.redis.ack(&redis).await
            }
        };
        let (local, redis) = tokio::join!(local, redis);
        local.and(redis)
    }

    async fn retry(&self, tag: &DeliveryTag, delay: Duration, error: &str) -> Result<(), BusError> {
        self.of(tag).retry(tag, delay, error).await
    }

    async fn postpone(
        &self,
        tag: &DeliveryTag,
        delay: Duration,
        error: &str,
    ) -> Result<(), BusError> {
        self.of(tag).postpone(tag, delay, error).await
    }

    async fn backlog(&self) -> Result<Option<u64>, BusError> {
        let (local, redis) = tokio::join!(self.local.backlog(), self.redis.backlog());
        Ok(match (local?, redis?) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        })
    }
}
