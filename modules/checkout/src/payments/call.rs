//! Asking the provider for one claimed attempt, outside any transaction: bounded by
//! `timeout_ms`, let through by the circuit breaker, with the attempt's id as idempotency
//! key, so asking again after a crash or a lapsed lease authorizes once.

use std::time::Duration;

use super::claim::Claimed;
use super::worker::PaymentWorker;
use super::{Authorization, AuthorizeRequest, GatewayError};
use crate::domain::PaymentAnswer;

pub(super) enum Called {
    Answered(Authorization),
    /// A transient failure: retried after the delay.
    Failed {
        error: String,
        retry_after: Option<Duration>,
    },
    /// The provider refused the request itself: the payment counts as declined.
    Refused(String),
    /// The order stopped waiting for its payment before the call: nothing was asked.
    NotNeeded,
    /// The circuit breaker opened between the claim and the call: nothing was asked, and
    /// the attempt is released as it was.
    Held,
}

impl Called {
    /// The answer as the payment's rules know it.
    pub(super) fn answer(&self) -> PaymentAnswer {
        match self {
            Called::Answered(Authorization::Approved { .. }) => PaymentAnswer::Approved,
            Called::Answered(Authorization::Declined { .. }) | Called::Refused(_) => {
                PaymentAnswer::Declined
            }
            Called::Failed { .. } => PaymentAnswer::Unavailable,
            Called::NotNeeded => PaymentAnswer::NotAsked,
            Called::Held => PaymentAnswer::Held,
        }
    }
}

impl PaymentWorker {
    pub(super) async fn call(&self, attempt: &Claimed) -> Called {
        let called = self.ask(attempt).await;
        tracing::Span::current().record(
            "outcome",
            match &called {
                Called::Answered(Authorization::Approved { .. }) => "approved",
                Called::Answered(Authorization::Declined { .. }) => "declined",
                Called::Failed { .. } => "failed",
                Called::Refused(_) => "refused",
                Called::NotNeeded => "not_needed",
                Called::Held => "held",
            },
        );
        called
    }

    async fn ask(&self, attempt: &Claimed) -> Called {
        let Some(charge) = &attempt.charge else {
            return Called::NotNeeded;
        };
        let request = AuthorizeRequest {
            idempotency_key: attempt.id,
            order_id: attempt.order_id,
            amount_minor: charge.amount_minor,
            currency: charge.currency.clone(),
            token: charge.token.clone(),
        };
        let Some(pass) = self.breaker.pass() else {
            return Called::Held;
        };
        let timeout = Duration::from_millis(self.settings.timeout_ms);
        let called = match tokio::time::timeout(timeout, self.gateway.authorize(&request)).await {
            Ok(Ok(answer)) => Called::Answered(answer),
            Ok(Err(GatewayError::Refused(reason))) => Called::Refused(reason),
            Ok(Err(e @ GatewayError::Unavailable { .. })) => Called::Failed {
                error: e.to_string(),
                retry_after: match e {
                    GatewayError::Unavailable { retry_after, .. } => retry_after,
                    GatewayError::Refused(_) => None,
                },
            },
            Err(_) => Called::Failed {
                error: format!("no answer within {} ms", timeout.as_millis()),
                retry_after: None,
            },
        };
        self.breaker
            .record(pass, !matches!(called, Called::Failed { .. }));
        called
    }
}
