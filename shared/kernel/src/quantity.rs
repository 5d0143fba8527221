//! Quantities: how many units of a product are ordered, restocked or held.

use crate::errors::ErrorCode;
use serde::{Deserialize, Serialize};

/// A positive count of units in one order line or one restock: 1 to 1,000,000.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "i64")]
pub struct Quantity(u32);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    #[error("must be at least {min}")]
    TooSmall { min: i64 },
    #[error("must be at most {max}")]
    TooLarge { max: i64 },
}

impl ErrorCode for QuantityError {
    fn code(&self) -> &'static str {
        "out_of_range"
    }
}

impl Quantity {
    pub const MAX: i64 = 1_000_000;

    pub fn new(raw: i64) -> Result<Self, QuantityError> {
        if raw < 1 {
            return Err(QuantityError::TooSmall { min: 1 });
        }
        if raw > Self::MAX {
            return Err(QuantityError::TooLarge { max: Self::MAX });
        }
        Ok(Self(raw as u32))
    }

    pub fn get(self) -> i64 {
        i64::from(self.0)
    }
}

impl TryFrom<i64> for Quantity {
    type Error = QuantityError;
    fn try_from(raw: i64) -> Result<Self, Self::Error> {
        Quantity::new(raw)
    }
}

impl From<Quantity> for i64 {
    fn from(q: Quantity) -> i64 {
        q.get()
    }
}

impl std::fmt::Display for Quantity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Units on hand for a product: 0 to 1,000,000,000.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "i64")]
pub struct StockLevel(i64);

impl StockLevel {
    pub const MAX: i64 = 1_000_000_000;

    pub fn new(raw: i64) -> Result<Self, QuantityError> {
        if raw < 0 {
            return Err(QuantityError::TooSmall { min: 0 });
        }
        if raw > Self::MAX {
            return Err(QuantityError::TooLarge { max: Self::MAX });
        }
        Ok(Self(raw))
    }

    pub fn get(self) -> i64 {
        self.0
    }
}

impl TryFrom<i64> for StockLevel {
    type Error = QuantityError;
    fn try_from(raw: i64) -> Result<Self, Self::Error> {
        StockLevel::new(raw)
    }
}

impl From<StockLevel> for i64 {
    fn from(s: StockLevel) -> i64 {
        s.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantity_bounds() {
        let cases = [
            (i64::MIN, false),
            (-1, false),
            (0, false),
            (1, true),
            (Quantity::MAX, true),
            (Quantity::MAX + 1, false),
            (i64::MAX, false),
        ];
        for (raw, ok) in cases {
            assert_eq!(Quantity::new(raw).is_ok(), ok, "{raw}");
        }
    }

    #[test]
    fn stock_level_allows_zero_but_not_negative() {
        assert_eq!(StockLevel::new(0).map(StockLevel::get), Ok(0));
        assert_eq!(StockLevel::new(-1), Err(QuantityError::TooSmall { min: 0 }));
        assert_eq!(
            StockLevel::new(StockLevel::MAX + 1),
            Err(QuantityError::TooLarge {
                max: StockLevel::MAX
            })
        );
    }

    #[test]
    fn deserializing_validates() {
        assert!(serde_json::from_str::<Quantity>("3").is_ok());
        assert!(serde_json::from_str::<Quantity>("0").is_err());
    }
}
