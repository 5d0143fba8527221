//! The error shape of every endpoint as the OpenAPI document describes it, and the name of
//! the bearer scheme: a module's `utoipa` annotations refer to both.

use serde::Serialize;
use utoipa::ToSchema;

/// The one error shape of every endpoint.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// A stable word for programs: `validation_failed`, `order_not_found`, `unauthorized`...
    pub code: String,
    /// A sentence for people.
    pub message: String,
    /// On 400: each field at fault, by its path (`items[0].sku`), with its own code and
    /// message.
    #[schema(value_type = Option<Object>)]
    pub fields: Option<serde_json::Value>,
}

/// The scheme name routes' `security` refers to.
pub const BEARER: &str = "bearer";
