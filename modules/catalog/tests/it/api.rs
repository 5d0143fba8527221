//! Catalog's HTTP API, on SQLite and on PostgreSQL.

use serde_json::Value;
use testkit::{Backend, TestApp, json, on_both_backends};

/// Catalog alone, remembering product reads for a minute: a read after a change shows it
/// only because the change forgot the product.
async fn catalog(backend: Backend) -> TestApp {
    crate::catalog_alone(backend, crate::LONG_CACHE_MS).await.0
}

fn tea(sku: &str) -> Value {
    json!({
        "sku": sku,
        "name": "Green tea",
        "description": "Sencha, 100 g",
        "price_minor": 450,
        "currency": "EUR",
        "initial_stock": 10
    })
}

on_both_backends!(
    creating_a_product_returns_it_with_its_location,
    a_duplicate_sku_is_a_conflict_and_changes_nothing,
    every_invalid_field_is_named_and_nothing_is_stored,
    bodies_that_are_not_json_objects_are_refused,
    an_unknown_sku_is_not_found_everywhere,
    patching_changes_only_what_is_sent,
    patching_refuses_read_only_fields_and_empty_changes,
    restocking_adds_units,
    restocking_refuses_bad_quantities,
    listing_walks_pages_by_sku,
    listing_refuses_bad_parameters,
);

async fn creating_a_product_returns_it_with_its_location(backend: Backend) {
    let app = catalog(backend).await;
    let created = app.post("/api/catalog/products", &tea("TEA-1")).await;
    created.expect_status(201);
    assert_eq!(
        created.header("location"),
        Some("/api/catalog/products/TEA-1")
    );
    let expected = json!({
        "sku": "TEA-1", "name": "Green tea", "description": "Sencha, 100 g",
        "price_minor": 450, "currency": "EUR", "available": 10
    });
    assert_eq!(created.body, expected);
    let fetched = app.get("/api/catalog/products/TEA-1").await;
    fetched.expect_status(200);
    assert_eq!(fetched.body, expected);
}

async fn a_duplicate_sku_is_a_conflict_and_changes_nothing(backend: Backend) {
    let app = catalog(backend).await;
    app.post("/api/catalog/products", &tea("TEA-1"))
        .await
        .expect_status(201);
    let mut other = tea("TEA-1");
    other["name"] = json!("Another tea");
    let again = app.post("/api/catalog/products", &other).await;
    again.expect_status(409);
    assert_eq!(again.error_code(), "duplicate_sku");
    let fetched = app.get("/api/catalog/products/TEA-1").await;
    assert_eq!(fetched.body["name"], "Green tea");
}

async fn every_invalid_field_is_named_and_nothing_is_stored(backend: Backend) {
    let app = catalog(backend).await;
    // Each row: a body, and exactly the fields the answer must name.
    let cases: Vec<(Value, Vec<&str>)> = vec![
        (
            json!({}),
            vec!["currency", "initial_stock", "name", "price_minor", "sku"],
        ),
        (
            json!({"sku": "has space", "name": " ", "price_minor": -1, "currency": "eur", "initial_stock": -5}),
            vec!["currency", "initial_stock", "name", "price_minor", "sku"],
        ),
        (
            json!({"sku": 12, "name": ["x"], "price_minor": "450", "currency": "EUR", "initial_stock": 1.5}),
            vec!["initial_stock", "name", "price_minor", "sku"],
        ),
        (
            json!({"sku": "A", "name": "n", "price_minor": 1, "currency": "ZZZ", "initial_stock": 1}),
            vec!["currency"],
        ),
        (
            json!({"sku": "x".repeat(65), "name": "n".repeat(201), "description": "d".repeat(2001),
                   "price_minor": 100_000_000_000_001_i64, "currency": "EUR", "initial_stock": 1_000_000_001}),
            vec!["description", "initial_stock", "name", "price_minor", "sku"],
        ),
        (
            json!({"sku": "A", "name": "n", "price_minor": i64::MAX, "currency": "EUR", "initial_stock": u64::MAX}),
            vec!["initial_stock", "price_minor"],
        ),
    ];
    for (body, fields) in cases {
        let reply = app.post("/api/catalog/products", &body).await;
        assert_eq!(reply.status, 400, "{body}: {}", reply.text);
        assert_eq!(reply.error_code(), "validation_failed", "{body}");
        assert_eq!(reply.error_fields(), fields, "{body}: {}", reply.text);
        for field in &fields {
            let message = &reply.body["error"]["fields"][field]["message"];
            assert!(
                message.as_str().is_some_and(|m| !m.is_empty()),
                "{field} has a message: {}",
                reply.text
            );
        }
    }
    let listed = app.get("/api/catalog/products").await;
    assert_eq!(listed.body["items"], json!([]), "nothing was stored");
}

