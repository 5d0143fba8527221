//! The payment provider over HTTP. It only speaks and classifies: the payment worker owns
//! the timeout, the retries (on the attempt's schedule, in the database), the circuit
//! breaker and the bulkhead, the same for every gateway.
//!
//! The provider's API, as this adapter uses it:
//! - `POST {url}/authorizations` with `Idempotency-Key: <attempt id>` (the same on every
//!   retry of one attempt, so the provider authorizes once), `Authorization: Bearer
//!   <api_key>` when a key is set, and `{"order_id", "amount_minor", "currency", "token"}`;
//!   answers 200 with `{"status": "approved", "reference"}` or
//!   `{"status": "declined", "reason"}`.
//! - `POST {url}/authorizations/{reference}/void` with `Idempotency-Key: void-<reference>`;
//!   any 2xx answer means voided.
//!
//! Transient (retried): no connection, no answer, a 5xx, 408, 429 (its `Retry-After` in
//! seconds is honoured), and a 2xx body that cannot be read (asking again under the same
//! key is safe). Anything else is a refusal, never retried: the payment counts as declined.

use std::time::Duration;

use async_trait::async_trait;
use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::{Authorization, AuthorizeRequest, GatewayError, PaymentGateway};

/// `Retry-After` values above this are taken as this: a provider asking for an hour should
/// not stop payments for an hour without anyone looking.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);

pub(crate) struct HttpGateway {
    client: reqwest::Client,
    url: String,
    api_key: Option<SecretString>,
}

#[derive(Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
enum Answer {
    Approved { reference: String },
    Declined { reason: String },
}

impl HttpGateway {
    /// `client` is the runtime's (`module_api::tls`), which speaks `https://`.
    pub(crate) fn new(
        client: reqwest::ClientBuilder,
        url: &str,
        api_key: Option<SecretString>,
        connect_timeout: Duration,
        max_idle: usize,
    ) -> anyhow::Result<Self> {
        let client = client
            .connect_timeout(connect_timeout)
            .pool_max_idle_per_host(max_idle)
            .build()?;
        Ok(Self {
            client,
            url: url.trim_end_matches('/').to_owned(),
            api_key,
        })
    }

    fn post(&self, path: &str, idempotency_key: &str) -> reqwest::RequestBuilder {
        let request = self
            .client
            .post(format!("{}{path}", self.url))
            .header("Idempotency-Key", idempotency_key);
        match &self.api_key {
            Some(key) => request.bearer_auth(key.expose_secret()),
            None => request,
        }
    }
}

#[async_trait]
impl PaymentGateway for HttpGateway {
    async fn authorize(&self, request: &AuthorizeRequest) -> Result<Authorization, GatewayError> {
        let response = self
            .post("/authorizations", &request.idempotency_key.to_string())
            .json(&serde_json::json!({
                "order_id": request.order_id,
                "amount_minor": request.amount_minor,
                "currency": request.currency,
                "token": request.token,
            }))
            .send()
            .await
            .map_err(unreachable)?;
        let response = check(response).await?;
        match response.json::<Answer>().await {
            Ok(Answer::Approved { reference }) => Ok(Authorization::Approved { reference }),
            Ok(Answer::Declined { reason }) => Ok(Authorization::Declined { reason }),
            Err(e) => Err(GatewayError::Unavailable {
                reason: format!("an answer that cannot be read: {e}"),
                retry_after: None,
            }),
        }
    }

    async fn void(&self, reference: &str) -> Result<(), GatewayError> {
        let response = self
            .post(
                &format!("/authorizations/{reference}/void"),
                &format!("void-{reference}"),
            )
            .send()
            .await
            .map_err(unreachable)?;
        check(response).await.map(|_| ())
    }
}

fn unreachable(e: reqwest::Error) -> GatewayError {
    let kind = if e.is_connect() {
        "no connection"
    } else if e.is_timeout() {
        "no answer in time"
    } else {
        "the request failed"
    };
    // The error and its causes (refused, reset, a certificate nobody vouches for), without
    // the URL: it stays out of the logs, with anything in it.
    let e = e.without_url();
    let mut reason = format!("{kind}: {e}");
    let mut cause = std::error::Error::source(&e);
    while let Some(c) = cause {
        let text = c.to_string();
        if !reason.ends_with(&text) {
            reason = format!("{reason}: {text}");
        }
        cause = c.source();
    }
    GatewayError::Unavailable {
        reason,
        retry_after: None,
    }
}

/// A 2xx answer, or the error it stands for.
async fn check(response: reqwest::Response) -> Result<reqwest::Response, GatewayError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let retry_after = retry_after(&response);
    let body: String = response
        .text()
        .await
        .unwrap_or_default()
        .chars()
        .take(200)
        .collect();
    if is_transient(status) {
        Err(GatewayError::Unavailable {
            reason: format!("answered {status}"),
            retry_after,
        })
    } else {
        Err(GatewayError::Refused(format!("answered {status}: {body}")))
    }
}

fn is_transient(status: StatusCode) -> bool {
    status.is_server_error()
        || status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
}

/// `Retry-After` in seconds (the HTTP-date form is ignored: the backoff applies).
fn retry_after(response: &reqwest::Response) -> Option<Duration> {
    let seconds: u64 = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(seconds).min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_server_errors_timeouts_and_rate_limits_are_transient() {
        for (status, transient) in [
            (500, true),
            (502, true),
            (503, true),
            (429, true),
            (408, true),
            (400, false),
            (401, false),
            (402, false),
            (404, false),
            (409, false),
            (422, false),
        ] {
            assert_eq!(
                is_transient(StatusCode::from_u16(status).expect("a status")),
                transient,
                "{status}"
            );
        }
    }
}
