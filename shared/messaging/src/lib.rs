//! Messaging between modules: the transactional outbox and its relay, the idempotent
//! inbox, the consumer with retries and dead letters, and the buses that carry events
//! (in-process, Redis Streams, or both when some modules run elsewhere). Everything here is shared
//! by the monolith and every extracted service.

mod bus;
mod consumer;
pub mod dead_letters;
mod faults;
pub mod hybrid_bus;
mod instance_name;
pub mod local_bus;
pub mod outbox;
mod progress;
mod publish;
mod redis_bus;
pub mod schema;
mod settings;
pub mod trace;

pub use bus::{
    Acker, BusError, Delivery, DeliveryTag, EventBus, Outgoing, SubscriberSpec, Subscription,
};
pub use consumer::{
    Consumer, Handler, HandlerError, Handling, Incoming, Prune, clean, decode, decode_all, on,
    on_each, run_cleaner,
};
pub use faults::Faults;
pub use progress::Progress;
pub use publish::{AtCommit, PublishError, Store, Tx, Writes};
pub use redis_bus::{RedisBus, RedisConfig, Waiting, partition_of};
pub use settings::{MessagingSettings, backoff};