async fn bodies_that_are_not_json_objects_are_refused(backend: Backend) {
    let app = catalog(backend).await;
    let path = "/api/catalog/products";
    let post = reqwest::Method::POST;
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "application/json",
            b"{\"sku\": ".to_vec(),
            400,
            "malformed_json",
        ),
        ("application/json", b"[1, 2]".to_vec(), 400, "invalid_body"),
        ("application/json", b"".to_vec(), 400, "missing_body"),
        (
            "application/json",
            vec![0xff, 0xfe, 0x00],
            400,
            "malformed_json",
        ),
        (
            "text/plain",
            serde_json::to_vec(&tea("TEA-1")).expect("json"),
            415,
            "unsupported_media_type",
        ),
        (
            "application/json",
            format!("{{\"sku\": \"{}\"}}", "x".repeat(70_000)).into_bytes(),
            413,
            "payload_too_large",
        ),
    ];
    for (content_type, body, status, code) in cases {
        let reply = app.send_raw(post.clone(), path, content_type, body).await;
        assert_eq!(
            (reply.status, reply.error_code()),
            (status, code),
            "{}",
            reply.text
        );
    }
    let listed = app.get("/api/catalog/products").await;
    assert_eq!(listed.body["items"], json!([]));
}

async fn an_unknown_sku_is_not_found_everywhere(backend: Backend) {
    let app = catalog(backend).await;
    let replies = [
        app.get("/api/catalog/products/NOPE").await,
        app.patch("/api/catalog/products/NOPE", &json!({"name": "x"}))
            .await,
        app.post(
            "/api/catalog/products/NOPE/restock",
            &json!({"quantity": 1}),
        )
        .await,
    ];
    for reply in replies {
        assert_eq!(
            (reply.status, reply.error_code()),
            (404, "product_not_found"),
            "{}",
            reply.text
        );
    }
    let bad = app.get("/api/catalog/products/not%20a%20sku").await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.error_fields(), ["sku"]);
}

async fn patching_changes_only_what_is_sent(backend: Backend) {
    let app = catalog(backend).await;
    app.post("/api/catalog/products", &tea("TEA-1"))
        .await
        .expect_status(201);
    let renamed = app
        .patch(
            "/api/catalog/products/TEA-1",
            &json!({"name": "Sencha", "price_minor": 500}),
        )
        .await;
    renamed.expect_status(200);
    assert_eq!(renamed.body["name"], "Sencha");
    assert_eq!(renamed.body["price_minor"], 500);
    assert_eq!(renamed.body["description"], "Sencha, 100 g");
    assert_eq!(renamed.body["currency"], "EUR");
    let cleared = app
        .patch("/api/catalog/products/TEA-1", &json!({"description": null}))
        .await;
    cleared.expect_status(200);
    assert_eq!(cleared.body["description"], Value::Null);
    assert_eq!(cleared.body["name"], "Sencha");
    let fetched = app.get("/api/catalog/products/TEA-1").await;
    assert_eq!(fetched.body, cleared.body);
}

async fn patching_refuses_read_only_fields_and_empty_changes(backend: Backend) {
    let app = catalog(backend).await;
    app.post("/api/catalog/products", &tea("TEA-1"))
        .await
        .expect_status(201);
    let read_only = app
        .patch(
            "/api/catalog/products/TEA-1",
            &json!({"sku": "X", "currency": "USD", "price_minor": -1}),
        )
        .await;
    assert_eq!(read_only.status, 400);
    assert_eq!(read_only.error_fields(), ["currency", "price_minor", "sku"]);
    let empty = app.patch("/api/catalog/products/TEA-1", &json!({})).await;
    assert_eq!(
        (empty.status, empty.error_code()),
        (400, "nothing_to_change")
    );
    let fetched = app.get("/api/catalog/products/TEA-1").await;
    assert_eq!(fetched.body["price_minor"], 450);
}

