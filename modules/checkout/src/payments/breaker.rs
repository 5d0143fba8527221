//! The circuit breaker in front of the payment provider: after `failures` transient
//! failures in a row it opens and no call is made for `open_ms`; then it half-opens and
//! lets `probes` calls through; that many successes close it, one failure opens it again.
//!
//! The payment worker asks the breaker how many calls it may make before it claims work
//! ([`Breaker::admits`]), so while the breaker is open orders are not even claimed: they
//! wait, pending, and are claimed again once it lets calls through. Every change of state
//! is logged, shown in the `payment_circuit_breaker_state` gauge and counted in
//! `payment_circuit_breaker_transitions_total{to}` (so an outage that opened and closed it
//! between two scrapes still shows).
//!
//! Our own small state machine rather than a crate: the worker needs to know how many calls
//! the breaker would take *before* it claims attempts from the database, and to cap the
//! calls of the half-open state, which the breakers we looked at (failsafe, recloser) do
//! not expose.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Deserialize;
use validator::Validate;

/// `[modules.checkout.payment.breaker]`.
#[derive(Debug, Clone, Deserialize, Validate)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct BreakerSettings {
    /// Transient failures in a row that open the breaker.
    #[validate(range(min = 1, max = 1000))]
    pub(crate) failures: u32,
    /// How long it stays open before letting probe calls through.
    #[validate(range(min = 10, max = 600000))]
    pub(crate) open_ms: u64,
    /// Calls let through while half-open; as many successes close it.
    #[validate(range(min = 1, max = 100))]
    pub(crate) probes: u32,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        Self {
            failures: 5,
            open_ms: 5000,
            probes: 1,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    Closed,
    Open,
    HalfOpen,
}

impl State {
    const ALL: [State; 3] = [State::Closed, State::Open, State::HalfOpen];

    fn name(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
        }
    }
}

/// What a call let through carries back to [`Breaker::record`]: the breaker's generation
/// when the call started, so that a call started before a change of state does not count
/// in the new state (a slow call from before the breaker opened cannot close it).
#[derive(Debug)]
pub(crate) struct Pass {
    generation: u64,
    probe: bool,
}

pub(crate) struct Breaker {
    settings: BreakerSettings,
    inner: Mutex<Inner>,
}

struct Inner {
    state: State,
    /// Bumped on every change of state.
    generation: u64,
    failures: u32,
    opened_at: Instant,
    probes_out: u32,
    probe_successes: u32,
}

