//! Catalog's routes, mounted under `/api/catalog`.

mod dto;
mod error;

use actix_web::{HttpResponse, web};
use module_api::ErrorBody;
use module_api::{Access, RouteAccess};
use module_api::{ApiError, Origin, Parsed, ValidQuery};

use crate::State;
use crate::domain::{NewProduct, ProductChanges};
use crate::use_cases::{create_product, get_product, list_products, restock, update_product};
use dto::{
    CreateProductBody, ListQuery, PageView, PatchProductBody, ProductView, Restock, RestockBody,
    sku_param,
};

const DEFAULT_PAGE: u64 = 20;

/// Catalog's routes, described for the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(create, list, get, patch, restock_product),
    components(schemas(CreateProductBody, PatchProductBody, RestockBody, ProductView, PageView)),
    tags((name = "catalog", description = "Products, prices and stock"))
)]
pub(crate) struct ApiDoc;

/// Every route with who may call it: anyone reads products; staff change them.
pub(crate) fn routes(state: State) -> impl Fn(&mut web::ServiceConfig) + Send + Sync + 'static {
    let state = web::Data::new(state);
    move |cfg| {
        cfg.app_data(state.clone())
            .service(
                web::resource("/products")
                    .route(web::post().to(create).allow(Access::Staff))
                    .route(web::get().to(list).allow(Access::Public)),
            )
            .service(
                web::resource("/products/{sku}")
                    .route(web::get().to(get).allow(Access::Public))
                    .route(web::patch().to(patch).allow(Access::Staff)),
            )
            .service(
                web::resource("/products/{sku}/restock")
                    .route(web::post().to(restock_product).allow(Access::Staff)),
            );
    }
}

/// Creates a product with its price and initial stock.
#[utoipa::path(post, path = "/api/catalog/products", tag = "catalog",
    request_body = CreateProductBody, security(("bearer" = [])),
    responses(
        (status = 201, description = "created", body = ProductView),
        (status = 400, description = "invalid fields, each named", body = ErrorBody),
        (status = 401, description = "no valid bearer token", body = ErrorBody),
        (status = 403, description = "not staff", body = ErrorBody),
        (status = 409, description = "the sku exists", body = ErrorBody),
    ))]
async fn create(
    state: web::Data<State>,
    origin: Origin,
    Parsed(new): Parsed<NewProduct>,
) -> Result<HttpResponse, ApiError> {
    let product = create_product::create_product(&state.store, &origin.0, new).await?;
    let location = format!("/api/catalog/products/{}", product.sku);
    Ok(HttpResponse::Created()
        .insert_header(("Location", location))
        .json(ProductView::from(product)))
}

/// One product, with what is available. The answer may come from memory: it shows every
/// change this process made, and a change another replica made once
/// `modules.catalog.product_cache_ms` (a second by default) has passed.
#[utoipa::path(get, path = "/api/catalog/products/{sku}", tag = "catalog",
    params(("sku" = String, Path, description = "the product's sku")),
    responses(
        (status = 200, description = "the product", body = ProductView),
        (status = 400, description = "not a sku", body = ErrorBody),
        (status = 404, description = "no such product", body = ErrorBody),
    ))]
async fn get(state: web::Data<State>, sku: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let sku = sku_param(&sku)?;
    let product = get_product::get_product(state.store.db(), &state.products, sku).await?;
    Ok(HttpResponse::Ok().json(ProductView::from(product)))
}

/// Products by sku, a page at a time.
#[utoipa::path(get, path = "/api/catalog/products", tag = "catalog", params(ListQuery),
    responses(
        (status = 200, description = "a page", body = PageView),
        (status = 400, description = "a bad limit or after", body = ErrorBody),
    ))]
async fn list(
    state: web::Data<State>,
    query: ValidQuery<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let query = query.0;
    let after = query.after.as_deref().map(sku_param).transpose()?;
    let limit = query.limit.unwrap_or(DEFAULT_PAGE);
    let page = list_products::list_products(state.store.db(), after, limit).await?;
    Ok(HttpResponse::Ok().json(PageView {
        items: page.items.into_iter().map(ProductView::from).collect(),
        next_after: page.next_after.map(|s| s.to_string()),
    }))
}

/// Changes a product's name, description or price.
#[utoipa::path(patch, path = "/api/catalog/products/{sku}", tag = "catalog",
    params(("sku" = String, Path, description = "the product's sku")),
    request_body = PatchProductBody, security(("bearer" = [])),
    responses(
        (status = 200, description = "changed", body = ProductView),
        (status = 400, description = "invalid fields, each named", body = ErrorBody),
        (status = 401, description = "no valid bearer token", body = ErrorBody),
        (status = 403, description = "not staff", body = ErrorBody),
        (status = 404, description = "no such product", body = ErrorBody),
    ))]
async fn patch(
    state: web::Data<State>,
    origin: Origin,
    sku: web::Path<String>,
    Parsed(changes): Parsed<ProductChanges>,
) -> Result<HttpResponse, ApiError> {
    let sku = sku_param(&sku)?;
    let product =
        update_product::update_product(&state.store, &state.products, &origin.0, sku, changes)
            .await?;
    Ok(HttpResponse::Ok().json(ProductView::from(product)))
}

/// Adds units to a product's stock.
#[utoipa::path(post, path = "/api/catalog/products/{sku}/restock", tag = "catalog",
    params(("sku" = String, Path, description = "the product's sku")),
    request_body = RestockBody, security(("bearer" = [])),
    responses(
        (status = 200, description = "restocked", body = ProductView),
        (status = 400, description = "invalid fields, each named", body = ErrorBody),
        (status = 401, description = "no valid bearer token", body = ErrorBody),
        (status = 403, description = "not staff", body = ErrorBody),
        (status = 404, description = "no such product", body = ErrorBody),
    ))]
async fn restock_product(
    state: web::Data<State>,
    sku: web::Path<String>,
    Parsed(Restock(quantity)): Parsed<Restock>,
) -> Result<HttpResponse, ApiError> {
    let sku = sku_param(&sku)?;
    let product = restock::restock(state.store.db(), &state.products, sku, quantity).await?;
    Ok(HttpResponse::Ok().json(ProductView::from(product)))
}
