//! The envelope every event travels in, whatever the bus.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{Event, Traceparent, source_of};

/// One event on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// UUID v7: unique, and ordered by creation time.
    pub id: Uuid,
    /// `<module>.<fact>.v<N>`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// The producing module.
    pub source: String,
    pub occurred_at: DateTime<Utc>,
    /// The ordering key (the aggregate id): events of one key from one producer are handled
    /// in the order they were committed.
    pub key: String,
    /// Shared by every event that follows from one request.
    pub correlation_id: Uuid,
    /// The event that caused this one; none for an event caused by a request.
    pub causation_id: Option<Uuid>,
    /// W3C trace context: the span that published the event (the outbox points it at its
    /// `publish` span; until then, and when no tracer is installed, the span that caused it).
    pub traceparent: Option<String>,
    pub payload: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContractError {
    #[error("expected an event of type {expected}, got {actual}")]
    WrongType {
        expected: &'static str,
        actual: String,
    },
    #[error("the payload of {event_type} does not decode: {reason}")]
    Undecodable { event_type: String, reason: String },
    #[error("the payload of {event_type} breaks its contract: {reason}")]
    Invalid { event_type: String, reason: String },
}

/// What caused the events a use case is about to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cause {
    pub correlation_id: Uuid,
    pub causation_id: Option<Uuid>,
    /// The span the events are published under: a span that exists in the trace (the
    /// caller's, or the span that published the event being handled), never a made-up
    /// one, so that a `publish` span started under it has a parent the trace shows.
    pub traceparent: Traceparent,
}

impl Cause {
    /// A cause with no parent: a new correlation and a new trace.
    pub fn fresh() -> Self {
        Self {
            correlation_id: Uuid::now_v7(),
            causation_id: None,
            traceparent: Traceparent::new_root(),
        }
    }

    /// The cause of events published while handling `event`: under the span that
    /// published `event`.
    pub fn following(event: &Envelope) -> Self {
        let traceparent = event
            .traceparent
            .as_deref()
            .and_then(Traceparent::parse)
            .unwrap_or_else(Traceparent::new_root);
        Self {
            correlation_id: event.correlation_id,
            causation_id: Some(event.id),
            traceparent,
        }
    }
}

impl Envelope {
    /// Wraps a payload, after checking it against its contract.
    pub fn new<E: Event>(event: &E, cause: &Cause) -> Result<Envelope, ContractError> {
        event.validate().map_err(|reason| ContractError::Invalid {
            event_type: E::TYPE.to_owned(),
            reason,
        })?;
        let payload = serde_json::to_value(event).map_err(|e| ContractError::Undecodable {
            event_type: E::TYPE.to_owned(),
            reason: e.to_string(),
        })?;
        Ok(Envelope {
            id: Uuid::now_v7(),
            event_type: E::TYPE.to_owned(),
            source: source_of(E::TYPE).to_owned(),
            occurred_at: Utc::now(),
            key: event.key(),
            correlation_id: cause.correlation_id,
            causation_id: cause.causation_id,
            // The cause's span, until the outbox starts the event's `publish` span under it.
            traceparent: Some(cause.traceparent.to_string()),
            payload,
        })
    }

    /// Reads the payload as `E`, checking the type name and the contract's rules.
    pub fn decode<E: Event>(&self) -> Result<E, ContractError> {
        if self.event_type != E::TYPE {
            return Err(ContractError::WrongType {
                expected: E::TYPE,
                actual: self.event_type.clone(),
            });
        }
        let event: E = serde_json::from_value(self.payload.clone()).map_err(|e| {
            ContractError::Undecodable {
                event_type: self.event_type.clone(),
                reason: e.to_string(),
            }
        })?;
        event.validate().map_err(|reason| ContractError::Invalid {
            event_type: self.event_type.clone(),
            reason,
        })?;
        Ok(event)
    }

    /// The envelope as sent on the wire.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Serializing plain data (strings, numbers, a JSON value) cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn from_bytes(raw: &[u8]) -> Result<Envelope, String> {
        serde_json::from_slice(raw).map_err(|e| e.to_string())
    }

    /// The trace id, for logs.
    pub fn trace_id(&self) -> Option<String> {
        self.traceparent
            .as_deref()
            .and_then(Traceparent::parse)
            .map(|t| t.trace_id_hex())
    }
}
