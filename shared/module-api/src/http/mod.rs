//! HTTP pieces every module shares: the error shape, checked extractors, the origin of a
//! request's events.

mod error;
mod extract;
mod origin;

pub use error::ApiError;
pub use extract::{
    BodyDeadline, BodyLimit, FromBody, Parsed, ValidQuery, parse_json, parse_query, uuid_param,
};
pub use origin::{Origin, RequestId};
