//! Liveness (`/healthz`: the process answers; no dependency is touched) and readiness
//! (`/readyz`: every dependency this process needs answers in time; 503 names the ones
//! that did not).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use actix_web::{HttpResponse, web};
use async_trait::async_trait;
use serde_json::json;

use crate::db::ModuleDb;

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
                checks.insert(name, "ok".to_owned());
            }
            Err(e) => {
                tracing::warn!(probe = %name, error = %e, "readiness check failed");
                failed.push(name.clone());
                checks.insert(name, e);
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
