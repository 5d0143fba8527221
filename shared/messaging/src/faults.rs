//! Crash points for tests. A test arms a named point; when the code reaches it, the task
//! stops there for good and the test is told, as if the process had been killed at that
//! instant. The test then aborts the app and starts a new one on the same database. In
//! production no point is ever armed, and reaching one costs an atomic load.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

/// The points the messaging code stops at when armed.
pub(crate) const POINTS: &[&str] = &[
    "relay.before_publish",
    "relay.after_publish",
    "consumer.before_handler",
    "consumer.before_commit",
    "consumer.after_commit",
];

#[derive(Clone, Default)]
pub struct Faults(Option<Arc<Inner>>);

#[derive(Default)]
struct Inner {
    any: AtomicBool,
    armed: Mutex<HashMap<&'static str, oneshot::Sender<()>>>,
    /// What fails, and how many more times (`None`: until healed).
    failing: Mutex<Vec<(Failing, Option<u32>)>>,
    /// Keys whose handling takes this long, as a slow handler would.
    slow: Mutex<Vec<(String, std::time::Duration)>>,
}

#[derive(Clone, PartialEq, Eq)]
enum Failing {
    Event(uuid::Uuid),
    Key(String),
}

impl std::fmt::Debug for Faults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Faults(test)"
        } else {
            "Faults(none)"
        })
    }
}

impl Faults {
    /// Faults a test can arm.
    pub fn for_tests() -> Self {
        Self(Some(Arc::default()))
    }

    /// Arms `point`; the returned receiver fires when a task stops there.
    pub fn arm(&self, point: &'static str) -> oneshot::Receiver<()> {
        assert!(POINTS.contains(&point), "unknown crash point {point}");
        let (tx, rx) = oneshot::channel();
        if let Some(inner) = &self.0 {
            inner
                .armed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(point, tx);
            inner.any.store(true, Ordering::SeqCst);
        }
        rx
    }

    /// Makes every handling of `event_id` fail, as a handler with a bug would, until
    /// [`Faults::heal`].
    pub fn fail_event(&self, event_id: uuid::Uuid) {
        self.fail(Failing::Event(event_id), None);
    }

    /// Makes every handling of an event with this ordering key fail, until healed.
    pub fn fail_key(&self, key: impl Into<String>) {
        self.fail(Failing::Key(key.into()), None);
    }

    /// Makes the next `times` handlings of events with this ordering key fail.
    pub fn fail_key_times(&self, key: impl Into<String>, times: u32) {
        self.fail(Failing::Key(key.into()), Some(times));
    }

    fn fail(&self, failing: Failing, times: Option<u32>) {
        if let Some(inner) = &self.0 {
            inner
                .failing
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((failing, times));
            inner.any.store(true, Ordering::SeqCst);
        }
    }

    /// Makes handling events of this ordering key take `delay` longer.
    pub fn slow_key(&self, key: impl Into<String>, delay: std::time::Duration) {
        if let Some(inner) = &self.0 {
            inner
                .slow
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((key.into(), delay));
            inner.any.store(true, Ordering::SeqCst);
        }
    }

    /// How much longer handling `event` must take.
    pub(crate) fn slowness(&self, event: &contracts::Envelope) -> Option<std::time::Duration> {
        let inner = self.0.as_ref()?;
        if !inner.any.load(Ordering::Relaxed) {
            return None;
        }
        inner
            .slow
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|(key, _)| *key == event.key)
            .map(|(_, delay)| *delay)
    }

    /// The bug is fixed.
    pub fn heal(&self) {
        if let Some(inner) = &self.0 {
            inner
                .failing
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clear();
        }
    }

    pub(crate) fn fails(&self, event: &contracts::Envelope) -> bool {
        let Some(inner) = &self.0 else { return false };
        if !inner.any.load(Ordering::Relaxed) {
            return false;
        }
        let mut failing = inner.failing.lock().unwrap_or_else(|e| e.into_inner());
        for (what, times) in failing.iter_mut() {
            let matches = match what {
                Failing::Event(id) => *id == event.id,
                Failing::Key(key) => *key == event.key,
            };
            match times {
                _ if !matches => {}
                None => return true,
                Some(0) => {}
                Some(n) => {
                    *n -= 1;
                    return true;
                }
            }
        }
        false
    }

    /// Stops here forever if a test armed this point.
    pub async fn point(&self, name: &'static str) {
        let Some(inner) = &self.0 else { return };
        if !inner.any.load(Ordering::Relaxed) {
            return;
        }
        let hit = inner
            .armed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
        if let Some(reached) = hit {
            tracing::warn!(point = name, "crash point reached: this task stops here");
            let _ = reached.send(());
            std::future::pending::<()>().await;
        }
    }
}
