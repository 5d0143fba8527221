//! Who may call what: every route of the monolith, called by nobody, by two customers, by
//! staff and with a forged token, against its rule. The rows of the routes every process
//! serves and of fulfillment's are `testkit::access`'s, which the extracted service's test
//! runs too. A customer's orders are theirs alone: another customer gets 404, as if the
//! order did not exist.

use reqwest::Method;
use serde_json::Value;
use testkit::access::{PUBLIC, Row, Tokens, Who, check_every_caller, staff, tried};
use testkit::{Backend, Role, json, on_both_backends};

use crate::shop::Shop;

pub(crate) use testkit::access::{ROUTES, template_of};

fn order_body(sku: &str) -> Value {
    Shop::order_body(&[(sku, 1)], "tok_visa")
}

async fn every_route_admits_exactly_the_roles_its_rule_names(backend: Backend) {
    let shop = Shop::open(backend).await;
    let app = &shop.app;
    shop.product("TEA-1", 450, 100).await;
    let tokens = Tokens::new(&app.settings);
    // Customer A's orders: one to ship, one to cancel.
    let place_as_a = |sku: &'static str| {
        let tokens = &tokens;
        async move {
            let reply = app
                .send(
                    Method::POST,
                    "/api/checkout/orders",
                    tokens.of(Who::CustomerA),
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
    // Rows run in order, so a row that changes state comes after the rows that read it.
    // The rows every process shares and fulfillment's are testkit's, which the extracted
    // service's test runs too.
    let mut rows = testkit::access::every_process_rows();
    rows.extend([
        Row::new(Method::GET, "/api/catalog/products", PUBLIC),
        Row::new(Method::GET, "/api/catalog/products/TEA-1", PUBLIC),
        Row::new(Method::GET, "/api/checkout/prices/TEA-1", PUBLIC),
        Row::new(Method::POST, "/api/catalog/products", staff(201)).with_body(product),
        Row::new(Method::PATCH, "/api/catalog/products/TEA-1", staff(200))
            .with_body(json!({"name": "Green tea"})),
        Row::new(
            Method::POST,
            "/api/catalog/products/TEA-1/restock",
            staff(200),
        )
        .with_body(json!({"quantity": 5})),
        Row::new(
            Method::POST,
            "/api/checkout/orders",
            [401, 401, 201, 201, 403],
        )
        .with_body(order_body("TEA-1")),
        Row::new(
            Method::GET,
            "/api/checkout/orders",
            [401, 401, 200, 200, 200],
        ),
        Row::new(
            Method::GET,
            format!("/api/checkout/orders/{shipped}"),
            [401, 401, 200, 404, 200],
        ),
    ]);
    rows.extend(testkit::access::fulfillment_rows(&shipment, &shipped));
    // B before A: B's attempt must leave A's order as it was, for A to cancel it.
    rows.push(Row::new(
        Method::POST,
        format!("/api/checkout/orders/{kept}/cancel"),
        [401, 401, 200, 404, 403],
    ));
    let all: std::collections::BTreeSet<(&str, &str)> = ROUTES.iter().copied().collect();
    assert_eq!(tried(&rows), all, "the table tries every route");
    check_every_caller(&app.url(""), &rows, &tokens).await;

    // What each customer's list holds: their own orders only.
    for (who, owner) in [
        (Who::CustomerA, "customer-a"),
        (Who::CustomerB, "customer-b"),
    ] {
        let page = app
            .send(Method::GET, "/api/checkout/orders", tokens.of(who), None)
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
            tokens.of(Who::Staff),
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
