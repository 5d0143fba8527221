//! The OpenAPI document against the running app: it describes exactly the routes the app
//! serves, and every route answers its documented success status on a happy path. The
//! docs page is served self-contained, with a restrictive Content-Security-Policy.

use std::collections::BTreeSet;

use reqwest::Method;
use serde_json::Value;
use testkit::{Backend, json, on_both_backends};

use crate::access::{ROUTES, template_of};
use crate::shop::Shop;

/// The documented operations: (method, path template) with the operation.
fn operations(doc: &Value) -> Vec<(String, String, Value)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("a path item") {
            if ["get", "post", "put", "patch", "delete"].contains(&method.as_str()) {
                out.push((method.to_uppercase(), path.clone(), op.clone()));
            }
        }
    }
    out
}

async fn the_document_describes_exactly_the_routes_served(backend: Backend) {
    let shop = Shop::open(backend).await;
    let reply = shop.app.get("/api/openapi.json").await;
    reply.expect_status(200);
    let doc = reply.body;
    assert_eq!(doc["openapi"], "3.1.0");
    let scheme = &doc["components"]["securitySchemes"]["bearer"];
    assert_eq!(
        (scheme["type"].as_str(), scheme["scheme"].as_str()),
        (Some("http"), Some("bearer"))
    );
    let documented: BTreeSet<(String, String)> = operations(&doc)
        .into_iter()
        .map(|(m, p, _)| (m, p))
        .collect();
    let served: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(documented, served, "documented routes = served routes");
    for (method, path, op) in operations(&doc) {
        let public = op.get("security").is_none();
        let responses = op["responses"].as_object().expect("responses");
        // A protected route documents its 401; a public one never answers it.
        assert_eq!(
            !public,
            responses.contains_key("401"),
            "{method} {path}: security and 401 go together"
        );
        for (status, response) in responses {
            if status.starts_with('4') {
                let schema = &response["content"]["application/json"]["schema"]["$ref"];
                assert_eq!(
                    schema, "#/components/schemas/ErrorBody",
                    "{method} {path} {status}: errors have the one error shape"
                );
            }
        }
    }
}

/// The documented success status of an operation.
fn success(doc: &Value, method: &str, template: &str) -> u16 {
    let op = &doc["paths"][template][method.to_lowercase()];
    let statuses: Vec<u16> = op["responses"]
        .as_object()
        .unwrap_or_else(|| panic!("{method} {template} is documented"))
        .keys()
        .filter_map(|s| s.parse().ok())
        .filter(|s| (200..300).contains(s))
        .collect();
    assert_eq!(statuses.len(), 1, "{method} {template}: one success status");
    statuses[0]
}

