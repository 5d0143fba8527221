//! Attempts handed to the worker by the transaction that opens them, so a payment does not
//! wait for the worker to wake and claim it (a transaction, a statement that rewrites each
//! row, and a read of the orders).
//!
//! The handler of catalog's `stock_reserved` asks for places ([`Handoff::reserve`]), opens
//! that many attempts already claimed (their lease end written with them, the fence a
//! claim would have written) and, once its transaction committed, hands them over with
//! what the provider needs to know of each order ([`Reservation::hand_over`]). The worker
//! takes them before it claims anything ([`Handoff::take`]). Everything else stays as a
//! claim has it: the lease is the attempt's guard, so an attempt handed over and never
//! called (the process stopped, or it waited past its lease) is claimed again once its
//! lease ends, and an outcome recorded under a lease that was taken over is dropped.
//!
//! Nothing is handed over while the breaker lets no call through (a handed attempt would
//! wait out its lease), nor beyond [`Handoff::MOST`] waiting: the rest are opened
//! unclaimed, due at once, and the worker claims them as before.
//!
//! The worker claims from the database only when something it knows of may be due there
//! ([`Handoff::claim_due`]): attempts opened unclaimed, released, retried (from their due
//! time), or handed over and left to their lease; after a claim that took all it had room
//! for; and at every poll, which finds what other processes left (an attempt whose worker
//! died holding its lease). While every attempt is handed over, as it is under a steady
//! load, no claim runs at all: each would have been a transaction finding nothing.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use super::breaker::Breaker;
use super::claim::Claimed;
use super::worker::now_ms;

/// What the stock handler hands to the payment worker, and the wake-up it sends it.
pub(crate) struct Handoff {
    state: Mutex<State>,
    breaker: Arc<Breaker>,
    /// Wakes the worker: attempts were handed over, or opened for it to claim.
    pub(crate) wake: Arc<Notify>,
    /// How long a claim lasts (see [`super::PaymentSettings::lease_ms`]).
    lease_ms: i64,
    /// From when (milliseconds since the epoch) a claim may find an attempt this process
    /// knows of due in the database: 0 at start (anything may be due), `i64::MAX` when
    /// every attempt it knows of was claimed or handed over.
    claim_from: AtomicI64,
}

#[derive(Default)]
struct State {
    waiting: VecDeque<Claimed>,
    /// Places promised to transactions not yet committed.
    reserved: usize,
}

impl Handoff {
    /// The most attempts waiting for the worker, handed over or promised.
    pub(crate) const MOST: usize = super::worker::RECORD_BATCH * 2;

    pub(crate) fn new(breaker: Arc<Breaker>, lease_ms: i64) -> Self {
        Self {
            state: Mutex::default(),
            breaker,
            wake: Arc::new(Notify::new()),
            lease_ms,
            claim_from: AtomicI64::new(0),
        }
    }

    /// Notes that an attempt is due in the database from `at` (milliseconds since the
    /// epoch; 0 for at once): the worker's next claim from then on looks for it.
    pub(crate) fn due_from(&self, at: i64) {
        self.claim_from.fetch_min(at, Ordering::SeqCst);
    }

    /// Whether a claim at `now` may find something this process knows of: if so, it is
    /// taken as claimed (the claim that follows takes it, or notes it due again).
    pub(crate) fn claim_due(&self, now: i64) -> bool {
        self.claim_from
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |from| {
                (from <= now).then_some(i64::MAX)
            })
            .is_ok()
    }

    /// How long from `now` until an attempt this process knows of falls due in the
    /// database, if that is sooner than `most`; `most` if none will, or one is due
    /// already (the worker had no room to claim it: it claims once woken with room).
    pub(crate) fn until_due(&self, now: i64, most: std::time::Duration) -> std::time::Duration {
        let from = self.claim_from.load(Ordering::SeqCst);
        match u64::try_from(from.saturating_sub(now)) {
            Ok(until) if until > 0 => most.min(std::time::Duration::from_millis(until)),
            _ => most,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Up to `wanted` places for attempts a transaction opens claimed; none while the
    /// breaker lets no call through. Places not filled are given back when the
    /// reservation is dropped (the transaction rolled back).
    pub(crate) fn reserve(self: &Arc<Self>, wanted: usize) -> Reservation {
        let places = if self.breaker.admits() == 0 {
            0
        } else {
            let mut state = self.state();
            let free = Self::MOST.saturating_sub(state.waiting.len() + state.reserved);
            let places = wanted.min(free);
            state.reserved += places;
            places
        };
        Reservation {
            handoff: self.clone(),
            places,
            fence: self.fence(now_ms()),
        }
    }

    /// The lease end a claim made at `now` writes, its fence: only attempts whose lease
    /// ended before `now` are claimed, and this one ends after it, so each claim of an
    /// attempt writes a lease end of its own (the worker's claims and the attempts opened
    /// claimed alike).
    pub(crate) fn fence(&self, now: i64) -> i64 {
        now + self.lease_ms.max(1)
    }

    /// Up to `most` attempts handed over, oldest first. One whose lease ended while it
    /// waited is left out: it is due again, for a claim to take.
    pub(crate) fn take(&self, most: usize) -> Vec<Claimed> {
        let now = now_ms();
        let mut state = self.state();
        let mut taken = Vec::new();
        while taken.len() < most {
            let Some(attempt) = state.waiting.pop_front() else {
                break;
            };
            if attempt.fence > now {
                taken.push(attempt);
            } else {
                self.due_from(0);
            }
        }
        taken
    }
}

/// Places for attempts one transaction opens claimed, and the lease end they are opened
/// with.
pub(crate) struct Reservation {
    handoff: Arc<Handoff>,
    places: usize,
    fence: i64,
}

impl Reservation {
    /// How many attempts may be opened claimed.
    pub(crate) fn places(&self) -> usize {
        self.places
    }

    /// The lease end the attempts opened claimed carry.
    pub(crate) fn fence(&self) -> i64 {
        self.fence
    }

    /// Hands `attempts` (at most [`Reservation::places`]) to the worker and wakes it,
    /// noting that others were opened for it to claim if `opened_unclaimed`; run once the
    /// transaction that opened them committed.
    pub(crate) fn hand_over(mut self, attempts: Vec<Claimed>, opened_unclaimed: bool) {
        if opened_unclaimed {
            self.handoff.due_from(0);
        }
        {
            let mut state = self.handoff.state();
            state.reserved -= self.places;
            // Never more than reserved: the rest would be over the bound.
            state.waiting.extend(attempts.into_iter().take(self.places));
        }
        self.places = 0;
        self.handoff.wake.notify_one();
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.places > 0 {
            self.handoff.state().reserved -= self.places;
        }
    }
}
