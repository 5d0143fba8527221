//! The saga's watchdog: an order still `pending` past its deadline is reported (an ERROR
//! line with how many and the oldest, and the `checkout_orders_overdue` gauge), so an
//! order journey that stopped is never silently forgotten.

use std::time::Duration;

use module_api::ModuleDb;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use validator::Validate;

use crate::db::queries;

/// `[modules.checkout.watchdog]`.
#[derive(Debug, Clone, Deserialize, Validate)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct WatchdogSettings {
    /// An order still pending this long after it was placed is overdue.
    #[validate(range(min = 1, max = 86400))]
    pub(crate) order_deadline_secs: u64,
    /// How often the watchdog looks.
    #[validate(range(min = 1, max = 3600))]
    pub(crate) every_secs: u64,
}

impl Default for WatchdogSettings {
    fn default() -> Self {
        Self {
            order_deadline_secs: 120,
            every_secs: 15,
        }
    }
}

/// What the watchdog found on one look.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Overdue {
    pub(crate) count: u64,
    /// The oldest overdue order and how long it has been pending.
    pub(crate) oldest: Option<(Uuid, Duration)>,
}

pub(crate) struct OrderWatchdog {
    pub(crate) db: ModuleDb,
    pub(crate) settings: WatchdogSettings,
}

impl OrderWatchdog {
    pub(crate) async fn run(self, cancel: CancellationToken) {
        let every = Duration::from_secs(self.settings.every_secs);
        // Look first, then wait: the gauge exists from start-up, and orders left overdue
        // by a previous run are reported at once.
        loop {
            if let Err(e) = self.look().await {
                tracing::warn!(error = %format!("{e:#}"), "the order watchdog could not read the orders");
            }
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(every) => {}
            }
        }
    }

    #[tracing::instrument(name = "checkout.watch_orders", skip_all)]
    pub(crate) async fn look(&self) -> anyhow::Result<Overdue> {
        let now = chrono::Utc::now();
        let deadline = chrono::Duration::seconds(self.settings.order_deadline_secs as i64);
        let (count, oldest) = queries::overdue_orders(self.db.conn(), now - deadline).await?;
        let oldest = oldest.map(|(id, placed)| (id, (now - placed).to_std().unwrap_or_default()));
        metrics::gauge!("checkout_orders_overdue").set(count as f64);
        if let Some((id, age)) = oldest {
            tracing::error!(
                overdue = count,
                oldest_order_id = %id,
                oldest_pending_secs = age.as_secs(),
                deadline_secs = self.settings.order_deadline_secs,
                "orders are still pending past their deadline: their journey has stopped somewhere"
            );
        }
        Ok(Overdue { count, oldest })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::fixtures;

    async fn order(db: &ModuleDb, status: &str, age_secs: i64) -> Uuid {
        let id = Uuid::now_v7();
        let at = chrono::Utc::now() - chrono::Duration::seconds(age_secs);
        fixtures::insert_order(db, id, status, at).await;
        id
    }

    #[tokio::test]
    async fn only_orders_pending_past_the_deadline_are_reported_with_the_oldest_first() {
        let db = fixtures::memory_db().await;
        let watchdog = OrderWatchdog {
            db: db.clone(),
            settings: WatchdogSettings {
                order_deadline_secs: 60,
                every_secs: 1,
            },
        };
        assert_eq!(
            watchdog.look().await.expect("look"),
            Overdue {
                count: 0,
                oldest: None
            }
        );
        order(&db, "pending", 5).await; // within its deadline
        order(&db, "confirmed", 600).await; // old but done
        order(&db, "rejected", 600).await;
        let late = order(&db, "pending", 90).await;
        let oldest = order(&db, "pending", 300).await;
        let found = watchdog.look().await.expect("look");
        assert_eq!(found.count, 2);
        let (id, age) = found.oldest.expect("oldest");
        assert_eq!(id, oldest);
        assert!(age >= Duration::from_secs(300), "{age:?}");
        assert_ne!(id, late);
    }
}
