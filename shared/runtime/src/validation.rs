//! Turning `validator` reports into the project's field errors, and the custom checks that
//! settings and request bodies share.

use std::borrow::Cow;

use kernel::FieldErrors;
use validator::{ValidationError, ValidationErrors, ValidationErrorsKind};

/// Flattens a nested `validator` report into `path -> error`, with paths such as
/// `items[0].quantity`.
pub fn flatten_validation_errors(errors: &ValidationErrors) -> FieldErrors {
    let mut out = FieldErrors::new();
    flatten_into("", errors, &mut out);
    out
}

fn flatten_into(prefix: &str, errors: &ValidationErrors, out: &mut FieldErrors) {
    for (field, kind) in errors.errors() {
        let path = join(prefix, field);
        match kind {
            ValidationErrorsKind::Field(list) => {
                if let Some(first) = list.first() {
                    out.add(path, first.code.clone(), describe(first));
                }
            }
            ValidationErrorsKind::Struct(inner) => flatten_into(&path, inner, out),
            ValidationErrorsKind::List(items) => {
                for (index, inner) in items {
                    flatten_into(&format!("{path}[{index}]"), inner, out);
                }
            }
        }
    }
}

fn join(prefix: &str, field: &str) -> String {
    if prefix.is_empty() {
        field.to_owned()
    } else {
        format!("{prefix}.{field}")
    }
}

/// A sentence for one failed check, from its message or its code and parameters.
fn describe(error: &ValidationError) -> String {
    if let Some(message) = &error.message {
        return message.to_string();
    }
    let param = |name: &str| error.params.get(name).map(|v| v.to_string());
    match error.code.as_ref() {
        "range" => match (param("min"), param("max")) {
            (Some(min), Some(max)) => format!("must be between {min} and {max}"),
            (Some(min), None) => format!("must be at least {min}"),
            (None, Some(max)) => format!("must be at most {max}"),
            (None, None) => "is out of range".into(),
        },
        "length" => match (param("min"), param("max"), param("equal")) {
            (_, _, Some(equal)) => format!("must be exactly {equal} characters long"),
            (Some(min), Some(max), _) if min == "1" => {
                format!("must not be empty and be at most {max} characters")
            }
            (Some(min), Some(max), _) => format!("must be {min} to {max} characters long"),
            (Some(min), None, _) if min == "1" => "must not be empty".into(),
            (Some(min), None, _) => format!("must be at least {min} characters long"),
            (None, Some(max), _) => format!("must be at most {max} characters long"),
            _ => "has the wrong length".into(),
        },
        "email" => "must be an email address".into(),
        "required" => "is required".into(),
        other => format!("is invalid ({other})"),
    }
}

fn invalid(code: &'static str, message: impl Into<Cow<'static, str>>) -> ValidationError {
    ValidationError::new(code).with_message(message.into())
}

/// `[a-z_][a-z0-9_]*` or empty: safe to put in front of a module name to make a role name.
pub(crate) fn identifier_prefix(prefix: &str) -> Result<(), ValidationError> {
    let ok = prefix.len() <= 24
        && prefix
            .chars()
            .enumerate()
            .all(|(i, c)| c.is_ascii_lowercase() || c == '_' || (i > 0 && c.is_ascii_digit()));
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "invalid_format",
            "must be at most 24 characters of a-z, 0-9 and _, not starting with a digit",
        ))
    }
}

pub(crate) fn log_filter(filter: &str) -> Result<(), ValidationError> {
    tracing_subscriber::EnvFilter::builder()
        .parse(filter)
        .map(|_| ())
        .map_err(|e| invalid("invalid_format", format!("is not a tracing filter: {e}")))
}

pub(crate) fn otlp_endpoint(url: &str) -> Result<(), ValidationError> {
    if url.is_empty() || has_host("http://", url) || has_host("https://", url) {
        Ok(())
    } else {
        Err(invalid(
            "invalid_format",
            "must be empty (no export) or an http:// or https:// URL such as \
             http://collector:4318/v1/traces",
        ))
    }
}

/// The key set URL: `http://` or `https://` (whether production takes `http://` is a rule
/// across keys, see `Settings::check_auth`), without credentials.
pub(crate) fn jwks_url(url: &str) -> Result<(), ValidationError> {
    if (has_host("http://", url) || has_host("https://", url)) && !url.contains('@') {
        Ok(())
    } else {
        Err(invalid(
            "invalid_format",
            "must be the identity provider's JWK set URL, https://host/path (or http://), \
             without credentials",
        ))
    }
}

/// Whether `url` is `scheme` followed by something.
fn has_host(scheme: &str, url: &str) -> bool {
    url.strip_prefix(scheme)
        .is_some_and(|rest| !rest.is_empty())
}

pub(crate) fn redis_url(url: &str) -> Result<(), ValidationError> {
    let ok = url.starts_with("redis://") && !url.contains('@');
    if url.starts_with("rediss://") {
        Err(invalid(
            "unsupported",
            "rediss:// (TLS) is not supported by this build: reach Redis over redis:// on a \
             private network, or through a TLS tunnel (a sidecar) listening on localhost",
        ))
    } else if ok {
        Ok(())
    } else {
        Err(invalid(
            "invalid_format",
            "must be redis://host:port/db without credentials (the user goes in bus.redis.username, the password in APP__BUS__REDIS__PASSWORD)",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use validator::Validate;

    #[derive(Validate)]
    struct Line {
        #[validate(range(min = 1, max = 5))]
        quantity: i64,
    }

    #[derive(Validate)]
    struct Order {
        #[validate(length(min = 1, max = 3))]
        name: String,
        #[validate(nested)]
        lines: Vec<Line>,
    }

    #[test]
    fn nested_errors_get_dotted_and_indexed_paths() {
        let order = Order {
            name: String::new(),
            lines: vec![Line { quantity: 1 }, Line { quantity: 9 }],
        };
        let errors = flatten_validation_errors(&order.validate().expect_err("invalid"));
        let paths: Vec<_> = errors.iter().map(|(p, _)| p.to_owned()).collect();
        assert_eq!(paths, ["lines[1].quantity", "name"]);
        let messages: Vec<_> = errors.iter().map(|(_, e)| e.message.clone()).collect();
        assert_eq!(
            messages,
            [
                "must be between 1 and 5",
                "must not be empty and be at most 3 characters"
            ]
        );
    }

    #[test]
    fn role_prefixes_are_identifiers() {
        for ok in ["", "shop_", "a1_"] {
            assert!(identifier_prefix(ok).is_ok(), "{ok}");
        }
        for bad in ["Shop", "1a", "a-b", "a b"] {
            assert!(identifier_prefix(bad).is_err(), "{bad}");
        }
    }
}
