//! Checkout's payments: the gateway port and its adapters (the simulated provider,
//! `gateway.rs`; a provider over HTTP, `http.rs`), their settings (`settings.rs`), the
//! circuit breaker in front of them (`breaker.rs`), and the payment worker, a background
//! task that authorizes the payment of every order whose stock is held.
//!
//! The worker (`worker.rs`, its loop) takes the attempts handed to it by the transaction
//! that opened them already claimed (`handoff.rs`) and claims other due attempts under a
//! lease (`claim.rs`),
//! calls the provider outside any database transaction, at most `max_concurrent` calls at
//! a time (the bulkhead that keeps a slow provider from holding up checkout's consumer or
//! its HTTP requests), with the attempt's id as idempotency key (`call.rs`), records the
//! outcomes with the orders' new statuses and events in one transaction (several outcomes
//! per transaction under load, `record.rs`), and voids authorizations no order needs
//! (`void.rs`). What an answer does to an attempt and its order is decided by the rules
//! in `domain/` (`resolve`, and the order's state machine); the statements are `db/`'s.
//! A crash between the call and the record lets the lease run out; the attempt is claimed
//! again and the provider, given the same key, answers as before.
//!
//! A transient failure (no answer in `timeout_ms`, the provider unavailable) is retried
//! on messaging's backoff, or later if the provider asked for later, and never declines
//! the order by itself: an order is declined by the provider's answer or its refusal of
//! the request, not by its outage. Transient failures count against the circuit breaker;
//! while it is open nothing is claimed, so orders whose stock is held wait, pending, and
//! proceed once it lets calls through again. The order watchdog reports orders that wait
//! past their deadline.

pub(crate) mod breaker;
mod call;
mod claim;
mod gateway;
mod handoff;
mod http;
mod record;
mod settings;
mod void;
mod worker;

#[cfg(test)]
mod tests;

pub(crate) use claim::{Charge, Claimed};
pub use gateway::DECLINED_TOKEN;
pub(crate) use gateway::{Authorization, AuthorizeRequest, GatewayError, PaymentGateway};
pub(crate) use handoff::Handoff;
pub(crate) use settings::PaymentSettings;
pub(crate) use worker::PaymentWorker;
