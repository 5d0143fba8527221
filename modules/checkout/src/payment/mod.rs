//! The payment gateway port, its settings, and its two adapters: the simulated provider
//! (the default) and a provider over HTTP ([`http`]). Whatever the adapter, the payment
//! worker bounds each call in time, caps the calls in flight (the bulkhead), retries
//! transient failures on a backoff and stops calling while the circuit breaker
//! ([`breaker`]) is open.

pub(crate) mod breaker;
mod http;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use kernel::FieldErrors;
use secrecy::SecretString;
use serde::Deserialize;
use uuid::Uuid;
use validator::Validate;

use breaker::BreakerSettings;

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

/// Which provider checkout pays through.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Provider {
    /// Built in: `tok_decline` is declined, anything else approved.
    #[default]
    Simulated,
    /// A provider API over HTTP at `url`.
    Http,
}

/// `[modules.checkout.payment]`.
#[derive(Debug, Clone, Deserialize, Validate)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct PaymentSettings {
    pub(crate) provider: Provider,
    /// HTTP provider: its base URL (`http://...`); required when `provider = "http"`.
    pub(crate) url: Option<String>,
    /// HTTP provider: the bearer token it expects, from the environment only
    /// (`APP__MODULES__CHECKOUT__PAYMENT__API_KEY`).
    pub(crate) api_key: Option<SecretString>,
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
    /// A call taking longer fails (transiently) and is retried.
    #[validate(range(min = 10, max = 120000))]
    pub(crate) timeout_ms: u64,
    /// Retries of a transient failure wait `retry_base_ms` doubling with each attempt,
    /// with full jitter,
    #[validate(range(min = 1, max = 600000))]
    pub(crate) retry_base_ms: u64,
    /// never longer than this (unless the provider's `Retry-After` asks for longer).
    #[validate(range(min = 1, max = 3600000))]
    pub(crate) retry_max_ms: u64,
    #[validate(nested)]
    pub(crate) breaker: BreakerSettings,
}

impl PaymentSettings {
    /// How long a claim on a payment attempt lasts: the call's own timeout twice over,
    /// and never under 10 s, so that recording under load normally ends well inside it.
    /// An outcome recorded later still is dropped and asked for again (the worker fences
    /// its records), which costs a call but never pays twice.
    pub(crate) fn lease_ms(&self) -> i64 {
        (self.timeout_ms as i64 * 2).max(10_000)
    }

    /// What serde and the ranges cannot say: the HTTP provider needs a URL.
    pub(crate) fn check(&self, errors: &mut FieldErrors) {
        if self.provider != Provider::Http {
            return;
        }
        match self.url.as_deref() {
            None => errors.add(
                "payment.url",
                "required",
                "the HTTP payment provider needs its base URL",
            ),
            Some(url) if !(url.starts_with("http://") && url.len() > "http://".len()) => errors
                .add(
                    "payment.url",
                    "invalid",
                    "must be an http:// URL (TLS to the provider is not built in: use a proxy)",
                ),
            Some(_) => {}
        }
    }

    /// The gateway these settings choose.
    pub(crate) fn gateway(&self) -> anyhow::Result<Arc<dyn PaymentGateway>> {
        Ok(match self.provider {
            Provider::Simulated => Arc::new(SimulatedGateway::new(self)),
            Provider::Http => {
                let url = self
                    .url
                    .as_deref()
                    .ok_or_else(|| anyhow::anyhow!("modules.checkout.payment.url is required"))?;
                Arc::new(http::HttpGateway::new(
                    url,
                    self.api_key.clone(),
                    Duration::from_millis(self.timeout_ms),
                    self.max_concurrent,
                )?)
            }
        })
    }

    /// The delay before retry `attempt` (1-based) of a transient failure: messaging's
    /// backoff on these settings, or longer if the provider asked for longer.
    pub(crate) fn retry_delay(&self, attempt: i32, retry_after: Option<Duration>) -> Duration {
        let delay =
            messaging::backoff(self.retry_base_ms, self.retry_max_ms, attempt.max(1) as u32);
        delay.max(retry_after.unwrap_or_default())
    }
}

impl Default for PaymentSettings {
    fn default() -> Self {
        Self {
            provider: Provider::Simulated,
            url: None,
            api_key: None,
            latency_ms: 0,
            failure_rate: 0.0,
            max_concurrent: 64,
            timeout_ms: 5000,
            retry_base_ms: 100,
            retry_max_ms: 30000,
            breaker: BreakerSettings::default(),
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

    #[test]
    fn the_http_provider_needs_an_http_url() {
        for (url, valid) in [
            (None, false),
            (Some("https://pay.example"), false),
            (Some("http://"), false),
            (Some("http://pay.internal:8080/v1"), true),
        ] {
            let settings = PaymentSettings {
                provider: Provider::Http,
                url: url.map(str::to_owned),
                ..Default::default()
            };
            let mut errors = FieldErrors::new();
            settings.check(&mut errors);
            assert_eq!(errors.is_empty(), valid, "{url:?}");
            assert_eq!(errors.contains("payment.url"), !valid, "{url:?}");
        }
        let mut errors = FieldErrors::new();
        PaymentSettings::default().check(&mut errors);
        assert!(errors.is_empty(), "the simulator needs no URL");
    }

    #[test]
    fn a_retry_waits_on_the_backoff_and_no_less_than_the_provider_asked() {
        let settings = PaymentSettings {
            retry_base_ms: 10,
            retry_max_ms: 40,
            ..Default::default()
        };
        for attempt in 1..10 {
            assert!(settings.retry_delay(attempt, None) <= Duration::from_millis(40));
            assert!(
                settings.retry_delay(attempt, Some(Duration::from_secs(2)))
                    >= Duration::from_secs(2)
            );
        }
    }
}
