//! Stock keeping unit: the catalog's public key for a product.

use crate::errors::ErrorCode;
use serde::{Deserialize, Serialize};

/// 1 to 64 characters: ASCII letters, digits, `-`, `_` and `.`, starting with a letter or
/// digit. Case is kept as given and is significant.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Sku(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SkuError {
    #[error("must not be empty")]
    Empty,
    #[error("must be at most {max} characters", max = Sku::MAX_LEN)]
    TooLong,
    #[error("must start with a letter or digit and contain only letters, digits, '-', '_' and '.'")]
    InvalidCharacters,
}

impl ErrorCode for SkuError {
    fn code(&self) -> &'static str {
        match self {
            SkuError::Empty => "required",
            SkuError::TooLong => "too_long",
            SkuError::InvalidCharacters => "invalid_format",
        }
    }
}

impl Sku {
    pub const MAX_LEN: usize = 64;

    pub fn parse(raw: &str) -> Result<Self, SkuError> {
        if raw.is_empty() {
            return Err(SkuError::Empty);
        }
        if raw.len() > Self::MAX_LEN {
            return Err(SkuError::TooLong);
        }
        let mut chars = raw.chars();
        let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
        if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
            return Err(SkuError::InvalidCharacters);
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Sku {
    type Error = SkuError;
    fn try_from(raw: String) -> Result<Self, Self::Error> {
        Sku::parse(&raw)
    }
}

impl From<Sku> for String {
    fn from(sku: Sku) -> String {
        sku.0
    }
}

impl std::fmt::Display for Sku {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_letters_digits_and_separators() {
        for ok in ["A", "9", "SKU-1", "tea_green.500g", &"x".repeat(64)] {
            assert_eq!(
                Sku::parse(ok).map(|s| s.to_string()),
                Ok(ok.to_owned()),
                "{ok}"
            );
        }
    }

    #[test]
    fn refuses_empty_long_and_odd_characters() {
        let cases = [
            ("", SkuError::Empty),
            (&*"x".repeat(65), SkuError::TooLong),
            ("-lead", SkuError::InvalidCharacters),
            ("has space", SkuError::InvalidCharacters),
            ("ünï", SkuError::InvalidCharacters),
            ("a/b", SkuError::InvalidCharacters),
        ];
        for (raw, expected) in cases {
            assert_eq!(Sku::parse(raw), Err(expected), "{raw:?}");
        }
    }

    #[test]
    fn deserializing_validates() {
        assert!(serde_json::from_str::<Sku>("\"ok-1\"").is_ok());
        assert!(serde_json::from_str::<Sku>("\"not ok\"").is_err());
    }
}
