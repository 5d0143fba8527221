//! `validator` custom checks that delegate to the kernel's value types, so a rule such as
//! "what is a valid sku" is written once, in the kernel, and named in request errors.

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

pub fn currency(raw: &str) -> Result<(), ValidationError> {
    kernel::Currency::parse(raw).map(|_| ()).map_err(refuse)
}

pub fn quantity(raw: i64) -> Result<(), ValidationError> {
    kernel::Quantity::new(raw).map(|_| ()).map_err(refuse)
}

pub fn stock_level(raw: i64) -> Result<(), ValidationError> {
    kernel::StockLevel::new(raw).map(|_| ()).map_err(refuse)
}

pub fn amount_minor(raw: i64) -> Result<(), ValidationError> {
    // Any currency will do: the amount's own bounds do not depend on it.
    let any = kernel::Currency::parse("EUR").map_err(refuse)?;
    kernel::Money::new(raw, any).map(|_| ()).map_err(refuse)
}

pub fn uuid_text(raw: &str) -> Result<(), ValidationError> {
    uuid::Uuid::parse_str(raw)
        .map(|_| ())
        .map_err(|_| ValidationError::new("invalid_format").with_message("must be a UUID".into()))
}
