//! The payment gateway port, and the simulated provider that is the default. A real
//! provider (an HTTP adapter with timeout, retries, circuit breaker and bulkhead) would
//! implement the same trait; the payment worker already bounds concurrency and time.

use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use uuid::Uuid;
use validator::Validate;

/// The token the simulated provider always declines.
pub const DECLINED_TOKEN: &str = "tok_decline";

pub(crate) struct AuthorizeRequest {
    /// The provider must treat two requests with the same key as one.
    pub(crate) idempotency_key: Uuid,
    pub(crate) order_id: Uuid,
    pub(crate) amount_minor: i64,
    pub(crate) currency: String,
    pub(crate) token: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Authorization {
    Approved { reference: String },
    Declined { reason: String },
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum GatewayError {
    /// The call failed and may work later.
    #[error("the payment provider failed: {0}")]
    Unavailable(String),
}

#[async_trait]
pub(crate) trait PaymentGateway: Send + Sync + 'static {
    async fn authorize(&self, request: &AuthorizeRequest) -> Result<Authorization, GatewayError>;
    /// Releases an approved authorization that is no longer wanted.
    async fn void(&self, reference: &str) -> Result<(), GatewayError>;
}

/// `[modules.checkout.payment]`.
#[derive(Debug, Clone, Deserialize, Validate)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct PaymentSettings {
    /// Simulated provider: how long each call takes.
    #[validate(range(max = 60000))]
    pub(crate) latency_ms: u64,
    /// Simulated provider: the share of calls that fail (and are retried), 0 to 1.
    #[validate(range(min = 0.0, max = 1.0))]
    pub(crate) failure_rate: f64,
    /// Calls in flight at once: the bulkhead that keeps a slow provider from taking all
    /// of checkout's resources.
    #[validate(range(min = 1, max = 1000))]
    pub(crate) max_concurrent: usize,
    /// A call taking longer fails and is retried.
    #[validate(range(min = 10, max = 120000))]
    pub(crate) timeout_ms: u64,
    /// Failed calls before the payment counts as declined.
    #[validate(range(min = 1, max = 50))]
    pub(crate) max_attempts: i32,
}

impl PaymentSettings {
    /// How long a claim on a payment attempt lasts: the call's own timeout twice over,
    /// and never under 10 s, so that recording under load normally ends well inside it.
    /// An outcome recorded later still is dropped and asked for again (the worker fences
    /// its records), which costs a call but never pays twice.
    pub(crate) fn lease_ms(&self) -> i64 {
        (self.timeout_ms as i64 * 2).max(10_000)
    }
}

impl Default for PaymentSettings {
    fn default() -> Self {
        Self {
            latency_ms: 0,
            failure_rate: 0.0,
            max_concurrent: 64,
            timeout_ms: 5000,
            max_attempts: 5,
        }
    }
}

pub(crate) struct SimulatedGateway {
    latency: Duration,
    failure_rate: f64,
}

impl SimulatedGateway {
    pub(crate) fn new(settings: &PaymentSettings) -> Self {
        Self {
            latency: Duration::from_millis(settings.latency_ms),
            failure_rate: settings.failure_rate,
        }
    }
}

#[async_trait]
impl PaymentGateway for SimulatedGateway {
    async fn authorize(&self, request: &AuthorizeRequest) -> Result<Authorization, GatewayError> {
        tracing::debug!(
            order_id = %request.order_id, amount_minor = request.amount_minor,
            currency = %request.currency, "simulated authorization"
        );
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
        if self.failure_rate > 0.0 && fastrand::f64() < self.failure_rate {
            return Err(GatewayError::Unavailable("simulated outage".into()));
        }
        if request.token == DECLINED_TOKEN {
            return Ok(Authorization::Declined {
                reason: "card declined".into(),
            });
        }
        Ok(Authorization::Approved {
            reference: format!("sim_{}", request.idempotency_key.simple()),
        })
    }

    async fn void(&self, _reference: &str) -> Result<(), GatewayError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(token: &str) -> AuthorizeRequest {
        AuthorizeRequest {
            idempotency_key: Uuid::now_v7(),
            order_id: Uuid::now_v7(),
            amount_minor: 100,
            currency: "EUR".into(),
            token: token.into(),
        }
    }

    #[tokio::test]
    async fn the_simulator_declines_only_the_decline_token() {
        let gateway = SimulatedGateway::new(&PaymentSettings::default());
        assert!(matches!(
            gateway.authorize(&request("tok_visa")).await,
            Ok(Authorization::Approved { .. })
        ));
        assert!(matches!(
            gateway.authorize(&request(DECLINED_TOKEN)).await,
            Ok(Authorization::Declined { .. })
        ));
    }

    #[tokio::test]
    async fn the_simulator_fails_at_its_configured_rate() {
        let gateway = SimulatedGateway::new(&PaymentSettings {
            failure_rate: 1.0,
            ..Default::default()
        });
        assert!(gateway.authorize(&request("tok_visa")).await.is_err());
    }
}
