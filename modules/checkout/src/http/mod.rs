//! Checkout's routes, mounted under `/api/checkout`.

mod dto;
mod error;

use actix_web::{HttpRequest, HttpResponse, web};
use module_api::ErrorBody;
use module_api::{Access, Caller, RouteAccess};
use module_api::{ApiError, Origin, Parsed, ValidQuery, uuid_param};

use crate::use_cases::get_order::Viewer;
use crate::use_cases::place_order::{IdempotencyKey, Placed, Placements};
use crate::use_cases::{cancel_order, get_order, place_order, price_list};
use dto::{ListQuery, OrderRequest, OrderView, PageView, PlaceOrderBody, idempotency_key};
use module_api::Store;

const DEFAULT_PAGE: u64 = 20;

/// Checkout's routes, described for the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(place, list, get, cancel, price),
    components(schemas(PlaceOrderBody, OrderView, PageView, price_list::Price)),
    tags((name = "checkout", description = "Orders and payments"))
)]
pub(crate) struct ApiDoc;

/// Every route with who may call it. A customer's orders are theirs alone: another
/// customer's order answers 404, as if it did not exist. Staff read any order but place
/// and cancel none. The price list mirrors catalog's public prices.
pub(crate) fn routes(
    placements: Placements,
) -> impl Fn(&mut web::ServiceConfig) + Send + Sync + 'static {
    let store = web::Data::new(placements.store().clone());
    let placements = web::Data::new(placements);
    move |cfg| {
        cfg.app_data(store.clone())
            .app_data(placements.clone())
            .service(
                web::resource("/orders")
                    .route(web::post().to(place).allow(Access::Customer))
                    .route(web::get().to(list).allow(Access::CustomerOrStaff)),
            )
            .route(
                "/orders/{id}",
                web::get().to(get).allow(Access::CustomerOrStaff),
            )
            .route(
                "/orders/{id}/cancel",
                web::post().to(cancel).allow(Access::Customer),
            )
            .route("/prices/{sku}", web::get().to(price).allow(Access::Public));
    }
}

/// What a caller may see: staff everything, a customer their own orders.
fn viewer(caller: &Caller) -> Viewer<'_> {
    if caller.is_staff() {
        Viewer::Anyone
    } else {
        Viewer::Owner(&caller.subject)
    }
}

/// Places an order for the caller, priced from checkout's price list; 201 at once with
/// status `pending`. With an `Idempotency-Key`, the caller's same key and body give back the
/// same order.
#[utoipa::path(post, path = "/api/checkout/orders", tag = "checkout",
    request_body = PlaceOrderBody, security(("bearer" = [])),
    params(("Idempotency-Key" = Option<String>, Header, description = "1 to 255 visible ASCII characters")),
    responses(
        (status = 201, description = "placed (or replayed)", body = OrderView),
        (status = 400, description = "invalid fields, each named", body = ErrorBody),
        (status = 401, description = "no valid bearer token", body = ErrorBody),
        (status = 403, description = "not a customer", body = ErrorBody),
        (status = 422, description = "an unknown sku, mixed currencies, or a key reused with another body", body = ErrorBody),
    ))]
async fn place(
    placements: web::Data<Placements>,
    caller: Caller,
    origin: Origin,
    req: HttpRequest,
    Parsed(request): Parsed<OrderRequest>,
) -> Result<HttpResponse, ApiError> {
    let key = idempotency_key(req.headers().get("idempotency-key"))?;
    let key = key.map(|key| IdempotencyKey {
        key,
        request_hash: request.fingerprint.clone(),
    });
    let command = request.for_customer(caller.subject);
    let (order, replayed) =
        match place_order::place_order(&placements, &origin.0, command, key).await? {
            Placed::New(order) => (order, false),
            Placed::Replayed(order) => (order, true),
        };
    let mut response = HttpResponse::Created();
    response.insert_header(("Location", format!("/api/checkout/orders/{}", order.id)));
    if replayed {
        response.insert_header(("Idempotent-Replayed", "true"));
    }
    Ok(response.json(OrderView::from(order)))
}

