//! The custom checks of the settings (role prefixes, log filters, endpoint and key-set
//! URLs); the reports are flattened into field errors by `module_api::flatten_validation_errors`.

use std::borrow::Cow;

use validator::ValidationError;

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
