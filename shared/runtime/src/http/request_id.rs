//! Request ids and the root span of every request.
//!
//! The outermost middleware takes the caller's `X-Request-Id` when it is a sane token (or
//! makes a UUID v7) and the caller's W3C `traceparent` when valid (or starts a trace),
//! stores both for the root span, and returns the id in the response. The root span
//! carries the request id, the trace id and the module the route belongs to, so every log
//! line written while serving the request has them. Events published by the request carry
//! the same trace (`module_api::Origin`).

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{Error, HttpMessage};
use contracts::Traceparent;
use module_api::RequestId;
use tracing::Span;
use tracing_actix_web::{DefaultRootSpanBuilder, RootSpanBuilder};

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Accepts ids of 1 to 128 visible ASCII characters; anything else is replaced.
fn acceptable(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic())
}

pub async fn request_id_middleware(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let id = req
        .headers()
        .get(&X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| acceptable(v))
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let trace = req
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(Traceparent::parse)
        .unwrap_or_else(Traceparent::new_root);
    req.extensions_mut().insert(RequestId(id.clone()));
    req.extensions_mut().insert(trace);
    let mut response = next.call(req).await?;
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(X_REQUEST_ID, value);
    }
    Ok(response)
}

/// The module a path belongs to: `/api/<module>/...`, else `app`.
fn module_of(path: &str) -> &str {
    path.strip_prefix("/api/")
        .and_then(|rest| rest.split('/').next())
        .filter(|m| kernel::is_valid_module_name(m))
        .unwrap_or("app")
}

/// The route template a request matched (`/api/catalog/products/{sku}`), or `unmatched`:
/// found once, when the request's root span is made.
#[derive(Debug, Clone)]
pub(crate) struct Route(pub(crate) String);

pub struct RootSpan;

impl RootSpanBuilder for RootSpan {
    fn on_request_start(request: &ServiceRequest) -> Span {
        let request_id = request
            .extensions()
            .get::<RequestId>()
            .map(|r| r.0.clone())
            .unwrap_or_default();
        let route = request
            .match_pattern()
            .unwrap_or_else(|| "unmatched".into());
        // Matching the path against the routes again costs a regex search per dynamic
        // segment: the metrics middleware reads the route found here instead.
        request.extensions_mut().insert(Route(route.clone()));
        let traceparent = request.extensions().get::<Traceparent>().copied();
        let span = tracing::info_span!(
            "HTTP request",
            http.method = %request.method(),
            http.route = %route,
            http.target = %request.uri().path(),
            http.status_code = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
            exception.message = tracing::field::Empty,
            exception.details = tracing::field::Empty,
            module = %module_of(request.path()),
            request_id = %request_id,
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty,
        );
        if let Some(traceparent) = traceparent {
            messaging::trace::adopt(&span, &traceparent);
        }
        span
    }

    fn on_request_end<B: MessageBody>(span: Span, outcome: &Result<ServiceResponse<B>, Error>) {
        DefaultRootSpanBuilder::on_request_end(span, outcome);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_from_callers_are_bounded_tokens() {
        assert!(acceptable("abc-123"));
        assert!(acceptable(&"x".repeat(128)));
        assert!(!acceptable(""));
        assert!(!acceptable(&"x".repeat(129)));
        assert!(!acceptable("has space"));
        assert!(!acceptable("new\nline"));
    }

    #[test]
    fn the_module_comes_from_the_path() {
        assert_eq!(module_of("/api/catalog/products"), "catalog");
        assert_eq!(module_of("/api/checkout"), "checkout");
        assert_eq!(module_of("/healthz"), "app");
        assert_eq!(module_of("/api/Bad!/x"), "app");
    }
}
