//! Where a request's events come from: the request id and the trace the host's outermost
//! middleware stored for the request, read by a handler as [`Origin`].

use actix_web::{Error, FromRequest, HttpMessage, HttpRequest};
use contracts::{Cause, Traceparent};

/// The id of the request being served.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// Where a request's events come from: its correlation (the request id, when it is a
/// UUID) and its trace.
#[derive(Debug, Clone)]
pub struct Origin(pub Cause);

impl FromRequest for Origin {
    type Error = Error;
    type Future = std::future::Ready<Result<Self, Error>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let extensions = req.extensions();
        let correlation_id = extensions
            .get::<RequestId>()
            .and_then(|r| uuid::Uuid::parse_str(&r.0).ok())
            .unwrap_or_else(uuid::Uuid::now_v7);
        let traceparent = extensions
            .get::<Traceparent>()
            .copied()
            .unwrap_or_else(Traceparent::new_root);
        std::future::ready(Ok(Origin(Cause {
            correlation_id,
            causation_id: None,
            traceparent,
        })))
    }
}
