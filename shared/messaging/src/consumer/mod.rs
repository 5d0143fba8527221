//! The consumer: takes a module's deliveries from its subscription and runs the module's
//! handlers, exactly once in effect.
//!
//! Each event is recorded in the module's inbox under (event id, handler name) in the same
//! transaction as the handler's work and the events it publishes, so a redelivered event
//! finds its key and does nothing. Deliveries are handled in batches: one transaction for
//! the whole batch; if any handler fails, the batch is rolled back and each event is
//! handled alone, so one bad event costs its batch a retry but holds up nothing else.
//! A failing event is retried with backoff and, after `max_attempts` deliveries, parked
//! in the module's dead-letter store with its raw bytes, attempts and last error; one that
//! cannot be decoded or breaks its contract is parked at once:
//! a bad event never stops a subscription, and retrying it does not hold up other keys.
//!
//! Files: `handler.rs` is what a module writes against (typed registration, [`on`], of a
//! function of the batch's [`crate::Tx`] and its decoded events; the errors; the
//! [`Handler`] trait the engine runs);
//! `engine.rs` the delivery loop (batches, attempts, crash counting, settling, replays);
//! `inbox.rs` the idempotency records; `cleaner.rs` the retention of the outbox, the
//! inbox and a module's own tables.

mod cleaner;
mod engine;
mod handler;
mod inbox;

pub use cleaner::{Prune, clean, run_cleaner};
pub use engine::Consumer;
pub use handler::{Handler, HandlerError, Handling, Incoming, decode, decode_all, on, on_each};