/// One order: the caller's own, or any for staff (another customer's order is 404).
#[utoipa::path(get, path = "/api/checkout/orders/{id}", tag = "checkout",
    params(("id" = uuid::Uuid, Path, description = "the order's id")), security(("bearer" = [])),
    responses(
        (status = 200, description = "the order", body = OrderView),
        (status = 400, description = "not a UUID", body = ErrorBody),
        (status = 401, description = "no valid bearer token", body = ErrorBody),
        (status = 404, description = "no such order for this caller", body = ErrorBody),
    ))]
async fn get(
    store: web::Data<Store>,
    caller: Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = uuid_param("id", &id)?;
    let order = get_order::get_order(store.db(), viewer(&caller), id).await?;
    Ok(HttpResponse::Ok().json(OrderView::from(order)))
}

/// The caller's orders (staff: every order), oldest first, a page at a time.
#[utoipa::path(get, path = "/api/checkout/orders", tag = "checkout",
    params(ListQuery), security(("bearer" = [])),
    responses(
        (status = 200, description = "a page", body = PageView),
        (status = 400, description = "a bad limit or after", body = ErrorBody),
        (status = 401, description = "no valid bearer token", body = ErrorBody),
    ))]
async fn list(
    store: web::Data<Store>,
    caller: Caller,
    query: ValidQuery<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let query = query.0;
    let after = query
        .after
        .as_deref()
        .map(|a| uuid_param("after", a))
        .transpose()?;
    let limit = query.limit.unwrap_or(DEFAULT_PAGE);
    let (orders, next_after) =
        get_order::list_orders(store.db(), viewer(&caller), after, limit).await?;
    Ok(HttpResponse::Ok().json(PageView {
        items: orders.into_iter().map(OrderView::from).collect(),
        next_after,
    }))
}

/// Cancels the caller's order before it ships.
#[utoipa::path(post, path = "/api/checkout/orders/{id}/cancel", tag = "checkout",
    params(("id" = uuid::Uuid, Path, description = "the order's id")), security(("bearer" = [])),
    responses(
        (status = 200, description = "cancelled (or already was)", body = OrderView),
        (status = 400, description = "not a UUID", body = ErrorBody),
        (status = 401, description = "no valid bearer token", body = ErrorBody),
        (status = 403, description = "not a customer", body = ErrorBody),
        (status = 404, description = "no such order for this caller", body = ErrorBody),
        (status = 409, description = "shipped, or refused before", body = ErrorBody),
    ))]
async fn cancel(
    store: web::Data<Store>,
    caller: Caller,
    origin: Origin,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = uuid_param("id", &id)?;
    let order = cancel_order::cancel_order(&store, &origin.0, &caller.subject, id).await?;
    Ok(HttpResponse::Ok().json(OrderView::from(order)))
}

/// The price checkout holds for a sku (a copy of catalog's, fed by its events).
#[utoipa::path(get, path = "/api/checkout/prices/{sku}", tag = "checkout",
    params(("sku" = String, Path, description = "the product's sku")),
    responses(
        (status = 200, description = "the price", body = price_list::Price),
        (status = 400, description = "not a sku", body = ErrorBody),
        (status = 404, description = "no price for this sku (yet)", body = ErrorBody),
    ))]
async fn price(store: web::Data<Store>, sku: web::Path<String>) -> Result<HttpResponse, ApiError> {
    // Only a sku can have a price; anything else (a NUL byte, say) is the caller's mistake.
    let sku = kernel::Sku::parse(&sku).map_err(|err| {
        let mut e = kernel::FieldErrors::new();
        e.check::<(), _>("sku", Err(err));
        ApiError::invalid(e)
    })?;
    match price_list::get_price(store.db(), sku.as_str()).await? {
        Some(price) => Ok(HttpResponse::Ok().json(price)),
        None => Err(ApiError::not_found(
            "price_not_found",
            format!("checkout has no price for sku {sku} (yet)"),
        )),
    }
}
