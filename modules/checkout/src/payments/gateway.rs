//! The payment gateway port (what the payment worker asks of a provider) and the
//! simulated provider, the default adapter; the other adapter speaks HTTP (`http.rs`).

use std::time::Duration;

use async_trait::async_trait;
use uuid::Uuid;

use super::PaymentSettings;

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
    /// The call failed and may work later: it is retried, and counts against the breaker.
    #[error("the payment provider is unavailable: {reason}")]
    Unavailable {
        reason: String,
        /// How long the provider asked us to wait (`Retry-After`).
        retry_after: Option<Duration>,
    },
    /// The provider answered and refused the request itself: asking again cannot help.
    #[error("the payment provider refused the request: {0}")]
    Refused(String),
}

#[async_trait]
pub(crate) trait PaymentGateway: Send + Sync + 'static {
    async fn authorize(&self, request: &AuthorizeRequest) -> Result<Authorization, GatewayError>;
    /// Releases an approved authorization that is no longer wanted.
    async fn void(&self, reference: &str) -> Result<(), GatewayError>;
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
            return Err(GatewayError::Unavailable {
                reason: "simulated outage".into(),
                retry_after: None,
            });
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
