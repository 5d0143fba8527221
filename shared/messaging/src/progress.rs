//! The progress watchdog of a subscription: a consumer that has work but settles nothing
//! for several leases is reported (an ERROR line, the `consumer_stalled` gauge, and
//! readiness), never silent.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::bus::Acker;
use store::now_ms;

/// What a subscription's consumer has done lately; shared by the consumer, its watchdog
/// and readiness.
#[derive(Debug)]
pub struct Progress {
    module: &'static str,
    /// When the consumer last settled a delivery (or started, or last found nothing to do).
    last_progress_ms: AtomicI64,
    /// When the consumer took the batch it is working on; 0 while it waits.
    busy_since_ms: AtomicI64,
    backlog: AtomicU64,
    stalled: AtomicBool,
}

impl Progress {
    pub fn new(module: &'static str) -> Arc<Self> {
        Arc::new(Self {
            module,
            last_progress_ms: AtomicI64::new(now_ms()),
            busy_since_ms: AtomicI64::new(0),
            backlog: AtomicU64::new(0),
            stalled: AtomicBool::new(false),
        })
    }

    pub fn module(&self) -> &'static str {
        self.module
    }

    pub(crate) fn started_batch(&self) {
        self.busy_since_ms.store(now_ms(), Ordering::Relaxed);
    }

    pub(crate) fn settled(&self) {
        self.last_progress_ms.store(now_ms(), Ordering::Relaxed);
        self.busy_since_ms.store(0, Ordering::Relaxed);
    }

    /// `Some(reason)` while the subscription is stalled.
    pub fn stalled(&self) -> Option<String> {
        if !self.stalled.load(Ordering::Relaxed) {
            return None;
        }
        let idle = now_ms() - self.last_progress_ms.load(Ordering::Relaxed);
        Some(format!(
            "the {} consumer settled nothing for {} s with {} events waiting",
            self.module,
            idle / 1000,
            self.backlog.load(Ordering::Relaxed)
        ))
    }

    /// Decides whether the subscription is stalled now: it has work (a batch in hand, or
    /// events waiting) and has settled nothing for `after`.
    fn assess(&self, backlog: Option<u64>, after: Duration) -> bool {
        let now = now_ms();
        let busy_since = self.busy_since_ms.load(Ordering::Relaxed);
        let busy = busy_since != 0;
        let has_work = busy || backlog.is_some_and(|n| n > 0);
        if !has_work {
            // Nothing to do is progress too: the clock restarts when work arrives.
            self.last_progress_ms.store(now, Ordering::Relaxed);
        }
        let idle = now - self.last_progress_ms.load(Ordering::Relaxed);
        has_work && idle >= after.as_millis() as i64
    }
}

