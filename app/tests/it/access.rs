//! Who may call what: every route of the monolith, called by nobody, by two customers, by
//! staff and with a forged token, against the rule written for it here. A customer's
//! orders are theirs alone: another customer gets 404, as if the order did not exist.

use reqwest::Method;
use serde_json::Value;
use testkit::{Backend, Role, json, on_both_backends};

use crate::shop::Shop;

/// Every route the monolith serves, as (method, path template). The access table below
/// must try each; the OpenAPI document must describe each (`openapi.rs`).
pub(crate) const ROUTES: &[(&str, &str)] = &[
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

/// The template a concrete path matches (ids and skus in place of `{...}`).
pub(crate) fn template_of(method: &str, path: &str) -> Option<&'static str> {
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
enum Who {
    Nobody,
    /// A token signed with another key.
    Forged,
    CustomerA,
    CustomerB,
    Staff,
}

const EVERYONE: [Who; 5] = [
    Who::Nobody,
    Who::Forged,
    Who::CustomerA,
    Who::CustomerB,
    Who::Staff,
];

/// A route's rule: the status each caller gets, in the order of [`EVERYONE`].
type Expected = [u16; 5];

/// Anyone, token or not (a public route does not read the token).
const PUBLIC: Expected = [200, 200, 200, 200, 200];

/// Staff only; `ok` is what staff get.
const fn staff(ok: u16) -> Expected {
    [401, 401, 403, 403, ok]
}

struct Tokens {
    a: String,
    b: String,
    staff: String,
    forged: String,
}

impl Tokens {
    fn of(&self, who: Who) -> Option<&str> {
        match who {
            Who::Nobody => None,
            Who::Forged => Some(&self.forged),
            Who::CustomerA => Some(&self.a),
            Who::CustomerB => Some(&self.b),
            Who::Staff => Some(&self.staff),
        }
    }
}

fn order_body(sku: &str) -> Value {
    Shop::order_body(&[(sku, 1)], "tok_visa")
}

async fn every_route_admits_exactly_the_roles_its_rule_names(backend: Backend) {
    let shop = Shop::open(backend).await;
    let app = &shop.app;
    shop.product("TEA-1", 450, 100).await;
    let forged = {
        let mut other = app.settings.clone();
        other.auth.hs256_secret = Some("another-secret-that-is-at-least-32-bytes".into());
        testkit::token(&other, &[Role::Customer, Role::Staff], "customer-a")
    };
    let tokens = Tokens {
        a: app.token(&[Role::Customer], "customer-a"),
        b: app.token(&[Role::Customer], "customer-b"),
        staff: app.token(&[Role::Staff], "staff-1"),
        forged,
    };
    // Customer A's orders: one to ship, one to cancel.
    let place_as_a = |sku: &'static str| {
        let tokens = &tokens;
        async move {
            let reply = app
                .send(
                    Method::POST,
                    "/api/checkout/orders",
                    Some(&tokens.a),
                    Some(&order_body(sku)),
                )
                .await;
            reply.expect_status(201);
            assert_eq!(reply.body["customer_id"], "customer-a");
            reply.body["id"].as_str().expect("an id").to_owned()
        }
    };
    let shipped = place_as_a("TEA-1").await;
    let kept = place_as_a("TEA-1").await;
    let shipment = shop.shipment_becomes(&shipped, "ready").await;
    let shipment = shipment["id"].as_str().expect("an id").to_owned();

    let product = json!({"sku": "NEW-1", "name": "New", "price_minor": 100, "currency": "EUR",
                         "initial_stock": 1});
    // Each row: method, path, body, the status each caller gets. Rows run in order, so a
    // row that changes state comes after the rows that read it.
    let rows: Vec<(Method, String, Option<Value>, Expected)> = vec![
        (Method::GET, "/healthz".into(), None, PUBLIC),
        (Method::GET, "/readyz".into(), None, PUBLIC),
        (Method::GET, "/api/openapi.json".into(), None, PUBLIC),
        (Method::GET, "/docs".into(), None, PUBLIC),
        (Method::GET, "/api/catalog/products".into(), None, PUBLIC),
        (
            Method::GET,
            "/api/catalog/products/TEA-1".into(),
            None,
            PUBLIC,
        ),
        (
            Method::GET,
            "/api/checkout/prices/TEA-1".into(),
            None,
            PUBLIC,
        ),
        (
            Method::POST,
            "/api/catalog/products".into(),
            Some(product),
            staff(201),
        ),
        (
            Method::PATCH,
            "/api/catalog/products/TEA-1".into(),
            Some(json!({"name": "Green tea"})),
            staff(200),
        ),
        (
            Method::POST,
            "/api/catalog/products/TEA-1/restock".into(),
            Some(json!({"quantity": 5})),
            staff(200),
        ),
        (
            Method::POST,
            "/api/checkout/orders".into(),
            Some(order_body("TEA-1")),
            [401, 401, 201, 201, 403],
        ),
        (
            Method::GET,
            "/api/checkout/orders".into(),
            None,
            [401, 401, 200, 200, 200],
        ),
        (
            Method::GET,
            format!("/api/checkout/orders/{shipped}"),
            None,
            [401, 401, 200, 404, 200],
        ),
        (
            Method::GET,
            "/api/fulfillment/shipments".into(),
            None,
            staff(200),
        ),
        (
            Method::GET,
            format!("/api/fulfillment/shipments?order_id={shipped}"),
            None,
            staff(200),
        ),
        (
            Method::GET,
            format!("/api/fulfillment/shipments/{shipment}"),
            None,
            staff(200),
        ),
        (
            Method::POST,
            format!("/api/fulfillment/shipments/{shipment}/dispatch"),
            None,
            staff(200),
        ),
        (
            Method::POST,
            format!("/api/fulfillment/shipments/{shipment}/deliver"),
            None,
            staff(200),
        ),
        // B first: B's attempt must leave A's order as it was, for A to cancel it.
        (
            Method::POST,
            format!("/api/checkout/orders/{kept}/cancel"),
            None,
            [401, 401, 200, 404, 403],
        ),
    ];
    let tried: std::collections::BTreeSet<(&str, &str)> = rows
        .iter()
        .map(|(method, path, _, _)| {
            let template = template_of(method.as_str(), path)
                .unwrap_or_else(|| panic!("{method} {path} is in no route of ROUTES"));
            (
                ROUTES
                    .iter()
                    .find(|(m, t)| *m == method.as_str() && *t == template)
                    .map(|(m, _)| *m)
                    .expect("listed"),
                template,
            )
        })
        .collect();
    let all: std::collections::BTreeSet<(&str, &str)> = ROUTES.iter().copied().collect();
    assert_eq!(tried, all, "the table tries every route");
    for (method, path, body, expected) in &rows {
        // Customer B before customer A, staff last: a refused call must change nothing
        // for the allowed one after it.
        for who in [
            Who::Nobody,
            Who::Forged,
            Who::CustomerB,
            Who::Staff,
            Who::CustomerA,
        ] {
            let want = expected[EVERYONE.iter().position(|w| *w == who).expect("listed")];
            let reply = app
                .send(method.clone(), path, tokens.of(who), body.as_ref())
                .await;
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
                403 => assert_eq!(reply.error_code(), "forbidden"),
                404 => assert_eq!(reply.error_code(), "order_not_found"),
                _ => {}
            }
        }
    }

    // What each customer's list holds: their own orders only.
    for (token, owner) in [(&tokens.a, "customer-a"), (&tokens.b, "customer-b")] {
        let page = app
            .send(Method::GET, "/api/checkout/orders", Some(token), None)
            .await;
        let items = page.body["items"].as_array().expect("items");
        assert!(!items.is_empty(), "{owner} placed orders");
        assert!(
            items.iter().all(|o| o["customer_id"] == owner),
            "{owner} sees only their orders: {}",
            page.text
        );
    }
    let all = app
        .send(
            Method::GET,
            "/api/checkout/orders",
            Some(&tokens.staff),
            None,
        )
        .await;
    let owners: std::collections::BTreeSet<&str> = all.body["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|o| o["customer_id"].as_str())
        .collect();
    assert_eq!(
        owners,
        ["customer-a", "customer-b"].into(),
        "staff see every order"
    );
    let cancelled = shop.order_becomes(&kept, "cancelled").await;
    assert_eq!(cancelled["customer_id"], "customer-a");
}

