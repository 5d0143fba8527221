//! The API's OpenAPI 3.1 document, generated from the code: each module describes its own
//! routes and bodies (`utoipa` annotations beside its handlers, see `Module::openapi`);
//! the host adds the probes, the error shape and the bearer scheme, and serves the
//! document of the modules this process runs at `/api/openapi.json`, with a page for
//! people at `/docs`. The page is one HTML file compiled into the binary that renders the
//! document with a few lines of its own script: nothing is downloaded, at build or at run
//! time, and its `Content-Security-Policy` allows nothing from elsewhere.

use actix_web::{HttpResponse, web};
use module_api::{BEARER, ErrorBody, ErrorDetail};
use utoipa::OpenApi as _;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ComponentsBuilder, InfoBuilder, OpenApi, OpenApiBuilder};

#[derive(utoipa::OpenApi)]
#[openapi(
    paths(healthz, readyz, openapi_json, docs),
    components(schemas(ErrorBody, ErrorDetail))
)]
struct HostDoc;

/// Liveness: the process runs. Touches nothing.
#[utoipa::path(get, path = "/healthz", tag = "probes",
    responses((status = 200, description = "alive", body = Object)))]
#[allow(dead_code)]
fn healthz() {}

/// Readiness: each check's name and `ok` or `down`; the detail of a failure is logged.
#[utoipa::path(get, path = "/readyz", tag = "probes",
    responses(
        (status = 200, description = "every check is ok", body = Object),
        (status = 503, description = "a check is down; the body names it", body = Object),
    ))]
#[allow(dead_code)]
fn readyz() {}

/// This document.
#[utoipa::path(get, path = "/api/openapi.json", tag = "docs",
    responses((status = 200, description = "the OpenAPI 3.1 document", body = Object)))]
#[allow(dead_code)]
fn openapi_json() {}

/// The document for people: an HTML page that renders it, with nothing fetched elsewhere.
#[utoipa::path(get, path = "/docs", tag = "docs",
    responses((status = 200, description = "an HTML page", content_type = "text/html")))]
#[allow(dead_code)]
fn docs() {}

/// The document of a process running `modules` (each module's own document).
pub fn document(modules: impl IntoIterator<Item = OpenApi>) -> OpenApi {
    let mut doc = OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("shop")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "A modular monolith's HTTP API. Errors are \
                     {\"error\": {\"code\", \"message\", \"fields\"}}; 401 answers carry \
                     WWW-Authenticate: Bearer.",
                ))
                .build(),
        )
        .components(Some(
            ComponentsBuilder::new()
                .security_scheme(
                    BEARER,
                    SecurityScheme::Http(
                        HttpBuilder::new()
                            .scheme(HttpAuthScheme::Bearer)
                            .bearer_format("JWT")
                            .description(Some("A JWT whose roles claim holds customer or staff"))
                            .build(),
                    ),
                )
                .build(),
        ))
        .build();
    doc.merge(HostDoc::openapi());
    for module in modules {
        doc.merge(module);
    }
    doc
}

/// The serialized document, made once when the server starts.
pub(crate) struct Document(pub(crate) String);

pub(crate) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/api/openapi.json", web::get().to(serve_document))
        .route("/docs", web::get().to(docs_page));
}

async fn serve_document(doc: web::Data<Document>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(doc.0.clone())
}

/// Scripts and styles only from this very page (by hash would be stricter still, but the
/// page is ours and holds no user input); data only from this origin; no frames, no forms.
pub const DOCS_CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; \
     style-src 'unsafe-inline'; connect-src 'self'; img-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

async fn docs_page() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header(("Content-Security-Policy", DOCS_CSP))
        .body(DOCS_HTML)
}

const DOCS_HTML: &str = include_str!("docs.html");
