//! Products: what a valid product and a valid change look like.

use kernel::{Currency, Money, Sku, StockLevel};

/// A product as the catalog shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Product {
    pub(crate) sku: Sku,
    pub(crate) name: ProductName,
    pub(crate) description: Option<String>,
    pub(crate) price: Money,
    /// Units on hand that no reservation holds.
    pub(crate) available: i64,
    pub(crate) version: i64,
}

/// 1 to 200 characters, not only spaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ProductName(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum NameError {
    #[error("must not be blank")]
    Blank,
    #[error("must be at most {max} characters", max = ProductName::MAX_CHARS)]
    TooLong,
}

impl kernel::ErrorCode for NameError {
    fn code(&self) -> &'static str {
        match self {
            NameError::Blank => "required",
            NameError::TooLong => "too_long",
        }
    }
}

impl ProductName {
    pub(crate) const MAX_CHARS: usize = 200;

    pub(crate) fn parse(raw: &str) -> Result<Self, NameError> {
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err(NameError::Blank);
        }
        if trimmed.chars().count() > Self::MAX_CHARS {
            return Err(NameError::TooLong);
        }
        Ok(Self(trimmed.to_owned()))
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

/// The longest description kept, in characters.
pub(crate) const DESCRIPTION_MAX_CHARS: usize = 2000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DescriptionError {
    #[error("must be at most {DESCRIPTION_MAX_CHARS} characters")]
    TooLong,
}

impl kernel::ErrorCode for DescriptionError {
    fn code(&self) -> &'static str {
        "too_long"
    }
}

/// A description as given, if it fits.
pub(crate) fn description(raw: String) -> Result<String, DescriptionError> {
    if raw.chars().count() > DESCRIPTION_MAX_CHARS {
        return Err(DescriptionError::TooLong);
    }
    Ok(raw)
}

/// A product to add to the catalog.
#[derive(Debug, Clone)]
pub(crate) struct NewProduct {
    pub(crate) sku: Sku,
    pub(crate) name: ProductName,
    pub(crate) description: Option<String>,
    pub(crate) price: Money,
    pub(crate) initial_stock: StockLevel,
}

/// A change to a product; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub(crate) struct ProductChanges {
    pub(crate) name: Option<ProductName>,
    /// `Some(None)` clears the description.
    pub(crate) description: Option<Option<String>>,
    /// A new price in the product's own currency.
    pub(crate) price_minor: Option<i64>,
}

impl ProductChanges {
    pub(crate) fn is_empty(&self) -> bool {
        self.name.is_none() && self.description.is_none() && self.price_minor.is_none()
    }
}

/// Checks the currency of a new price against the product's.
pub(crate) fn reprice(current: Money, new_minor: i64) -> Result<Money, kernel::MoneyError> {
    Money::new(new_minor, current.currency())
}

/// Builds the money value of a stored row.
pub(crate) fn stored_price(minor: i64, currency: &str) -> anyhow::Result<Money> {
    let currency = Currency::parse(currency)
        .map_err(|e| anyhow::anyhow!("stored currency {currency:?} is invalid: {e}"))?;
    Money::new(minor, currency).map_err(|e| anyhow::anyhow!("stored price {minor} is invalid: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_trimmed_and_bounded() {
        assert_eq!(
            ProductName::parse("  Tea ").map(|n| n.as_str().to_owned()),
            Ok("Tea".into())
        );
        assert_eq!(ProductName::parse("   "), Err(NameError::Blank));
        assert_eq!(
            ProductName::parse(&"é".repeat(200)).map(|n| n.as_str().chars().count()),
            Ok(200)
        );
        assert_eq!(
            ProductName::parse(&"é".repeat(201)),
            Err(NameError::TooLong)
        );
    }

    #[test]
    fn descriptions_are_bounded_in_characters() {
        assert_eq!(description("é".repeat(2000)).map(|d| d.len()), Ok(4000));
        assert_eq!(
            description("é".repeat(2001)),
            Err(DescriptionError::TooLong)
        );
        assert_eq!(description(String::new()), Ok(String::new()));
    }

    #[test]
    fn an_empty_change_is_recognised() {
        assert!(ProductChanges::default().is_empty());
        let change = ProductChanges {
            description: Some(None),
            ..Default::default()
        };
        assert!(!change.is_empty());
    }
}
