//! Checkout's request and response bodies: the shapes its routes accept and answer.

use kernel::{FieldErrors, Quantity, Sku};
use runtime::http::{ApiError, checks};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use validator::{Validate, ValidationError};

use crate::domain::{Address, NewOrder, Order};

fn country_code(raw: &str) -> Result<(), ValidationError> {
    if raw.len() == 2 && raw.bytes().all(|b| b.is_ascii_uppercase()) {
        Ok(())
    } else {
        Err(ValidationError::new("invalid_format")
            .with_message("must be an ISO 3166-1 alpha-2 code such as GB".into()))
    }
}

fn not_blank(raw: &str) -> Result<(), ValidationError> {
    if raw.trim().is_empty() {
        Err(ValidationError::new("required").with_message("must not be blank".into()))
    } else {
        Ok(())
    }
}

#[derive(Debug, Deserialize, Serialize, Validate, utoipa::ToSchema)]
pub(crate) struct ItemBody {
    #[schema(required = true, example = "TEA-1")]
    #[validate(required, custom(function = "checks::sku"))]
    sku: Option<String>,
    #[schema(required = true, example = 2)]
    #[validate(required, custom(function = "checks::quantity"))]
    quantity: Option<i64>,
}

#[derive(Debug, Deserialize, Serialize, Validate, utoipa::ToSchema)]
pub(crate) struct AddressBody {
    #[schema(required = true)]
    #[validate(required, length(min = 1, max = 200), custom(function = "not_blank"))]
    name: Option<String>,
    #[schema(required = true)]
    #[validate(required, length(min = 1, max = 200), custom(function = "not_blank"))]
    line1: Option<String>,
    #[validate(length(max = 200))]
    line2: Option<String>,
    #[schema(required = true)]
    #[validate(required, length(min = 1, max = 100), custom(function = "not_blank"))]
    city: Option<String>,
    #[schema(required = true)]
    #[validate(required, length(min = 1, max = 20), custom(function = "not_blank"))]
    postal_code: Option<String>,
    /// ISO 3166-1 alpha-2, upper case.
    #[schema(required = true, example = "GB")]
    #[validate(required, custom(function = "country_code"))]
    country: Option<String>,
}

#[derive(Debug, Deserialize, Serialize, Validate, utoipa::ToSchema)]
pub(crate) struct PlaceOrderBody {
    #[schema(required = true, example = "ada@example.com")]
    #[validate(required, email, length(max = 254))]
    customer_email: Option<String>,
    #[schema(required = true)]
    #[validate(
        required,
        length(min = 1, max = 100, message = "must hold 1 to 100 items"),
        nested
    )]
    items: Option<Vec<ItemBody>>,
    #[schema(required = true)]
    #[validate(required, nested)]
    shipping_address: Option<AddressBody>,
    /// The payment provider's token; the simulator declines `tok_decline`.
    #[schema(required = true, example = "tok_visa")]
    #[validate(required, length(min = 1, max = 200), custom(function = "not_blank"))]
    payment_token: Option<String>,
}

fn required<T>(errors: &mut FieldErrors, path: &str, value: Option<T>) -> Option<T> {
    if value.is_none() {
        errors.add(path, "required", "is required");
    }
    value
}