async fn every_documented_route_answers_its_documented_status(backend: Backend) {
    let shop = Shop::open(backend).await;
    let app = &shop.app;
    let doc = app.get("/api/openapi.json").await.body;
    let product = json!({"sku": "TEA-1", "name": "Tea", "price_minor": 450, "currency": "EUR",
                         "initial_stock": 10});
    // The happy path, in an order where each call finds what it needs. The testkit client
    // carries the customer and the staff role.
    let mut calls: Vec<(Method, String, Option<Value>)> = vec![
        (Method::GET, "/healthz".into(), None),
        (Method::GET, "/readyz".into(), None),
        (Method::GET, "/api/openapi.json".into(), None),
        (Method::GET, "/docs".into(), None),
        (Method::POST, "/api/catalog/products".into(), Some(product)),
        (Method::GET, "/api/catalog/products?limit=5".into(), None),
        (Method::GET, "/api/catalog/products/TEA-1".into(), None),
        (
            Method::PATCH,
            "/api/catalog/products/TEA-1".into(),
            Some(json!({"name": "Green tea"})),
        ),
        (
            Method::POST,
            "/api/catalog/products/TEA-1/restock".into(),
            Some(json!({"quantity": 3})),
        ),
    ];
    let mut seen = BTreeSet::new();
    let mut run = async |calls: &mut Vec<(Method, String, Option<Value>)>| {
        for (method, path, body) in calls.drain(..) {
            let template = template_of(method.as_str(), &path).expect("a served route");
            let want = success(&doc, method.as_str(), template);
            let mut request = app.client.request(method.clone(), app.url(&path));
            if let Some(body) = &body {
                request = request.json(body);
            }
            let reply = testkit::read(request.send().await).await;
            assert_eq!(
                reply.status, want,
                "{method} {path}: documented {want}, answered {}",
                reply.text
            );
            assert_eq!(
                reply.header("x-content-type-options"),
                Some("nosniff"),
                "{method} {path}"
            );
            assert!(
                reply.header("server").is_none(),
                "{method} {path} names no server"
            );
            seen.insert((method.to_string(), template));
        }
    };
    run(&mut calls).await;
    shop.priced("TEA-1").await;
    let order = shop.place(&[("TEA-1", 1)], "tok_visa").await;
    let kept = shop.place(&[("TEA-1", 1)], "tok_visa").await;
    let shipment = shop.shipment_becomes(&order, "ready").await;
    let shipment = shipment["id"].as_str().expect("an id").to_owned();
    calls.extend([
        (Method::GET, "/api/checkout/prices/TEA-1".into(), None),
        (
            Method::POST,
            "/api/checkout/orders".into(),
            Some(Shop::order_body(&[("TEA-1", 1)], "tok_visa")),
        ),
        (Method::GET, "/api/checkout/orders".into(), None),
        (Method::GET, format!("/api/checkout/orders/{order}"), None),
        (
            Method::GET,
            format!("/api/fulfillment/shipments?order_id={order}"),
            None,
        ),
        (
            Method::GET,
            format!("/api/fulfillment/shipments/{shipment}"),
            None,
        ),
        (
            Method::POST,
            format!("/api/fulfillment/shipments/{shipment}/dispatch"),
            None,
        ),
        (
            Method::POST,
            format!("/api/fulfillment/shipments/{shipment}/deliver"),
            None,
        ),
        (
            Method::POST,
            format!("/api/checkout/orders/{kept}/cancel"),
            None,
        ),
    ]);
    run(&mut calls).await;
    let all: BTreeSet<(String, &str)> = ROUTES.iter().map(|(m, t)| (m.to_string(), *t)).collect();
    assert_eq!(seen, all, "every route was called");
}

async fn the_docs_page_is_self_contained(backend: Backend) {
    let shop = Shop::open(backend).await;
    let page = shop.app.get("/docs").await;
    page.expect_status(200);
    let csp = page.header("content-security-policy").expect("a CSP");
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert!(csp.contains("connect-src 'self'"), "{csp}");
    assert!(page.text.contains("/api/openapi.json"));
    for outside in ["http://", "https://", "//cdn", "src=\""] {
        assert!(
            !page.text.contains(outside),
            "the page loads nothing from elsewhere ({outside})"
        );
    }
}

on_both_backends!(
    the_document_describes_exactly_the_routes_served,
    every_documented_route_answers_its_documented_status,
    the_docs_page_is_self_contained,
);

/// Headless Chromium (Debian's `chromium`, which CI installs) opens `/docs`, runs its
/// script under the page's own Content-Security-Policy, and lists every route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_shows_every_route_on_the_docs_page() {
    let shop = Shop::open(Backend::Sqlite).await;
    let browser = ["chromium", "chromium-browser"]
        .into_iter()
        .find(|b| {
            std::process::Command::new(b)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .expect("headless Chromium must be installed for this test: apt-get install chromium");
    let profile = tempfile::tempdir().expect("a profile folder");
    let url = shop.app.url("/docs");
    let output = tokio::process::Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-extensions",
            "--virtual-time-budget=10000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(["--dump-dom", &url])
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(std::time::Duration::from_secs(90), output)
        .await
        .expect("Chromium answers within 90 s")
        .expect("Chromium runs");
    let dom = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && dom.contains("OpenAPI 3.1.0"),
        "the page rendered the document: {dom}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for (method, path) in ROUTES {
        assert!(
            dom.contains(&format!("data-route=\"{method} {path}\"")),
            "{method} {path} is listed on the page"
        );
    }
}
