//! How the outbox relay, the consumers and the cleaner behave; `[messaging]` in the
//! settings files.

use std::time::Duration;

use serde::Deserialize;
use validator::Validate;

#[derive(Debug, Clone, Deserialize, Validate)]
#[serde(deny_unknown_fields)]
pub struct MessagingSettings {
    /// Events the relay hands to the bus per round trip.
    #[validate(range(min = 1, max = 5000))]
    pub relay_batch: usize,
    /// Events a consumer handles per transaction.
    #[validate(range(min = 1, max = 5000))]
    pub consumer_batch: usize,
    /// Deliveries a module may hold unacknowledged.
    #[validate(range(min = 1, max = 100000))]
    pub max_in_flight: usize,
    /// How often idle relays and consumers look for work they were not woken for.
    #[validate(range(min = 5, max = 60000))]
    pub poll_interval_ms: u64,
    /// How long a relay lease or a claimed delivery stays held without renewal.
    #[validate(range(min = 500, max = 600000))]
    pub lease_ms: u64,
    /// Deliveries of a failing event before it is dead-lettered.
    #[validate(range(min = 1, max = 100))]
    pub max_attempts: u32,
    /// Retry delays grow from this base, doubling, with full jitter.
    #[validate(range(min = 1, max = 600000))]
    pub retry_base_ms: u64,
    /// and never exceed this cap.
    #[validate(range(min = 1, max = 3600000))]
    pub retry_max_ms: u64,
    /// Published outbox rows are kept this long, marked with when they were published (to
    /// inspect what went out), then deleted by the cleaner; 0 keeps none: the relay deletes
    /// each row once the bus took it, which costs the database far less than marking it.
    #[validate(range(min = 0, max = 31536000))]
    pub outbox_retention_secs: u64,
    /// Inbox keys are kept this long: longer than any redelivery can come late.
    #[validate(range(min = 60, max = 31536000))]
    pub inbox_retention_secs: u64,
    #[validate(range(min = 1, max = 86400))]
    pub cleanup_interval_secs: u64,
    /// In-process bus only: the relay hands each event straight to the subscription of
    /// this process when it can, and deletes or marks its row once the consumer has committed
    /// it; only what cannot go that way (a retry, a key with events already queued, no
    /// subscription here) is written to the consumer's queue. Off, every event goes
    /// through the queue, where every replica sharing the database can claim it.
    pub direct_delivery: bool,
    /// How long the relay waits for a consumer to settle what it handed over directly
    /// (at most a quarter of the lease): what is still out then is queued as a claimed
    /// row, so one slow consumer holds back the other consumers of a producer this long
    /// at most.
    #[validate(range(min = 1, max = 150000))]
    pub handover_wait_ms: u64,
}

impl MessagingSettings {
    /// [`MessagingSettings::handover_wait_ms`], kept within a quarter of the lease: the
    /// relay renews its lease between passes.
    pub fn handover_wait(&self) -> Duration {
        Duration::from_millis(self.handover_wait_ms.min(self.lease_ms / 4))
    }

    /// The delay before retry number `attempt` (1-based): see [`backoff`].
    pub fn backoff(&self, attempt: u32) -> Duration {
        backoff(self.retry_base_ms, self.retry_max_ms, attempt)
    }
}

/// The delay before retry number `attempt` (1-based): `base_ms` doubling with each attempt,
/// capped at `max_ms`, with full jitter (a uniform draw between zero and that ceiling), so
/// that many callers failing together do not retry together. The one retry schedule of the
/// code base: the relay, the consumers, the buses and checkout's payment worker use it.
pub fn backoff(base_ms: u64, max_ms: u64, attempt: u32) -> Duration {
    let exponent = attempt.saturating_sub(1).min(30);
    let ceiling = base_ms.saturating_mul(1_u64 << exponent).min(max_ms);
    Duration::from_millis(fastrand::u64(0..=ceiling))
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn settings() -> MessagingSettings {
        MessagingSettings {
            relay_batch: 100,
            consumer_batch: 100,
            max_in_flight: 100,
            poll_interval_ms: 100,
            lease_ms: 1000,
            max_attempts: 5,
            retry_base_ms: 100,
            retry_max_ms: 1000,
            outbox_retention_secs: 60,
            inbox_retention_secs: 60,
            cleanup_interval_secs: 60,
            direct_delivery: true,
            handover_wait_ms: 1000,
        }
    }

    /// Each attempt's delays spread over the whole range up to its ceiling (full jitter),
    /// the ceiling doubles from one attempt to the next until the cap, and so does the
    /// mean delay: with 2,000 draws, a mean is within 10% of half its ceiling (7 standard
    /// deviations).
    #[test]
    fn backoff_doubles_its_ceiling_with_each_attempt_up_to_the_cap_with_full_jitter() {
        let s = settings();
        let mut previous_mean = 0.0;
        for (attempt, ceiling) in [
            (1, 100),
            (2, 200),
            (3, 400),
            (4, 800),
            (5, 1000),
            (40, 1000),
        ] {
            let delays: Vec<u64> = (0..2000)
                .map(|_| s.backoff(attempt).as_millis() as u64)
                .collect();
            assert!(delays.iter().all(|d| *d <= ceiling), "attempt {attempt}");
            assert!(
                delays.iter().any(|d| *d < ceiling / 4),
                "attempt {attempt} is jittered down to near zero"
            );
            assert!(
                delays.iter().any(|d| *d > ceiling * 3 / 4),
                "attempt {attempt} reaches near its ceiling {ceiling}"
            );
            let mean = delays.iter().sum::<u64>() as f64 / delays.len() as f64;
            let expected = ceiling as f64 / 2.0;
            assert!(
                (mean - expected).abs() < expected * 0.1,
                "attempt {attempt}: mean {mean}, expected about {expected}"
            );
            if ceiling < 1000 || attempt == 5 {
                assert!(mean > previous_mean, "attempt {attempt} waits longer");
            }
            previous_mean = mean;
        }
    }
}