impl PlaceOrderBody {
    /// SHA-256 of the body's canonical JSON: what an `Idempotency-Key` is bound to.
    pub(crate) fn fingerprint(&self) -> String {
        let canonical = serde_json::to_vec(self).unwrap_or_default();
        Sha256::digest(&canonical)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    pub(crate) fn into_command(self, customer_id: String) -> Result<NewOrder, ApiError> {
        let mut e = FieldErrors::new();
        let email = required(&mut e, "customer_email", self.customer_email);
        let token = required(&mut e, "payment_token", self.payment_token);
        let mut items = Vec::new();
        for (i, item) in required(&mut e, "items", self.items)
            .unwrap_or_default()
            .into_iter()
            .enumerate()
        {
            let sku = required(&mut e, &format!("items[{i}].sku"), item.sku)
                .and_then(|s| e.check(format!("items[{i}].sku"), Sku::parse(&s)));
            let quantity = required(&mut e, &format!("items[{i}].quantity"), item.quantity)
                .and_then(|q| e.check(format!("items[{i}].quantity"), Quantity::new(q)));
            if let (Some(sku), Some(quantity)) = (sku, quantity) {
                if items.iter().any(|(s, _): &(Sku, Quantity)| *s == sku) {
                    e.add(
                        format!("items[{i}].sku"),
                        "duplicate",
                        format!("{sku} appears more than once"),
                    );
                } else {
                    items.push((sku, quantity));
                }
            }
        }
        let address = required(&mut e, "shipping_address", self.shipping_address).and_then(|a| {
            let p = "shipping_address";
            Some(Address {
                name: required(&mut e, &format!("{p}.name"), a.name)?
                    .trim()
                    .to_owned(),
                line1: required(&mut e, &format!("{p}.line1"), a.line1)?
                    .trim()
                    .to_owned(),
                line2: a
                    .line2
                    .map(|l| l.trim().to_owned())
                    .filter(|l| !l.is_empty()),
                city: required(&mut e, &format!("{p}.city"), a.city)?
                    .trim()
                    .to_owned(),
                postal_code: required(&mut e, &format!("{p}.postal_code"), a.postal_code)?
                    .trim()
                    .to_owned(),
                country: required(&mut e, &format!("{p}.country"), a.country)?,
            })
        });
        match (email, token, address) {
            (Some(customer_email), Some(payment_token), Some(shipping_address)) if e.is_empty() => {
                Ok(NewOrder {
                    customer_id,
                    customer_email,
                    items,
                    shipping_address,
                    payment_token,
                })
            }
            _ => Err(ApiError::invalid(e)),
        }
    }
}

/// `GET /orders?limit=&after=`.
#[derive(Debug, Deserialize, Validate, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListQuery {
    #[validate(range(min = 1, max = 100))]
    pub(crate) limit: Option<u64>,
    #[validate(custom(function = "checks::uuid_text"))]
    pub(crate) after: Option<String>,
}

/// A page of orders: `{items, next_after}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct PageView {
    pub(crate) items: Vec<OrderView>,
    pub(crate) next_after: Option<uuid::Uuid>,
}

/// The `Idempotency-Key` header, checked.
pub(crate) fn idempotency_key(
    raw: Option<&actix_web::http::header::HeaderValue>,
) -> Result<Option<String>, ApiError> {
    let Some(raw) = raw else { return Ok(None) };
    let valid = raw
        .to_str()
        .ok()
        .filter(|k| !k.is_empty() && k.len() <= 255 && k.bytes().all(|b| b.is_ascii_graphic()));
    match valid {
        Some(key) => Ok(Some(key.to_owned())),
        None => {
            let mut e = FieldErrors::new();
            e.add(
                "Idempotency-Key",
                "invalid_format",
                "must be 1 to 255 visible ASCII characters",
            );
            Err(ApiError::invalid(e))
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct LineView {
    sku: String,
    quantity: i64,
    unit_price_minor: i64,
    line_total_minor: i64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct OrderView {
    id: uuid::Uuid,
    /// Who placed it: the `sub` of their token.
    customer_id: String,
    /// pending, confirmed, rejected, cancelled, shipped or delivered.
    #[schema(value_type = String)]
    status: &'static str,
    /// out_of_stock, payment_declined, cancelled_by_customer, or null.
    status_reason: Option<String>,
    total_minor: i64,
    currency: String,
    lines: Vec<LineView>,
    customer_email: String,
    shipping_address: Address,
    created_at: chrono::DateTime<chrono::Utc>,
    updated_at: chrono::DateTime<chrono::Utc>,
}

impl From<Order> for OrderView {
    fn from(o: Order) -> Self {
        Self {
            id: o.id.as_uuid(),
            customer_id: o.customer_id,
            status: o.status.as_str(),
            status_reason: o.status_reason.map(|r| r.as_str().to_owned()),
            total_minor: o.total.minor(),
            currency: o.total.currency().to_string(),
            lines: o
                .lines
                .into_iter()
                .map(|l| LineView {
                    line_total_minor: l.unit_price.minor().saturating_mul(l.quantity.get()),
                    sku: l.sku.to_string(),
                    quantity: l.quantity.get(),
                    unit_price_minor: l.unit_price.minor(),
                })
                .collect(),
            customer_email: o.customer_email,
            shipping_address: o.shipping_address,
            created_at: o.created_at,
            updated_at: o.updated_at,
        }
    }
}
