//! Who may call what, as data: every route the monolith serves, the five callers each is
//! tried with, the rows of the rules every process shares (probes, API documentation) and
//! fulfillment's, and the runner that sends each row as each caller. The monolith's access
//! test and the extracted service's (xtask's extraction test) use the same rows, so the
//! service is held to exactly the monolith's rules.

use std::collections::BTreeSet;

use reqwest::Method;
use runtime::config::Settings;
use serde_json::Value;

use crate::Role;

/// Every route the monolith serves, as (method, path template). The monolith's access table
/// must try each; the OpenAPI document must describe each.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/api/openapi.json"),
    ("GET", "/docs"),
    ("GET", "/api/catalog/products"),
    ("POST", "/api/catalog/products"),
    ("GET", "/api/catalog/products/{sku}"),
    ("PATCH", "/api/catalog/products/{sku}"),
    ("POST", "/api/catalog/products/{sku}/restock"),
    ("GET", "/api/checkout/prices/{sku}"),
    ("POST", "/api/checkout/orders"),
    ("GET", "/api/checkout/orders"),
    ("GET", "/api/checkout/orders/{id}"),
    ("POST", "/api/checkout/orders/{id}/cancel"),
    ("GET", "/api/fulfillment/shipments"),
    ("GET", "/api/fulfillment/shipments/{id}"),
    ("POST", "/api/fulfillment/shipments/{id}/dispatch"),
    ("POST", "/api/fulfillment/shipments/{id}/deliver"),
];

/// The routes every process serves, whatever modules it runs.
const EVERY_PROCESS: &[&str] = &["/healthz", "/readyz", "/api/openapi.json", "/docs"];

/// The routes of a process running only `module`: its own and those every process serves.
pub fn routes_of(module: &str) -> BTreeSet<(&'static str, &'static str)> {
    let prefix = format!("/api/{module}/");
    ROUTES
        .iter()
        .copied()
        .filter(|(_, t)| EVERY_PROCESS.contains(t) || t.starts_with(&prefix))
        .collect()
}

/// The template a concrete path matches (ids and skus in place of `{...}`).
pub fn template_of(method: &str, path: &str) -> Option<&'static str> {
    let path = path.split('?').next().unwrap_or(path);
    let parts: Vec<&str> = path.split('/').collect();
    ROUTES.iter().find_map(|(m, template)| {
        let t: Vec<&str> = template.split('/').collect();
        let matches = *m == method
            && t.len() == parts.len()
            && t.iter()
                .zip(&parts)
                .all(|(t, p)| t.starts_with('{') || t == p);
        matches.then_some(*template)
    })
}

/// The callers every route is tried with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Who {
    Nobody,
    /// A token with both roles, signed with another key.
    Forged,
    CustomerA,
    CustomerB,
    Staff,
}

/// The callers in the order of [`Expected`].
pub const EVERYONE: [Who; 5] = [
    Who::Nobody,
    Who::Forged,
    Who::CustomerA,
    Who::CustomerB,
    Who::Staff,
];

/// The order each row is sent in: customer B before customer A, and A last, so a refused
/// call runs before the allowed one it must leave unchanged (B's cancel of A's order, then
/// A's).
const SENT: [Who; 5] = [
    Who::Nobody,
    Who::Forged,
    Who::CustomerB,
    Who::Staff,
    Who::CustomerA,
];

/// A route's rule: the status each caller gets, in the order of [`EVERYONE`].
pub type Expected = [u16; 5];

/// Anyone, token or not (a public route does not read the token).
pub const PUBLIC: Expected = [200, 200, 200, 200, 200];

/// Staff only; `ok` is what staff get.
pub const fn staff(ok: u16) -> Expected {
    [401, 401, 403, 403, ok]
}

/// One request of the table and the status each caller gets.
#[derive(Debug, Clone)]
pub struct Row {
    pub method: Method,
    pub path: String,
    pub body: Option<Value>,
    pub expected: Expected,
}

impl Row {
    pub fn new(method: Method, path: impl Into<String>, expected: Expected) -> Row {
        Row {
            method,
            path: path.into(),
            body: None,
            expected,
        }
    }

    pub fn with_body(mut self, body: Value) -> Row {
        self.body = Some(body);
        self
    }

