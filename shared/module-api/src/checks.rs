//! `validator` custom checks of query parameters that delegate to the kernel's value types,
//! so a rule such as "what is a valid sku" is written once, in the kernel. (Bodies do not
//! use these: they are built with the constructors themselves, see `FromBody`.)

use std::borrow::Cow;

use kernel::ErrorCode;
use validator::ValidationError;

fn refuse<E: ErrorCode + std::fmt::Display>(error: E) -> ValidationError {
    ValidationError {
        code: Cow::Borrowed(error.code()),
        message: Some(Cow::Owned(error.to_string())),
        params: Default::default(),
    }
}

pub fn sku(raw: &str) -> Result<(), ValidationError> {
    kernel::Sku::parse(raw).map(|_| ()).map_err(refuse)
}

pub fn uuid_text(raw: &str) -> Result<(), ValidationError> {
    uuid::Uuid::parse_str(raw)
        .map(|_| ())
        .map_err(|_| ValidationError::new("invalid_format").with_message("must be a UUID".into()))
}
