//! Field-level errors: every invalid field of an input is named, with a reason, at once.

use std::borrow::Cow;
use std::collections::BTreeMap;

/// Why one field of an input was refused.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FieldError {
    /// A short machine-readable code such as `required`, `invalid_type` or `out_of_range`.
    pub code: Cow<'static, str>,
    /// A sentence for humans.
    pub message: String,
}

/// Every refused field of one input, keyed by its path (`items[0].quantity`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldErrors(BTreeMap<String, FieldError>);

impl FieldErrors {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records an error for `path`; the first error recorded for a path is kept.
    pub fn add(
        &mut self,
        path: impl Into<String>,
        code: impl Into<Cow<'static, str>>,
        message: impl Into<String>,
    ) {
        self.0.entry(path.into()).or_insert_with(|| FieldError {
            code: code.into(),
            message: message.into(),
        });
    }

    /// Keeps the value of a successful parse, or records its error under `path`.
    pub fn check<T, E: std::fmt::Display + ErrorCode>(
        &mut self,
        path: impl Into<String>,
        result: Result<T, E>,
    ) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(error) => {
                self.add(path, error.code(), error.to_string());
                None
            }
        }
    }

    /// Keeps a value that was sent, or records `required` under `path` when it was not. A
    /// field already refused for its type (and so dropped) keeps that error instead.
    pub fn required<T>(&mut self, path: impl Into<String>, value: Option<T>) -> Option<T> {
        if value.is_none() {
            self.add(path, "required", "is required");
        }
        value
    }

    pub fn contains(&self, path: &str) -> bool {
        self.0.contains_key(path)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &FieldError)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// `Ok(())` when nothing was recorded, so a use case can return early with `?`.
    pub fn into_result(self) -> Result<(), FieldErrors> {
        if self.is_empty() { Ok(()) } else { Err(self) }
    }
}

impl serde::Serialize for FieldErrors {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl std::fmt::Display for FieldErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut first = true;
        for (path, error) in &self.0 {
            if !first {
                f.write_str("; ")?;
            }
            first = false;
            write!(f, "{path}: {}", error.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for FieldErrors {}

/// A validation error that knows its machine-readable code.
pub trait ErrorCode {
    fn code(&self) -> &'static str;
}
