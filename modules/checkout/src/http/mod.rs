//! Checkout's routes, mounted under `/api/checkout`.

mod dto;
mod error;

use actix_web::{HttpRequest, HttpResponse, web};
use runtime::http::{ApiError, Origin, ValidJson, uuid_param};

use crate::State;
use crate::use_cases::place_order::{IdempotencyKey, Placed};
use crate::use_cases::{cancel_order, get_order, place_order, price_list};
use dto::{OrderView, PlaceOrderBody, idempotency_key};

pub(crate) fn routes(state: State) -> impl Fn(&mut web::ServiceConfig) + Send + Sync + 'static {
    let state = web::Data::new(state);
    move |cfg| {
        cfg.app_data(state.clone())
            .route("/orders", web::post().to(place))
            .route("/orders/{id}", web::get().to(get))
            .route("/orders/{id}/cancel", web::post().to(cancel))
            .route("/prices/{sku}", web::get().to(price));
    }
}

async fn place(
    state: web::Data<State>,
    origin: Origin,
    req: HttpRequest,
    body: ValidJson<PlaceOrderBody>,
) -> Result<HttpResponse, ApiError> {
    let key = idempotency_key(req.headers().get("idempotency-key"))?;
    let key = key.map(|key| IdempotencyKey {
        key,
        request_hash: body.0.fingerprint(),
    });
    let command = body.0.into_command()?;
    let (order, replayed) = match place_order::place_order(&state, &origin.0, command, key).await? {
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

async fn get(state: web::Data<State>, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let id = uuid_param("id", &id)?;
    let order = get_order::get_order(&state.db, id).await?;
    Ok(HttpResponse::Ok().json(OrderView::from(order)))
}

async fn cancel(
    state: web::Data<State>,
    origin: Origin,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = uuid_param("id", &id)?;
    let order = cancel_order::cancel_order(&state, &origin.0, id).await?;
    Ok(HttpResponse::Ok().json(OrderView::from(order)))
}

async fn price(state: web::Data<State>, sku: web::Path<String>) -> Result<HttpResponse, ApiError> {
    match price_list::get_price(&state.db, &sku).await? {
        Some(price) => Ok(HttpResponse::Ok().json(price)),
        None => Err(ApiError::not_found(
            "price_not_found",
            format!("checkout has no price for sku {sku} (yet)"),
        )),
    }
}