    /// The route template this row tries; panics when it is none of [`ROUTES`].
    pub fn template(&self) -> (&'static str, &'static str) {
        let method = self.method.as_str();
        let template = template_of(method, &self.path)
            .unwrap_or_else(|| panic!("{method} {} is in no route of ROUTES", self.path));
        let (method, _) = ROUTES
            .iter()
            .find(|(m, t)| *m == method && *t == template)
            .expect("template_of answers with a listed route");
        (method, template)
    }
}

/// The routes a table tries.
pub fn tried(rows: &[Row]) -> BTreeSet<(&'static str, &'static str)> {
    rows.iter().map(Row::template).collect()
}

/// The probes and the API's documentation, which every process serves to anyone.
pub fn every_process_rows() -> Vec<Row> {
    EVERY_PROCESS
        .iter()
        .map(|path| Row::new(Method::GET, *path, PUBLIC))
        .collect()
}

/// Fulfillment's routes, tried on the ready shipment `shipment` of order `order`: staff
/// only. The rows run in order, so the reads come before dispatch, and dispatch before
/// delivery; the shipment ends delivered.
pub fn fulfillment_rows(shipment: &str, order: &str) -> Vec<Row> {
    vec![
        Row::new(Method::GET, "/api/fulfillment/shipments", staff(200)),
        Row::new(
            Method::GET,
            format!("/api/fulfillment/shipments?order_id={order}"),
            staff(200),
        ),
        Row::new(
            Method::GET,
            format!("/api/fulfillment/shipments/{shipment}"),
            staff(200),
        ),
        Row::new(
            Method::POST,
            format!("/api/fulfillment/shipments/{shipment}/dispatch"),
            staff(200),
        ),
        Row::new(
            Method::POST,
            format!("/api/fulfillment/shipments/{shipment}/deliver"),
            staff(200),
        ),
    ]
}

/// A token for each caller but [`Who::Nobody`], for processes started with `settings`.
pub struct Tokens {
    a: String,
    b: String,
    staff: String,
    forged: String,
}

impl Tokens {
    pub fn new(settings: &Settings) -> Tokens {
        let mut other = settings.clone();
        other.auth.hs256_secret = Some("another-secret-that-is-at-least-32-bytes".into());
        Tokens {
            a: crate::token(settings, &[Role::Customer], "customer-a"),
            b: crate::token(settings, &[Role::Customer], "customer-b"),
            staff: crate::token(settings, &[Role::Staff], "staff-1"),
            forged: crate::token(&other, &[Role::Customer, Role::Staff], "customer-a"),
        }
    }

    pub fn of(&self, who: Who) -> Option<&str> {
        match who {
            Who::Nobody => None,
            Who::Forged => Some(&self.forged),
            Who::CustomerA => Some(&self.a),
            Who::CustomerB => Some(&self.b),
            Who::Staff => Some(&self.staff),
        }
    }
}

/// Sends every row, in order, as every caller to the process at `base`
/// (`http://127.0.0.1:PORT`), and checks each status against the row's rule: a 401 names
/// the bearer scheme, a 403 says `forbidden`, a 404 says `order_not_found` (another
/// customer's order does not exist for a customer).
pub async fn check_every_caller(base: &str, rows: &[Row], tokens: &Tokens) {
    let client = module_api::tls::client_builder(None)
        .expect("a client builder")
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("a client");
    for row in rows {
        let (method, path) = (&row.method, &row.path);
        for who in SENT {
            let want = row.expected[EVERYONE.iter().position(|w| *w == who).expect("listed")];
            let mut request = client.request(method.clone(), format!("{base}{path}"));
            if let Some(token) = tokens.of(who) {
                request = request.bearer_auth(token);
            }
            if let Some(body) = &row.body {
                request = request.json(body);
            }
            let reply = crate::read(request.send().await).await;
            assert_eq!(
                reply.status, want,
                "{method} {path} as {who:?}: expected {want}, got {}: {}",
                reply.status, reply.text
            );
            match want {
                401 => assert!(
                    reply
                        .header("www-authenticate")
                        .is_some_and(|c| c.starts_with("Bearer")),
                    "{method} {path} as {who:?}: a 401 names the scheme"
                ),
                403 => assert_eq!(reply.error_code(), "forbidden", "{method} {path}"),
                404 => assert_eq!(reply.error_code(), "order_not_found", "{method} {path}"),
                _ => {}
            }
        }
    }
}
