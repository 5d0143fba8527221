//! Catalog's request and response bodies: the shapes its routes accept and answer. Every
//! field of a request is optional at the type level so that a missing field is reported
//! with the others.

use kernel::{Currency, FieldErrors, Money, Quantity, Sku, StockLevel};
use runtime::http::{ApiError, checks};
use serde::{Deserialize, Deserializer, Serialize};
use validator::{Validate, ValidationError};

use crate::domain::{DESCRIPTION_MAX_CHARS, NewProduct, Product, ProductChanges, ProductName};

fn product_name(raw: &str) -> Result<(), ValidationError> {
    ProductName::parse(raw).map(|_| ()).map_err(|e| {
        ValidationError::new(kernel::ErrorCode::code(&e)).with_message(e.to_string().into())
    })
}

#[derive(Debug, Deserialize, Validate, utoipa::ToSchema)]
pub(crate) struct CreateProductBody {
    /// Upper-case letters, digits and dashes, such as `TEA-1`.
    #[schema(required = true, example = "TEA-1")]
    #[validate(required, custom(function = "checks::sku"))]
    sku: Option<String>,
    #[schema(required = true, example = "Green tea")]
    #[validate(required, custom(function = "product_name"))]
    name: Option<String>,
    #[validate(length(max = 2000, message = "must be at most 2000 characters"))]
    description: Option<String>,
    /// Minor units of `currency` (cents).
    #[schema(required = true, example = 450)]
    #[validate(required, custom(function = "checks::amount_minor"))]
    price_minor: Option<i64>,
    /// ISO 4217.
    #[schema(required = true, example = "EUR")]
    #[validate(required, custom(function = "checks::currency"))]
    currency: Option<String>,
    #[schema(required = true, example = 10)]
    #[validate(required, custom(function = "checks::stock_level"))]
    initial_stock: Option<i64>,
}

const _: () = assert!(DESCRIPTION_MAX_CHARS == 2000);

/// Builds the domain value again from checked fields; the rules live in the kernel and the
/// domain, the checks above only call them, so this cannot fail where they passed.
fn required<T>(errors: &mut FieldErrors, path: &str, value: Option<T>) -> Option<T> {
    if value.is_none() {
        errors.add(path, "required", "is required");
    }
    value
}

impl CreateProductBody {
    pub(crate) fn into_new_product(self) -> Result<NewProduct, ApiError> {
        let mut e = FieldErrors::new();
        let sku = required(&mut e, "sku", self.sku).and_then(|s| e.check("sku", Sku::parse(&s)));
        let name = required(&mut e, "name", self.name)
            .and_then(|n| e.check("name", ProductName::parse(&n)));
        let currency = required(&mut e, "currency", self.currency)
            .and_then(|c| e.check("currency", Currency::parse(&c)));
        let minor = required(&mut e, "price_minor", self.price_minor);
        let price = match (minor, currency) {
            (Some(m), Some(c)) => e.check("price_minor", Money::new(m, c)),
            _ => None,
        };
        let stock = required(&mut e, "initial_stock", self.initial_stock)
            .and_then(|s| e.check("initial_stock", StockLevel::new(s)));
        match (sku, name, price, stock) {
            (Some(sku), Some(name), Some(price), Some(initial_stock)) if e.is_empty() => {
                Ok(NewProduct {
                    sku,
                    name,
                    description: self.description,
                    price,
                    initial_stock,
                })
            }
            _ => Err(ApiError::invalid(e)),
        }
    }
}

/// Tells a field sent as `null` (`Some(None)`) from a field left out (`None`).
fn nullable<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

fn unchangeable(_: &serde_json::Value) -> Result<(), ValidationError> {
    Err(ValidationError::new("read_only").with_message("cannot be changed".into()))
}

/// The fields to change; at least one. `sku` and `currency` cannot change.
#[derive(Debug, Deserialize, Validate, utoipa::ToSchema)]
pub(crate) struct PatchProductBody {
    #[validate(custom(function = "product_name"))]
    name: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    #[validate(length(max = 2000, message = "must be at most 2000 characters"))]
    description: Option<Option<String>>,
    #[validate(custom(function = "checks::amount_minor"))]
    price_minor: Option<i64>,
    #[schema(value_type = Option<String>)]
    #[validate(custom(function = "unchangeable"))]
    sku: Option<serde_json::Value>,
    #[schema(value_type = Option<String>)]
    #[validate(custom(function = "unchangeable"))]
    currency: Option<serde_json::Value>,
}

impl PatchProductBody {
    pub(crate) fn into_changes(self) -> Result<ProductChanges, ApiError> {
        let mut e = FieldErrors::new();
        let name = self
            .name
            .and_then(|n| e.check("name", ProductName::parse(&n)));
        e.into_result().map_err(ApiError::invalid)?;
        let changes = ProductChanges {
            name,
            description: self.description,
            price_minor: self.price_minor,
        };
        if changes.is_empty() {
            return Err(ApiError::bad_request(
                "nothing_to_change",
                "send at least one of name, description, price_minor",
            ));
        }
        Ok(changes)
    }
}

#[derive(Debug, Deserialize, Validate, utoipa::ToSchema)]
pub(crate) struct RestockBody {
    #[schema(required = true, example = 5)]
    #[validate(required, custom(function = "checks::quantity"))]
    quantity: Option<i64>,
}

impl RestockBody {
    pub(crate) fn into_quantity(self) -> Result<Quantity, ApiError> {
        let mut e = FieldErrors::new();
        let quantity = required(&mut e, "quantity", self.quantity)
            .and_then(|q| e.check("quantity", Quantity::new(q)));
        quantity.ok_or_else(|| ApiError::invalid(e))
    }
}

#[derive(Debug, Deserialize, Validate, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListQuery {
    #[validate(range(min = 1, max = 100))]
    pub(crate) limit: Option<u64>,
    #[validate(custom(function = "checks::sku"))]
    pub(crate) after: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct ProductView {
    sku: String,
    name: String,
    description: Option<String>,
    price_minor: i64,
    currency: String,
    /// Units in stock and not held by an order.
    available: i64,
}

impl From<Product> for ProductView {
    fn from(p: Product) -> Self {
        Self {
            sku: p.sku.to_string(),
            name: p.name.as_str().to_owned(),
            description: p.description,
            price_minor: p.price.minor(),
            currency: p.price.currency().to_string(),
            available: p.available,
        }
    }
}

/// A page of products by sku; `next_after` continues it (null at the end).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct PageView {
    pub(crate) items: Vec<ProductView>,
    pub(crate) next_after: Option<String>,
}

/// A sku from the path, named `sku` when it is not one.
pub(crate) fn sku_param(raw: &str) -> Result<Sku, ApiError> {
    Sku::parse(raw).map_err(|err| {
        let mut e = FieldErrors::new();
        e.check::<(), _>("sku", Err(err));
        ApiError::invalid(e)
    })
}
