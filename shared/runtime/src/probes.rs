//! Liveness (`/healthz`: the process answers; no dependency is touched) and readiness
//! (`/readyz`: every dependency this process needs answers in time; 503 names the ones
//! that did not).
//!
//! The answer names each check and says `ok` or `down`, nothing more: readiness is often
//! reachable by more people than the logs, and a failure's detail (a host name, a role,
//! a driver's message) is for operators. It goes to the log at WARN, one line per failed
//! check.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use actix_web::{HttpResponse, web};
use async_trait::async_trait;
use serde_json::json;

use store::ModuleDb;

/// One dependency readiness depends on.
#[async_trait]
pub trait Probe: Send + Sync {
    /// Such as `catalog.database` or `bus.redis`.
    fn name(&self) -> String;
    async fn check(&self) -> anyhow::Result<()>;
}

pub struct DatabaseProbe(pub ModuleDb);

#[async_trait]
impl Probe for DatabaseProbe {
    fn name(&self) -> String {
        format!("{}.database", self.0.module())
    }

    async fn check(&self) -> anyhow::Result<()> {
        Ok(self.0.ping().await?)
    }
}

pub struct BusProbe(pub Arc<dyn messaging::EventBus>);

#[async_trait]
impl Probe for BusProbe {
    fn name(&self) -> String {
        format!("bus.{}", self.0.kind())
    }

    async fn check(&self) -> anyhow::Result<()> {
        Ok(self.0.check().await?)
    }
}

/// A consuming module's progress: down while its watchdog reports it stalled.
pub struct ConsumerProbe(pub Arc<messaging::Progress>);

#[async_trait]
impl Probe for ConsumerProbe {
    fn name(&self) -> String {
        format!("{}.consumer", self.0.module())
    }

    async fn check(&self) -> anyhow::Result<()> {
        match self.0.stalled() {
            Some(reason) => anyhow::bail!(reason),
            None => Ok(()),
        }
    }
}

pub struct Probes(Vec<Arc<dyn Probe>>);

impl Probes {
    pub fn new(probes: Vec<Arc<dyn Probe>>) -> Self {
        Self(probes)
    }
}

const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// What `/readyz` says of a check: these two words and nothing else.
const UP: &str = "ok";
const DOWN: &str = "down";

pub(crate) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz));
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

async fn readyz(probes: web::Data<Probes>) -> HttpResponse {
    let results = futures::future::join_all(probes.0.iter().map(|probe| async move {
        let outcome = match tokio::time::timeout(PROBE_TIMEOUT, probe.check()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("{e:#}")),
            Err(_) => Err(format!("no answer within {} ms", PROBE_TIMEOUT.as_millis())),
        };
        (probe.name(), outcome)
    }))
    .await;
    let mut checks = BTreeMap::new();
    let mut failed = Vec::new();
    for (name, outcome) in results {
        match outcome {
            Ok(()) => {
                checks.insert(name, UP);
            }
            Err(e) => {
                tracing::warn!(probe = %name, error = %e, "readiness check failed");
                failed.push(name.clone());
                checks.insert(name, DOWN);
            }
        }
    }
    if failed.is_empty() {
        HttpResponse::Ok().json(json!({"status": "ready", "checks": checks}))
    } else {
        HttpResponse::ServiceUnavailable().json(json!({
            "status": "unavailable",
            "failed": failed,
            "checks": checks,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::{App, test};

    struct Failing;

    #[async_trait]
    impl Probe for Failing {
        fn name(&self) -> String {
            "orders.database".into()
        }

        async fn check(&self) -> anyhow::Result<()> {
            anyhow::bail!("password authentication failed for user \"shop_orders\" at db.internal")
        }
    }

    struct Passing;

    #[async_trait]
    impl Probe for Passing {
        fn name(&self) -> String {
            "bus.local".into()
        }

        async fn check(&self) -> anyhow::Result<()> {
            Ok(())
        }
    }

    #[actix_web::test]
    async fn a_failed_check_is_named_and_down_without_its_detail() {
        let probes = web::Data::new(Probes::new(vec![Arc::new(Failing), Arc::new(Passing)]));
        let app = test::init_service(App::new().app_data(probes).configure(routes)).await;
        let reply =
            test::call_service(&app, test::TestRequest::get().uri("/readyz").to_request()).await;
        assert_eq!(reply.status(), 503);
        let body: serde_json::Value = test::read_body_json(reply).await;
        assert_eq!(
            body,
            json!({
                "status": "unavailable",
                "failed": ["orders.database"],
                "checks": {"orders.database": "down", "bus.local": "ok"},
            })
        );
    }
}
