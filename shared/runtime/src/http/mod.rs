//! The host's HTTP middleware: request ids and the root span of every request. What a
//! module's handlers use (the error shape, extractors, [`module_api::Origin`]) is in
//! `module_api`.

mod request_id;

pub(crate) use request_id::Route;
pub use request_id::{RootSpan, X_REQUEST_ID, request_id_middleware};