/// Checks `progress` every `every` until cancelled; a subscription with work that settled
/// nothing for `stall_after` is reported stalled until it moves again.
pub(crate) async fn watch(
    progress: Arc<Progress>,
    acker: Arc<dyn Acker>,
    every: Duration,
    stall_after: Duration,
    cancel: CancellationToken,
) {
    let module = progress.module;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(every) => {}
        }
        // Bounded: a pool starved by the very work that stalls (a hung handler holding
        // its connection and the database's write lock, others waiting behind it) must
        // not stop the watchdog from saying so.
        let backlog = match tokio::time::timeout(every, acker.backlog()).await {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => {
                tracing::warn!(module, error = %e, "reading the consumer's backlog failed");
                None
            }
            Err(_) => {
                tracing::warn!(
                    module,
                    "reading the consumer's backlog took longer than a watchdog tick"
                );
                None
            }
        };
        if let Some(n) = backlog {
            progress.backlog.store(n, Ordering::Relaxed);
            metrics::gauge!("consumer_backlog", "module" => module).set(n as f64);
        }
        let stalled = progress.assess(backlog, stall_after);
        let was = progress.stalled.swap(stalled, Ordering::Relaxed);
        metrics::gauge!("consumer_stalled", "module" => module).set(if stalled {
            1.0
        } else {
            0.0
        });
        if stalled {
            tracing::error!(
                module,
                backlog = backlog.unwrap_or_default(),
                idle_ms = now_ms() - progress.last_progress_ms.load(Ordering::Relaxed),
                "the consumer has work but settled nothing; it is stalled"
            );
        } else if was {
            tracing::warn!(module, "the consumer moves again");
        }
    }
    progress.stalled.store(false, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subscription_with_waiting_events_and_no_settlement_is_stalled() {
        let p = Progress::new("m");
        p.last_progress_ms
            .store(now_ms() - 10_000, Ordering::Relaxed);
        assert!(p.assess(Some(3), Duration::from_secs(5)));
        assert!(!p.assess(Some(3), Duration::from_secs(20)));
    }

    #[test]
    fn an_idle_subscription_is_never_stalled_and_restarts_its_clock() {
        let p = Progress::new("m");
        p.last_progress_ms
            .store(now_ms() - 10_000, Ordering::Relaxed);
        assert!(!p.assess(Some(0), Duration::from_secs(5)));
        // Work arrives now: the subscription has the whole delay before it counts as stalled.
        assert!(!p.assess(Some(3), Duration::from_secs(5)));
    }

    #[test]
    fn a_batch_in_hand_counts_as_work_even_when_the_bus_cannot_tell_its_backlog() {
        let p = Progress::new("m");
        p.started_batch();
        p.last_progress_ms
            .store(now_ms() - 10_000, Ordering::Relaxed);
        assert!(p.assess(None, Duration::from_secs(5)));
        p.settled();
        assert!(!p.assess(None, Duration::from_secs(5)));
    }

    /// A bus that always has `0` events waiting and settles nothing itself.
    struct Waiting(u64);

    #[async_trait::async_trait]
    impl Acker for Waiting {
        async fn ack(&self, _: &[crate::DeliveryTag]) -> Result<(), crate::BusError> {
            Ok(())
        }

        async fn retry(
            &self,
            _: &crate::DeliveryTag,
            _: Duration,
            _: &str,
        ) -> Result<(), crate::BusError> {
            Ok(())
        }

        async fn backlog(&self) -> Result<Option<u64>, crate::BusError> {
            Ok(Some(self.0))
        }
    }

    /// Every value each gauge was set to, in order.
    #[derive(Default)]
    struct Gauges(Arc<std::sync::Mutex<Vec<(String, f64)>>>);

    struct GaugeOf(String, Arc<std::sync::Mutex<Vec<(String, f64)>>>);

    impl metrics::GaugeFn for GaugeOf {
        fn increment(&self, _: f64) {}
        fn decrement(&self, _: f64) {}
        fn set(&self, value: f64) {
            self.1.lock().expect("gauges").push((self.0.clone(), value));
        }
    }

    impl metrics::Recorder for Gauges {
        fn describe_counter(
            &self,
            _: metrics::KeyName,
            _: Option<metrics::Unit>,
            _: metrics::SharedString,
        ) {
        }
        fn describe_gauge(
            &self,
            _: metrics::KeyName,
            _: Option<metrics::Unit>,
            _: metrics::SharedString,
        ) {
        }
        fn describe_histogram(
            &self,
            _: metrics::KeyName,
            _: Option<metrics::Unit>,
            _: metrics::SharedString,
        ) {
        }
        fn register_counter(
            &self,
            _: &metrics::Key,
            _: &metrics::Metadata<'_>,
        ) -> metrics::Counter {
            metrics::Counter::noop()
        }
        fn register_gauge(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
            let labels: Vec<String> = key
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            let name = format!("{}{{{}}}", key.name(), labels.join(","));
            metrics::Gauge::from_arc(Arc::new(GaugeOf(name, self.0.clone())))
        }
        fn register_histogram(
            &self,
            _: &metrics::Key,
            _: &metrics::Metadata<'_>,
        ) -> metrics::Histogram {
            metrics::Histogram::noop()
        }
    }

    /// Log lines, as the fmt subscriber writes them.
    #[derive(Clone, Default)]
    struct Logs(Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Logs {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("logs").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stalled_subscription_logs_at_error_and_sets_its_gauge_until_it_moves_again() {
        let gauges = Gauges::default();
        let logs = Logs::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        let progress = Progress::new("m");
        tracing::subscriber::with_default(subscriber, || {
            metrics::with_local_recorder(&gauges, || {
                runtime.block_on(async {
                    // Work waits, and nothing was settled for 10 s.
                    progress
                        .last_progress_ms
                        .store(now_ms() - 10_000, Ordering::Relaxed);
                    let cancel = CancellationToken::new();
                    let watchdog = watch(
                        progress.clone(),
                        Arc::new(Waiting(3)),
                        Duration::from_millis(10),
                        Duration::from_secs(5),
                        cancel.clone(),
                    );
                    let script = async {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        assert!(progress.stalled().is_some(), "not reported stalled");
                        progress.settled();
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        assert!(progress.stalled().is_none(), "still reported stalled");
                        cancel.cancel();
                    };
                    tokio::join!(watchdog, script);
                })
            })
        });
        let set: Vec<f64> = gauges
            .0
            .lock()
            .expect("gauges")
            .iter()
            .filter(|(name, _)| name == "consumer_stalled{module=m}")
            .map(|(_, v)| *v)
            .collect();
        let first_clear = set
            .iter()
            .position(|v| *v == 0.0)
            .expect("the gauge went back to 0");
        assert!(
            first_clear > 0 && set[..first_clear].iter().all(|v| *v == 1.0),
            "{set:?}"
        );
        assert!(set[first_clear..].iter().all(|v| *v == 0.0), "{set:?}");
        let text = String::from_utf8(logs.0.lock().expect("logs").clone()).expect("utf-8");
        assert!(
            text.lines().any(|l| l.contains("ERROR")
                && l.contains("settled nothing")
                && l.contains("module=\"m\"")),
            "no ERROR line names the stalled module:\n{text}"
        );
        assert!(
            text.lines()
                .any(|l| l.contains("WARN") && l.contains("moves again")),
            "no line says it moves again:\n{text}"
        );
    }
}
