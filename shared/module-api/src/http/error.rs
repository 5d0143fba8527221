//! The one error shape every endpoint answers with:
//! `{"error": {"code": "...", "message": "...", "fields": {...}}}`.
//! 4xx bodies explain the problem and name the fields; 5xx bodies are opaque and the cause
//! is logged once, here, with its whole chain.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use kernel::FieldErrors;
use serde::Serialize;

#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    fields: Option<FieldErrors>,
    cause: Option<anyhow::Error>,
    /// The `WWW-Authenticate` challenge of a 401.
    challenge: Option<&'static str>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    code: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    fields: Option<&'a FieldErrors>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            fields: None,
            cause: None,
            challenge: None,
        }
    }

    /// 400: the input is malformed or invalid; every field at fault is named.
    pub fn invalid(fields: FieldErrors) -> Self {
        let message = match fields.len() {
            1 => "1 field is invalid".to_owned(),
            n => format!("{n} fields are invalid"),
        };
        Self::new(StatusCode::BAD_REQUEST, "validation_failed", message).with_fields(fields)
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }

    /// 409: the request conflicts with the current state of a resource.
    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }

    /// 422: well-formed, but the business rules refuse it.
    pub fn unprocessable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }

    /// 401: no credentials; the answer carries a `WWW-Authenticate` challenge.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self {
            challenge: Some("Bearer realm=\"shop\""),
            ..Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
        }
    }

    /// 401: credentials were given but are not valid (RFC 6750's `invalid_token`).
    pub fn invalid_token(message: impl Into<String>) -> Self {
        Self {
            challenge: Some("Bearer realm=\"shop\", error=\"invalid_token\""),
            ..Self::new(StatusCode::UNAUTHORIZED, "invalid_token", message)
        }
    }

    /// 403: the caller is known but its role does not allow this.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 429: too many attempts; retry after `secs` seconds.
    pub fn too_many(message: impl Into<String>) -> Self {
        Self::new(StatusCode::TOO_MANY_REQUESTS, "too_many_requests", message)
    }

    /// 500: a fault of ours. The cause is logged; the body says nothing about it.
    pub fn internal(cause: anyhow::Error) -> Self {
        Self {
            cause: Some(cause),
            ..Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "an internal error occurred; it has been logged",
            )
        }
    }

    /// 503: a dependency is down; retrying later may work.
    pub fn unavailable(cause: anyhow::Error) -> Self {
        Self {
            cause: Some(cause),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the service is temporarily unavailable; retry later",
            )
        }
    }

    pub fn with_fields(mut self, fields: FieldErrors) -> Self {
        self.fields = Some(fields);
        self
    }

    pub fn code(&self) -> &'static str {
        self.code
    }

    pub fn fields(&self) -> Option<&FieldErrors> {
        self.fields.as_ref()
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)?;
        if let Some(fields) = &self.fields {
            write!(f, " ({fields})")?;
        }
        if let Some(cause) = &self.cause {
            write!(f, ": {cause:#}")?;
        }
        Ok(())
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        if let Some(cause) = &self.cause {
            // The chain of causes, never a backtrace: with RUST_BACKTRACE set, formatting
            // one costs milliseconds and 150 KB of log per failed request, which during a
            // database outage starves the probes that should report it.
            tracing::error!(error.cause_chain = %format_args!("{cause:#}"), error.message = %cause, "request failed: {}", self.code);
        }
        let mut response = HttpResponse::build(self.status);
        if let Some(challenge) = self.challenge {
            response.insert_header(("WWW-Authenticate", challenge));
        }
        response.json(Body {
            error: Inner {
                code: self.code,
                message: &self.message,
                fields: self.fields.as_ref(),
            },
        })
    }
}

/// Unexpected failures (a database error, say) become opaque 500s.
impl From<anyhow::Error> for ApiError {
    fn from(cause: anyhow::Error) -> Self {
        ApiError::internal(cause)
    }
}

impl From<sea_orm::DbErr> for ApiError {
    fn from(cause: sea_orm::DbErr) -> Self {
        ApiError::internal(anyhow::Error::new(cause).context("database error"))
    }
}
