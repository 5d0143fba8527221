//! The payment gateway port, its settings, and its two adapters: the simulated provider
//! (the default) and a provider over HTTP ([`http`]). Whatever the adapter, the payment
//! worker bounds each call in time, caps the calls in flight (the bulkhead), retries
//! transient failures on a backoff and stops calling while the circuit breaker
//! ([`breaker`]) is open.

pub(crate) mod breaker;
mod http;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
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
    /// HTTP provider: its base URL (`https://...`); required when `provider = "http"`.
    /// Production refuses `http://` unless `allow_http` says the network is trusted.
    pub(crate) url: Option<String>,
    /// HTTP provider: a CA certificate file (PEM) trusted for an `https://` URL besides the
    /// system's roots (a provider behind a private CA).
    pub(crate) ca_file: Option<PathBuf>,
    /// Production only: accept an `http://` URL, for a TLS sidecar on localhost or a
    /// network trusted with card tokens in plain text. Elsewhere `http://` is accepted.
    pub(crate) allow_http: bool,
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

    /// What serde and the ranges cannot say: the HTTP provider needs an `https://` URL, or
    /// an `http://` one outside production or where `allow_http` says the network is
    /// trusted; a CA file goes with an `https://` URL.
    pub(crate) fn check(&self, errors: &mut FieldErrors, environment: &str) {
        if self.provider != Provider::Http {
            return;
        }
        let url = self.url.as_deref();
        let scheme = url.and_then(|url| {
            ["https://", "http://"]
                .into_iter()
                .find(|s| url.strip_prefix(s).is_some_and(|rest| !rest.is_empty()))
        });
        match (url, scheme) {
            (None, _) => errors.add(
                "payment.url",
                "required",
                "the HTTP payment provider needs its base URL",
            ),
            (Some(_), None) => errors.add(
                "payment.url",
                "invalid",
                "must be the provider's https:// base URL (or http://)",
            ),
            (Some(_), Some("http://")) if environment == "production" && !self.allow_http => errors
                .add(
                    "payment.url",
                    "insecure",
                    "production sends card tokens and the API key over https:// only: use the \
                     provider's https:// URL (its CA in payment.ca_file if it is a private \
                     one), or set payment.allow_http = true \
                     (APP__MODULES__CHECKOUT__PAYMENT__ALLOW_HTTP) if this http:// URL is a \
                     TLS sidecar on localhost or a trusted network",
                ),
            (Some(_), _) => {}
        }
        if let Some(file) = &self.ca_file
            && scheme != Some("https://")
        {
            errors.add(
                "payment.ca_file",
                "conflict",
                format!(
                    "{} is used with an https:// payment.url only",
                    file.display()
                ),
            );
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
                let client = runtime::tls::client_builder(self.ca_file.as_deref()).context(
                    match self.ca_file {
                        Some(_) => "modules.checkout.payment.ca_file",
                        None => "modules.checkout.payment: no HTTPS client",
                    },
                )?;
                Arc::new(http::HttpGateway::new(
                    client,
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
            ca_file: None,
            allow_http: false,
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

    /// The environment, the URL, whether `allow_http` is set, whether a CA file is named,
    /// and the field refused (none: accepted).
    type UrlCase = (
        &'static str,
        Option<&'static str>,
        bool,
        bool,
        Option<&'static str>,
    );

    #[test]
    fn the_http_provider_needs_https_in_production_unless_told_the_network_is_trusted() {
        let cases: &[UrlCase] = &[
            ("local", None, false, false, Some("payment.url")),
            (
                "local",
                Some("ftp://pay.example"),
                false,
                false,
                Some("payment.url"),
            ),
            ("local", Some("http://"), false, false, Some("payment.url")),
            ("local", Some("https://"), false, false, Some("payment.url")),
            ("local", Some("https://pay.example/v1"), false, false, None),
            ("local", Some("https://pay.example/v1"), false, true, None),
            (
                "local",
                Some("http://pay.internal:8080/v1"),
                false,
                false,
                None,
            ),
            ("test", Some("http://127.0.0.1:9/v1"), false, false, None),
            (
                "local",
                Some("http://pay.internal/v1"),
                false,
                true,
                Some("payment.ca_file"),
            ),
            (
                "production",
                Some("https://pay.example/v1"),
                false,
                false,
                None,
            ),
            (
                "production",
                Some("https://pay.example/v1"),
                false,
                true,
                None,
            ),
            (
                "production",
                Some("http://pay.internal/v1"),
                false,
                false,
                Some("payment.url"),
            ),
            (
                "production",
                Some("http://127.0.0.1:8443/v1"),
                true,
                false,
                None,
            ),
        ];
        for &(environment, url, allow_http, ca_file, refused) in cases {
            let settings = PaymentSettings {
                provider: Provider::Http,
                url: url.map(str::to_owned),
                allow_http,
                ca_file: ca_file.then(|| PathBuf::from("/etc/shop/pay-ca.pem")),
                ..Default::default()
            };
            let mut errors = FieldErrors::new();
            settings.check(&mut errors, environment);
            let row = format!("{environment} {url:?} allow_http={allow_http} ca_file={ca_file}");
            match refused {
                None => assert!(errors.is_empty(), "{row}: {errors}"),
                Some(field) => {
                    assert!(errors.contains(field), "{row}: {errors}");
                    assert_eq!(errors.iter().count(), 1, "{row}: {errors}");
                }
            }
        }
        let mut errors = FieldErrors::new();
        PaymentSettings {
            provider: Provider::Http,
            url: Some("http://pay.internal/v1".into()),
            ..Default::default()
        }
        .check(&mut errors, "production");
        let message = errors.to_string();
        for needle in [
            "https://",
            "APP__MODULES__CHECKOUT__PAYMENT__ALLOW_HTTP",
            "payment.ca_file",
        ] {
            assert!(message.contains(needle), "{message:?} should name {needle}");
        }
        let mut errors = FieldErrors::new();
        PaymentSettings::default().check(&mut errors, "production");
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
