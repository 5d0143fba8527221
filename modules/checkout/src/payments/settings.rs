//! `[modules.checkout.payment]`: which provider, how to reach it, and the limits the
//! payment worker keeps whatever the provider (bulkhead, timeout, retries, breaker); and
//! the gateway these settings choose.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use kernel::FieldErrors;
use secrecy::SecretString;
use serde::Deserialize;
use validator::Validate;

use super::breaker::BreakerSettings;
use super::gateway::{PaymentGateway, SimulatedGateway};
use super::http;

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
                let client =
                    module_api::tls::client_builder(self.ca_file.as_deref()).context(match self
                        .ca_file
                    {
                        Some(_) => "modules.checkout.payment.ca_file",
                        None => "modules.checkout.payment: no HTTPS client",
                    })?;
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
            module_api::backoff(self.retry_base_ms, self.retry_max_ms, attempt.max(1) as u32);
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

#[cfg(test)]
mod tests {
    use super::*;

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
