//! Messaging between modules: the transactional outbox and its relay, the idempotent
//! inbox, the consumer with retries and dead letters, and the buses that carry events
//! (in-process now, Redis Streams when a module runs elsewhere). Everything here is shared
//! by the monolith and every extracted service.

pub mod bus;
mod consumer;
pub mod db;
pub mod dead_letters;
pub mod faults;
mod instance_name;
pub mod local_bus;
pub mod outbox;
pub mod progress;
mod publish;
mod redis_bus;
pub mod settings;
pub mod trace;

pub use bus::{
    Acker, BusError, Delivery, DeliveryTag, EventBus, Outgoing, SubscriberSpec, Subscription,
};
pub use consumer::{
    Consumer, Handler, HandlerError, Handling, Incoming, Prune, clean, decode, decode_all, on,
    on_each, run_cleaner,
};
pub use db::ModuleDb;
pub use faults::Faults;
pub use local_bus::LocalBus;
pub use outbox::{Outbox, Relay};
pub use progress::Progress;
pub use publish::{PublishError, Store, Tx};
pub use redis_bus::{RedisBus, RedisConfig, partition_of};
pub use settings::{MessagingSettings, backoff};
