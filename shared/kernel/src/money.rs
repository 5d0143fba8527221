//! Money: an integer amount of minor units (cents) and an ISO 4217 currency.
//! Floating point never touches an amount.

use crate::errors::ErrorCode;
use serde::{Deserialize, Serialize};

/// An ISO 4217 alphabetic currency code, such as `EUR`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Currency([u8; 3]);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CurrencyError {
    #[error("must be an ISO 4217 code of three upper-case letters, such as EUR")]
    Malformed,
    #[error("is not an ISO 4217 currency code")]
    Unknown,
}

impl ErrorCode for CurrencyError {
    fn code(&self) -> &'static str {
        match self {
            CurrencyError::Malformed => "invalid_format",
            CurrencyError::Unknown => "unknown_currency",
        }
    }
}

impl Currency {
    pub fn parse(raw: &str) -> Result<Self, CurrencyError> {
        let bytes: [u8; 3] = raw
            .as_bytes()
            .try_into()
            .map_err(|_| CurrencyError::Malformed)?;
        if !bytes.iter().all(u8::is_ascii_uppercase) {
            return Err(CurrencyError::Malformed);
        }
        if iso_currency::Currency::from_code(raw).is_none() {
            return Err(CurrencyError::Unknown);
        }
        Ok(Self(bytes))
    }

    pub fn as_str(&self) -> &str {
        // The bytes were checked to be ASCII upper-case letters when built.
        std::str::from_utf8(&self.0).unwrap_or("XXX")
    }
}

impl TryFrom<String> for Currency {
    type Error = CurrencyError;
    fn try_from(raw: String) -> Result<Self, Self::Error> {
        Currency::parse(&raw)
    }
}

impl From<Currency> for String {
    fn from(c: Currency) -> String {
        c.as_str().to_owned()
    }
}

impl std::fmt::Display for Currency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A non-negative amount in minor units of one currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Money {
    minor: i64,
    currency: Currency,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("must not be negative")]
    Negative,
    #[error("must be at most {max}", max = Money::MAX_MINOR)]
    TooLarge,
    #[error("cannot add {0} to {1}")]
    CurrencyMismatch(Currency, Currency),
    #[error("the amount overflows")]
    Overflow,
}

impl ErrorCode for MoneyError {
    fn code(&self) -> &'static str {
        match self {
            MoneyError::Negative | MoneyError::TooLarge | MoneyError::Overflow => "out_of_range",
            MoneyError::CurrencyMismatch(..) => "currency_mismatch",
        }
    }
}

impl Money {
    /// The largest amount accepted: a trillion major units of a two-decimal currency.
    pub const MAX_MINOR: i64 = 100_000_000_000_000;

    pub fn new(minor: i64, currency: Currency) -> Result<Self, MoneyError> {
        Self::check_minor(minor).map(|minor| Self { minor, currency })
    }

    /// An amount in minor units, checked as [`Money::new`] checks it, before its currency
    /// is known (the bounds do not depend on it).
    pub fn check_minor(minor: i64) -> Result<i64, MoneyError> {
        if minor < 0 {
            return Err(MoneyError::Negative);
        }
        if minor > Self::MAX_MINOR {
            return Err(MoneyError::TooLarge);
        }
        Ok(minor)
    }

    pub fn zero(currency: Currency) -> Self {
        Self { minor: 0, currency }
    }

    pub fn minor(&self) -> i64 {
        self.minor
    }

    pub fn currency(&self) -> Currency {
        self.currency
    }

    pub fn checked_add(self, other: Money) -> Result<Money, MoneyError> {
        if self.currency != other.currency {
            return Err(MoneyError::CurrencyMismatch(other.currency, self.currency));
        }
        let minor = self
            .minor
            .checked_add(other.minor)
            .ok_or(MoneyError::Overflow)?;
        Money::new(minor, self.currency).map_err(|_| MoneyError::Overflow)
    }

    pub fn checked_mul(self, factor: i64) -> Result<Money, MoneyError> {
        let minor = self.minor.checked_mul(factor).ok_or(MoneyError::Overflow)?;
        Money::new(minor, self.currency).map_err(|_| MoneyError::Overflow)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eur() -> Currency {
        Currency::parse("EUR").expect("EUR is a currency")
    }

    #[test]
    fn currency_accepts_iso_codes_only() {
        assert_eq!(
            Currency::parse("EUR").map(|c| c.to_string()),
            Ok("EUR".into())
        );
        assert_eq!(Currency::parse("eur"), Err(CurrencyError::Malformed));
        assert_eq!(Currency::parse("EURO"), Err(CurrencyError::Malformed));
        assert_eq!(Currency::parse(""), Err(CurrencyError::Malformed));
        assert_eq!(Currency::parse("ZZZ"), Err(CurrencyError::Unknown));
    }

    #[test]
    fn money_is_never_negative_nor_absurd() {
        assert_eq!(Money::new(-1, eur()), Err(MoneyError::Negative));
        assert_eq!(
            Money::new(Money::MAX_MINOR + 1, eur()),
            Err(MoneyError::TooLarge)
        );
        assert_eq!(Money::new(0, eur()).map(|m| m.minor()), Ok(0));
    }

    #[test]
    fn arithmetic_checks_currency_and_overflow() {
        let a = Money::new(250, eur()).expect("valid");
        let usd = Money::new(1, Currency::parse("USD").expect("USD")).expect("valid");
        assert_eq!(a.checked_add(a).map(|m| m.minor()), Ok(500));
        assert!(matches!(
            a.checked_add(usd),
            Err(MoneyError::CurrencyMismatch(..))
        ));
        assert_eq!(a.checked_mul(3).map(|m| m.minor()), Ok(750));
        assert_eq!(
            Money::new(Money::MAX_MINOR, eur())
                .expect("valid")
                .checked_mul(2),
            Err(MoneyError::Overflow)
        );
    }
}
