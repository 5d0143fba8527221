//! Catalog's request and response bodies: the shapes its routes accept and answer. Every
//! field of a request is optional at the type level so that a missing field is reported
//! with the others; each body becomes its domain value in one step ([`FromBody`]), through
//! the kernel's and the domain's constructors, with every broken rule named.

use kernel::{Currency, FieldErrors, Money, Quantity, Sku, StockLevel};
use module_api::{ApiError, FromBody, checks};
use serde::{Deserialize, Deserializer, Serialize};
use validator::Validate;

use crate::domain::{NewProduct, Product, ProductChanges, ProductName, description};

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub(crate) struct CreateProductBody {
    /// Upper-case letters, digits and dashes, such as `TEA-1`.
    #[schema(required = true, example = "TEA-1")]
    sku: Option<String>,
    /// 1 to 200 characters, not only spaces.
    #[schema(required = true, example = "Green tea")]
    name: Option<String>,
    /// At most 2,000 characters.
    description: Option<String>,
    /// Minor units of `currency` (cents).
    #[schema(required = true, example = 450)]
    price_minor: Option<i64>,
    /// ISO 4217.
    #[schema(required = true, example = "EUR")]
    currency: Option<String>,
    #[schema(required = true, example = 10)]
    initial_stock: Option<i64>,
}

impl FromBody for NewProduct {
    type Body = CreateProductBody;

    fn from_body(body: CreateProductBody, mut e: FieldErrors) -> Result<Self, ApiError> {
        let sku = e
            .required("sku", body.sku)
            .and_then(|s| e.check("sku", Sku::parse(&s)));
        let name = e
            .required("name", body.name)
            .and_then(|n| e.check("name", ProductName::parse(&n)));
        let description = match body.description {
            Some(d) => e.check("description", description(d)).map(Some),
            None => Some(None),
        };
        let currency = e
            .required("currency", body.currency)
            .and_then(|c| e.check("currency", Currency::parse(&c)));
        let minor = e
            .required("price_minor", body.price_minor)
            .and_then(|m| e.check("price_minor", Money::check_minor(m)));
        let price = match (minor, currency) {
            (Some(m), Some(c)) => e.check("price_minor", Money::new(m, c)),
            _ => None,
        };
        let stock = e
            .required("initial_stock", body.initial_stock)
            .and_then(|s| e.check("initial_stock", StockLevel::new(s)));
        match (sku, name, description, price, stock) {
            (Some(sku), Some(name), Some(description), Some(price), Some(initial_stock))
                if e.is_empty() =>
            {
                Ok(NewProduct {
                    sku,
                    name,
                    description,
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

/// The fields to change; at least one. `sku` and `currency` cannot change.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub(crate) struct PatchProductBody {
    name: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    description: Option<Option<String>>,
    price_minor: Option<i64>,
    #[schema(value_type = Option<String>)]
    sku: Option<serde_json::Value>,
    #[schema(value_type = Option<String>)]
    currency: Option<serde_json::Value>,
}

impl FromBody for ProductChanges {
    type Body = PatchProductBody;

    fn from_body(body: PatchProductBody, mut e: FieldErrors) -> Result<Self, ApiError> {
        for (path, sent) in [("sku", &body.sku), ("currency", &body.currency)] {
            if sent.is_some() {
                e.add(path, "read_only", "cannot be changed");
            }
        }
        let name = body
            .name
            .and_then(|n| e.check("name", ProductName::parse(&n)));
        let description = body
            .description
            .map(|d| d.map(|d| e.check("description", description(d))));
        let price_minor = body
            .price_minor
            .and_then(|m| e.check("price_minor", Money::check_minor(m)));
        e.into_result().map_err(ApiError::invalid)?;
        let changes = ProductChanges {
            name,
            // Checked above: a description that broke a rule was named, and `e` is empty.
            description: description.map(Option::flatten),
            price_minor,
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

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub(crate) struct RestockBody {
    #[schema(required = true, example = 5)]
    quantity: Option<i64>,
}

/// Units to add to a product's stock.
#[derive(Debug)]
pub(crate) struct Restock(pub(crate) Quantity);

impl FromBody for Restock {
    type Body = RestockBody;

    fn from_body(body: RestockBody, mut e: FieldErrors) -> Result<Self, ApiError> {
        let quantity = e
            .required("quantity", body.quantity)
            .and_then(|q| e.check("quantity", Quantity::new(q)));
        match quantity {
            Some(q) if e.is_empty() => Ok(Restock(q)),
            _ => Err(ApiError::invalid(e)),
        }
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