impl Breaker {
    pub(crate) fn new(settings: BreakerSettings) -> Self {
        metrics::describe_gauge!(
            "payment_circuit_breaker_state",
            "The payment provider's circuit breaker: 1 for its current state, 0 for the others"
        );
        metrics::describe_counter!(
            "payment_circuit_breaker_transitions_total",
            "Changes of state of the payment provider's circuit breaker, by the state entered"
        );
        for state in State::ALL {
            // Every series from the start, so a rate over one reads 0 rather than nothing.
            metrics::counter!("payment_circuit_breaker_transitions_total", "to" => state.name())
                .increment(0);
        }
        show(State::Closed);
        Self {
            settings,
            inner: Mutex::new(Inner {
                state: State::Closed,
                generation: 0,
                failures: 0,
                opened_at: Instant::now(),
                probes_out: 0,
                probe_successes: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock leaves counters only; they stay usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many calls the breaker would let through now.
    pub(crate) fn admits(&self) -> usize {
        self.admits_at(Instant::now())
    }

    pub(crate) fn pass(&self) -> Option<Pass> {
        self.pass_at(Instant::now())
    }

    pub(crate) fn record(&self, pass: Pass, healthy: bool) {
        self.record_at(Instant::now(), pass, healthy)
    }

    #[cfg(test)]
    fn state_at(&self, now: Instant) -> State {
        let mut inner = self.lock();
        self.refresh(&mut inner, now);
        inner.state
    }

    fn admits_at(&self, now: Instant) -> usize {
        let mut inner = self.lock();
        self.refresh(&mut inner, now);
        match inner.state {
            State::Closed => usize::MAX,
            State::Open => 0,
            State::HalfOpen => self.settings.probes.saturating_sub(inner.probes_out) as usize,
        }
    }

    /// Lets one call through, or `None` when the breaker is open (or half-open with every
    /// probe out).
    fn pass_at(&self, now: Instant) -> Option<Pass> {
        let mut inner = self.lock();
        self.refresh(&mut inner, now);
        match inner.state {
            State::Closed => Some(Pass {
                generation: inner.generation,
                probe: false,
            }),
            State::Open => None,
            State::HalfOpen if inner.probes_out < self.settings.probes => {
                inner.probes_out += 1;
                Some(Pass {
                    generation: inner.generation,
                    probe: true,
                })
            }
            State::HalfOpen => None,
        }
    }

    /// Records how a call let through by [`Breaker::pass`] went: `healthy` is false only
    /// for a transient failure (no answer, a 5xx, a 429); an answer, even a refusal, shows
    /// the provider is up.
    fn record_at(&self, now: Instant, pass: Pass, healthy: bool) {
        let mut inner = self.lock();
        self.refresh(&mut inner, now);
        if pass.generation != inner.generation {
            return;
        }
        match (inner.state, healthy) {
            (State::Closed, true) => inner.failures = 0,
            (State::Closed, false) => {
                inner.failures += 1;
                if inner.failures >= self.settings.failures {
                    self.change(&mut inner, State::Open, now);
                }
            }
            (State::HalfOpen, true) if pass.probe => {
                inner.probes_out = inner.probes_out.saturating_sub(1);
                inner.probe_successes += 1;
                if inner.probe_successes >= self.settings.probes {
                    self.change(&mut inner, State::Closed, now);
                }
            }
            (State::HalfOpen, false) => self.change(&mut inner, State::Open, now),
            _ => {}
        }
    }

    /// Open long enough: half-open.
    fn refresh(&self, inner: &mut Inner, now: Instant) {
        if inner.state == State::Open
            && now.saturating_duration_since(inner.opened_at)
                >= Duration::from_millis(self.settings.open_ms)
        {
            self.change(inner, State::HalfOpen, now);
        }
    }

    fn change(&self, inner: &mut Inner, to: State, now: Instant) {
        let from = inner.state;
        inner.state = to;
        inner.generation += 1;
        inner.failures = 0;
        inner.probes_out = 0;
        inner.probe_successes = 0;
        if to == State::Open {
            inner.opened_at = now;
        }
        match to {
            State::Open => tracing::warn!(
                module = "checkout",
                from = from.name(),
                to = to.name(),
                open_ms = self.settings.open_ms,
                "the payment provider's circuit breaker opened; payments wait"
            ),
            _ => tracing::info!(
                module = "checkout",
                from = from.name(),
                to = to.name(),
                "the payment provider's circuit breaker changed state"
            ),
        }
        metrics::counter!("payment_circuit_breaker_transitions_total", "to" => to.name())
            .increment(1);
        show(to);
    }
}

fn show(current: State) {
    for state in State::ALL {
        metrics::gauge!("payment_circuit_breaker_state", "state" => state.name())
            .set(if state == current { 1.0 } else { 0.0 });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A breaker and a clock the test moves.
    struct Clocked {
        b: Breaker,
        now: Instant,
    }

    impl Clocked {
        fn new(failures: u32, probes: u32) -> Self {
            Self {
                b: Breaker::new(BreakerSettings {
                    failures,
                    open_ms: 1000,
                    probes,
                }),
                now: Instant::now(),
            }
        }

        fn advance(&mut self, ms: u64) {
            self.now += Duration::from_millis(ms);
        }

        fn state(&self) -> State {
            self.b.state_at(self.now)
        }

        fn admits(&self) -> usize {
            self.b.admits_at(self.now)
        }

        fn pass(&self) -> Option<Pass> {
            self.b.pass_at(self.now)
        }

        fn record(&self, pass: Pass, healthy: bool) {
            self.b.record_at(self.now, pass, healthy)
        }

        fn fail(&self) {
            let pass = self.pass().expect("let through");
            self.record(pass, false);
        }

        fn succeed(&self) {
            let pass = self.pass().expect("let through");
            self.record(pass, true);
        }
    }

    #[test]
    fn it_opens_after_the_configured_failures_in_a_row_only() {
        let b = Clocked::new(3, 1);
        b.fail();
        b.fail();
        b.succeed();
        b.fail();
        b.fail();
        assert_eq!(b.state(), State::Closed, "a success starts the count again");
        b.fail();
        assert_eq!(b.state(), State::Open);
        assert_eq!(b.admits(), 0);
        assert!(b.pass().is_none(), "no call while open");
    }

    #[test]
    fn it_half_opens_after_its_open_time_and_lets_only_its_probes_through() {
        let mut b = Clocked::new(1, 2);
        b.fail();
        b.advance(999);
        assert_eq!(b.state(), State::Open);
        b.advance(1);
        assert_eq!(b.state(), State::HalfOpen);
        assert_eq!(b.admits(), 2);
        let first = b.pass().expect("a probe");
        let second = b.pass().expect("a second probe");
        assert!(b.pass().is_none(), "no third call while two probes are out");
        assert_eq!(b.admits(), 0);
        b.record(first, true);
        assert_eq!(b.state(), State::HalfOpen, "one success of two");
        b.record(second, true);
        assert_eq!(b.state(), State::Closed);
        assert_eq!(b.admits(), usize::MAX);
    }

    #[test]
    fn a_failed_probe_opens_it_again_for_its_full_open_time() {
        let mut b = Clocked::new(1, 1);
        b.fail();
        b.advance(1000);
        b.fail();
        assert_eq!(b.state(), State::Open);
        b.advance(999);
        assert_eq!(b.state(), State::Open);
        b.advance(1);
        assert_eq!(b.state(), State::HalfOpen);
    }

    #[test]
    fn a_call_started_before_a_change_of_state_does_not_count_after_it() {
        let mut b = Clocked::new(1, 1);
        let slow = b.pass().expect("closed");
        b.fail();
        b.advance(1000);
        assert_eq!(b.state(), State::HalfOpen);
        b.record(slow, true);
        assert_eq!(b.state(), State::HalfOpen, "a stale success closes nothing");
        let probe = b.pass().expect("the probe is still free");
        b.record(probe, true);
        assert_eq!(b.state(), State::Closed);
    }
}
