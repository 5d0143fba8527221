//! Fulfillment's routes, mounted under `/api/fulfillment`.

use actix_web::{HttpResponse, web};
use module_api::{Access, RouteAccess};
use module_api::{ApiError, Origin, ValidQuery, uuid_param};
use serde::Deserialize;
use validator::Validate;

mod dto;
mod error;

use crate::use_cases::{deliver_shipment, dispatch_shipment, get_shipment, list_shipments};
use dto::{Shipment, ShipmentPage};
use kernel::{OrderId, ShipmentId};
use module_api::ErrorBody;
use module_api::Store;

/// Every route with who may call it: fulfillment is staff work only (shipments reveal
/// order ids).
/// Fulfillment's routes, described for the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(list, get, dispatch, deliver),
    components(schemas(Shipment, ShipmentPage)),
    tags((name = "fulfillment", description = "Shipments (staff only)"))
)]
pub(crate) struct ApiDoc;

pub(crate) fn routes(store: Store) -> impl Fn(&mut web::ServiceConfig) + Send + Sync + 'static {
    let store = web::Data::new(store);
    move |cfg| {
        cfg.app_data(store.clone())
            .route("/shipments", web::get().to(list).allow(Access::Staff))
            .route("/shipments/{id}", web::get().to(get).allow(Access::Staff))
            .route(
                "/shipments/{id}/dispatch",
                web::post().to(dispatch).allow(Access::Staff),
            )
            .route(
                "/shipments/{id}/deliver",
                web::post().to(deliver).allow(Access::Staff),
            );
    }
}

fn uuid_text(raw: &str) -> Result<(), validator::ValidationError> {
    uuid::Uuid::parse_str(raw).map(|_| ()).map_err(|_| {
        validator::ValidationError::new("invalid_format").with_message("must be a UUID".into())
    })
}

#[derive(Debug, Deserialize, Validate, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    #[validate(custom(function = "uuid_text"))]
    order_id: Option<String>,
    #[validate(custom(function = "uuid_text"))]
    after: Option<String>,
    #[validate(range(min = 1, max = 100))]
    limit: Option<u64>,
}

/// Shipments by id, a page at a time; `order_id` picks one order's.
#[utoipa::path(get, path = "/api/fulfillment/shipments", tag = "fulfillment",
    params(ListQuery), security(("bearer" = [])),
    responses(
        (status = 200, description = "a page", body = ShipmentPage),
        (status = 400, description = "a bad order_id, after or limit", body = ErrorBody),
        (status = 401, description = "no valid bearer token", body = ErrorBody),
        (status = 403, description = "not staff", body = ErrorBody),
    ))]
async fn list(
    store: web::Data<Store>,
    query: ValidQuery<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let q = query.0;
    let order_id = q
        .order_id
        .as_deref()
        .map(|id| uuid_param("order_id", id))
        .transpose()?;
    let after = q
        .after
        .as_deref()
        .map(|id| uuid_param("after", id))
        .transpose()?;
    let (items, next_after) = list_shipments::list_shipments(
        store.db(),
        order_id.map(OrderId::from_uuid),
        after.map(ShipmentId::from_uuid),
        q.limit.unwrap_or(20),
    )
    .await?;
    Ok(HttpResponse::Ok().json(ShipmentPage::new(items, next_after)))
}

/// One shipment.
#[utoipa::path(get, path = "/api/fulfillment/shipments/{id}", tag = "fulfillment",
    params(("id" = uuid::Uuid, Path, description = "the shipment's id")), security(("bearer" = [])),
    responses(
        (status = 200, description = "the shipment", body = Shipment),
        (status = 400, description = "not a UUID", body = ErrorBody),
        (status = 401, description = "no valid bearer token", body = ErrorBody),
        (status = 403, description = "not staff", body = ErrorBody),
        (status = 404, description = "no such shipment", body = ErrorBody),
    ))]
async fn get(store: web::Data<Store>, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let id = uuid_param("id", &id)?;
    let shipment = get_shipment::get_shipment(store.db(), ShipmentId::from_uuid(id)).await?;
    Ok(HttpResponse::Ok().json(Shipment::from(shipment)))
}

/// Hands a ready shipment to the carrier: it gets its tracking number.
#[utoipa::path(post, path = "/api/fulfillment/shipments/{id}/dispatch", tag = "fulfillment",
    params(("id" = uuid::Uuid, Path, description = "the shipment's id")), security(("bearer" = [])),
    responses(
        (status = 200, description = "dispatched", body = Shipment),
        (status = 400, description = "not a UUID", body = ErrorBody),
        (status = 401, description = "no valid bearer token", body = ErrorBody),
        (status = 403, description = "not staff", body = ErrorBody),
        (status = 404, description = "no such shipment", body = ErrorBody),
        (status = 409, description = "its status does not allow it", body = ErrorBody),
    ))]
async fn dispatch(
    store: web::Data<Store>,
    origin: Origin,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = uuid_param("id", &id)?;
    let shipment =
        dispatch_shipment::dispatch_shipment(&store, &origin.0, ShipmentId::from_uuid(id)).await?;
    Ok(HttpResponse::Ok().json(Shipment::from(shipment)))
}

/// Records a dispatched shipment as delivered.
#[utoipa::path(post, path = "/api/fulfillment/shipments/{id}/deliver", tag = "fulfillment",
    params(("id" = uuid::Uuid, Path, description = "the shipment's id")), security(("bearer" = [])),
    responses(
        (status = 200, description = "delivered", body = Shipment),
        (status = 400, description = "not a UUID", body = ErrorBody),
        (status = 401, description = "no valid bearer token", body = ErrorBody),
        (status = 403, description = "not staff", body = ErrorBody),
        (status = 404, description = "no such shipment", body = ErrorBody),
        (status = 409, description = "its status does not allow it", body = ErrorBody),
    ))]
async fn deliver(
    store: web::Data<Store>,
    origin: Origin,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = uuid_param("id", &id)?;
    let shipment =
        deliver_shipment::deliver_shipment(&store, &origin.0, ShipmentId::from_uuid(id)).await?;
    Ok(HttpResponse::Ok().json(Shipment::from(shipment)))
}
