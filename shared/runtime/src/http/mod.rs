//! HTTP pieces every module shares: the error shape, checked extractors, request ids.

pub mod checks;
mod error;
mod extract;
mod request_id;

pub use error::ApiError;
pub use extract::{
    BodyDeadline, BodyLimit, FromBody, Parsed, ValidQuery, parse_json, parse_query, uuid_param,
};
pub(crate) use request_id::Route;
pub use request_id::{Origin, RequestId, RootSpan, X_REQUEST_ID, request_id_middleware};
