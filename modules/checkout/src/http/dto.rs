//! Checkout's request and response bodies: the shapes its routes accept and answer. A
//! body becomes its domain value in one step ([`FromBody`]), through the kernel's and the
//! domain's constructors, with every broken rule named.

use kernel::{FieldErrors, Quantity, Sku};
use module_api::{ApiError, FromBody, checks};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use validator::Validate;

use crate::domain::{
    self, Address, NewOrder, Order, add_item, address_line2, address_text, item_count,
};

#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
pub(crate) struct ItemBody {
    #[schema(required = true, example = "TEA-1")]
    sku: Option<String>,
    #[schema(required = true, example = 2)]
    quantity: Option<i64>,
}

/// Each line 1 to 200 characters, not blank (the city 100, the postal code 20).
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
pub(crate) struct AddressBody {
    #[schema(required = true)]
    name: Option<String>,
    #[schema(required = true)]
    line1: Option<String>,
    line2: Option<String>,
    #[schema(required = true)]
    city: Option<String>,
    #[schema(required = true)]
    postal_code: Option<String>,
    /// ISO 3166-1 alpha-2, upper case.
    #[schema(required = true, example = "GB")]
    country: Option<String>,
}

#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
pub(crate) struct PlaceOrderBody {
    /// At most 254 characters.
    #[schema(required = true, example = "ada@example.com")]
    customer_email: Option<String>,
    /// 1 to 100 items, one per sku.
    #[schema(required = true)]
    items: Option<Vec<ItemBody>>,
    #[schema(required = true)]
    shipping_address: Option<AddressBody>,
    /// The payment provider's token; the simulator declines `tok_decline`.
    #[schema(required = true, example = "tok_visa")]
    payment_token: Option<String>,
}

/// An order as a body asks for it, before it is known whose it is.
#[derive(Debug)]
pub(crate) struct OrderRequest {
    /// SHA-256 of the body's canonical JSON: what an `Idempotency-Key` is bound to.
    pub(crate) fingerprint: String,
    customer_email: String,
    items: Vec<(Sku, Quantity)>,
    shipping_address: Address,
    payment_token: String,
}

impl OrderRequest {
    /// The order, placed by the customer the token names.
    pub(crate) fn for_customer(self, customer_id: String) -> NewOrder {
        NewOrder {
            customer_id,
            customer_email: self.customer_email,
            items: self.items,
            shipping_address: self.shipping_address,
            payment_token: self.payment_token,
        }
    }
}

fn fingerprint(body: &PlaceOrderBody) -> String {
    let canonical = serde_json::to_vec(body).unwrap_or_default();
    Sha256::digest(&canonical)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn address(e: &mut FieldErrors, a: AddressBody) -> Option<Address> {
    let p = "shipping_address";
    let mut text = |field: &str, value: Option<String>, max: usize| {
        let path = format!("{p}.{field}");
        e.required(&path, value)
            .and_then(|v| e.check(path, address_text(&v, max)))
    };
    let name = text("name", a.name, 200);
    let line1 = text("line1", a.line1, 200);
    let city = text("city", a.city, 100);
    let postal_code = text("postal_code", a.postal_code, 20);
    // Outer: sent; inner: the check passed (a blank line is no line).
    let line2 = a
        .line2
        .map(|l| e.check(format!("{p}.line2"), address_line2(&l)));
    let country = e
        .required(format!("{p}.country"), a.country)
        .and_then(|c| e.check(format!("{p}.country"), domain::country(&c)));
    Some(Address {
        name: name?,
        line1: line1?,
        line2: line2.unwrap_or(Some(None))?,
        city: city?,
        postal_code: postal_code?,
        country: country?,
    })
}

impl FromBody for OrderRequest {
    type Body = PlaceOrderBody;

    fn from_body(body: PlaceOrderBody, mut e: FieldErrors) -> Result<Self, ApiError> {
        let fingerprint = fingerprint(&body);
        let email = e
            .required("customer_email", body.customer_email)
            .and_then(|m| e.check("customer_email", domain::email(&m)));
        let token = e
            .required("payment_token", body.payment_token)
            .and_then(|t| e.check("payment_token", domain::payment_token(&t)));
        let asked = e.required("items", body.items).unwrap_or_default();
        let mut items = Vec::with_capacity(asked.len());
        if let Some(n) = e.check("items", item_count(asked.len())) {
            for (i, item) in asked.into_iter().enumerate().take(n) {
                let path = format!("items[{i}].sku");
                let sku = e
                    .required(&path, item.sku)
                    .and_then(|s| e.check(path.clone(), Sku::parse(&s)));
                let quantity_path = format!("items[{i}].quantity");
                let quantity = e
                    .required(&quantity_path, item.quantity)
                    .and_then(|q| e.check(quantity_path, Quantity::new(q)));
                if let (Some(sku), Some(quantity)) = (sku, quantity) {
                    e.check(path, add_item(&mut items, sku, quantity));
                }
            }
        }
        let shipping_address = e
            .required("shipping_address", body.shipping_address)
            .and_then(|a| address(&mut e, a));
        match (email, token, shipping_address) {
            (Some(customer_email), Some(payment_token), Some(shipping_address)) if e.is_empty() => {
                Ok(OrderRequest {
                    fingerprint,
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
