//! Fulfillment's routes, mounted under `/api/fulfillment`.

use actix_web::{HttpResponse, web};
use runtime::auth::{Access, RouteAccess};
use runtime::http::{ApiError, Origin, ValidQuery, uuid_param};
use serde::Deserialize;
use validator::Validate;

use crate::State;
use crate::use_cases::shipments::{self, ShipmentError};

/// Every route with who may call it: fulfillment is staff work only (shipments reveal
/// order ids).
pub(crate) fn routes(state: State) -> impl Fn(&mut web::ServiceConfig) + Send + Sync + 'static {
    let state = web::Data::new(state);
    move |cfg| {
        cfg.app_data(state.clone())
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

impl From<ShipmentError> for ApiError {
    fn from(e: ShipmentError) -> Self {
        match e {
            ShipmentError::NotFound(_) => ApiError::not_found("shipment_not_found", e.to_string()),
            ShipmentError::WrongStatus { .. } => {
                ApiError::conflict("invalid_transition", e.to_string())
            }
            ShipmentError::Unexpected(e) => ApiError::internal(e),
        }
    }
}

fn uuid_text(raw: &str) -> Result<(), validator::ValidationError> {
    uuid::Uuid::parse_str(raw).map(|_| ()).map_err(|_| {
        validator::ValidationError::new("invalid_format").with_message("must be a UUID".into())
    })
}

#[derive(Debug, Deserialize, Validate)]
struct ListQuery {
    #[validate(custom(function = "uuid_text"))]
    order_id: Option<String>,
    #[validate(custom(function = "uuid_text"))]
    after: Option<String>,
    #[validate(range(min = 1, max = 100))]
    limit: Option<u64>,
}

async fn list(
    state: web::Data<State>,
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
    let (items, next_after) =
        shipments::list(&state.db, order_id, after, q.limit.unwrap_or(20)).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({"items": items, "next_after": next_after})))
}

async fn get(state: web::Data<State>, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let id = uuid_param("id", &id)?;
    Ok(HttpResponse::Ok().json(shipments::get(&state.db, id).await?))
}

async fn dispatch(
    state: web::Data<State>,
    origin: Origin,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = uuid_param("id", &id)?;
    Ok(HttpResponse::Ok().json(shipments::dispatch(&state, &origin.0, id).await?))
}

async fn deliver(
    state: web::Data<State>,
    origin: Origin,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = uuid_param("id", &id)?;
    Ok(HttpResponse::Ok().json(shipments::deliver(&state, &origin.0, id).await?))
}