async fn restocking_adds_units(backend: Backend) {
    let app = catalog(backend).await;
    app.post("/api/catalog/products", &tea("TEA-1"))
        .await
        .expect_status(201);
    let restocked = app
        .post(
            "/api/catalog/products/TEA-1/restock",
            &json!({"quantity": 5}),
        )
        .await;
    restocked.expect_status(200);
    assert_eq!(restocked.body["available"], 15);
    let fetched = app.get("/api/catalog/products/TEA-1").await;
    assert_eq!(fetched.body["available"], 15);
}

async fn restocking_refuses_bad_quantities(backend: Backend) {
    let app = catalog(backend).await;
    app.post("/api/catalog/products", &tea("TEA-1"))
        .await
        .expect_status(201);
    for body in [
        json!({}),
        json!({"quantity": 0}),
        json!({"quantity": -3}),
        json!({"quantity": "5"}),
        json!({"quantity": 1_000_001}),
    ] {
        let reply = app.post("/api/catalog/products/TEA-1/restock", &body).await;
        assert_eq!(reply.status, 400, "{body}");
        assert_eq!(reply.error_fields(), ["quantity"], "{body}");
    }
    // At the stock ceiling, more is refused as a business rule and nothing changes.
    let mut full = tea("FULL");
    full["initial_stock"] = json!(999_999_999);
    app.post("/api/catalog/products", &full)
        .await
        .expect_status(201);
    app.post(
        "/api/catalog/products/FULL/restock",
        &json!({"quantity": 1}),
    )
    .await
    .expect_status(200);
    let over = app
        .post(
            "/api/catalog/products/FULL/restock",
            &json!({"quantity": 1}),
        )
        .await;
    assert_eq!(
        (over.status, over.error_code()),
        (422, "stock_limit"),
        "{}",
        over.text
    );
    let fetched = app.get("/api/catalog/products/FULL").await;
    assert_eq!(fetched.body["available"], 1_000_000_000);
}

async fn listing_walks_pages_by_sku(backend: Backend) {
    let app = catalog(backend).await;
    for sku in ["E", "A", "D", "C", "B"] {
        app.post("/api/catalog/products", &tea(sku))
            .await
            .expect_status(201);
    }
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &after {
            Some(a) => format!("/api/catalog/products?limit=2&after={a}"),
            None => "/api/catalog/products?limit=2".to_owned(),
        };
        let page = app.get(&path).await;
        page.expect_status(200);
        pages += 1;
        for item in page.body["items"].as_array().expect("items") {
            seen.push(item["sku"].as_str().expect("sku").to_owned());
        }
        match page.body["next_after"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => break,
        }
        assert!(pages < 10, "pagination must end");
    }
    assert_eq!(seen, ["A", "B", "C", "D", "E"]);
    assert_eq!(pages, 3);
    let all = app.get("/api/catalog/products").await;
    assert_eq!(all.body["items"].as_array().map(Vec::len), Some(5));
    assert_eq!(all.body["next_after"], Value::Null);
}

async fn listing_refuses_bad_parameters(backend: Backend) {
    let app = catalog(backend).await;
    let cases = [
        ("limit=0", vec!["limit"]),
        ("limit=101", vec!["limit"]),
        ("limit=abc", vec!["limit"]),
        ("limit=-1", vec!["limit"]),
        ("after=a%20b", vec!["after"]),
        ("limit=0&after=a%20b", vec!["after", "limit"]),
    ];
    for (query, fields) in cases {
        let reply = app.get(&format!("/api/catalog/products?{query}")).await;
        assert_eq!(reply.status, 400, "{query}: {}", reply.text);
        assert_eq!(reply.error_fields(), fields, "{query}: {}", reply.text);
    }
}