/// A customer's `Idempotency-Key` is theirs: the same key and body from another customer
/// places another order, never hands back the first customer's.
async fn an_idempotency_key_belongs_to_one_customer(backend: Backend) {
    let shop = Shop::open(backend).await;
    let app = &shop.app;
    shop.product("TEA-1", 450, 10).await;
    let place = |token: String| {
        let body = order_body("TEA-1");
        async move {
            testkit::read(
                app.anonymous
                    .post(app.url("/api/checkout/orders"))
                    .bearer_auth(token)
                    .header("Idempotency-Key", "same-key")
                    .json(&body)
                    .send()
                    .await,
            )
            .await
        }
    };
    let a = place(app.token(&[Role::Customer], "customer-a")).await;
    a.expect_status(201);
    let again = place(app.token(&[Role::Customer], "customer-a")).await;
    assert_eq!(again.body["id"], a.body["id"], "A's retry gets A's order");
    let b = place(app.token(&[Role::Customer], "customer-b")).await;
    b.expect_status(201);
    assert_ne!(b.body["id"], a.body["id"], "B never gets A's order");
    assert_eq!(b.body["customer_id"], "customer-b");
    assert_eq!(b.header("idempotent-replayed"), None);
}

on_both_backends!(
    every_route_admits_exactly_the_roles_its_rule_names,
    an_idempotency_key_belongs_to_one_customer,
);
