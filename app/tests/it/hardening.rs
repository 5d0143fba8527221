//! Hostile clients and hostile input: a body trickled slowly is cut off; a NUL byte in any
//! string is the caller's 400, on PostgreSQL too (which refuses NUL in text).

use std::time::{Duration, Instant};

use testkit::{Backend, Role, Spawn, json, on_both_backends};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn a_body_that_does_not_arrive_in_time_is_cut_off(backend: Backend) {
    let app = Spawn::new(backend, app::modules())
        .configure(|s| s.server.body_timeout_ms = 500)
        .start()
        .await;
    let address = app.address.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&address)
        .await
        .expect("connect");
    let head = format!(
        "POST /api/catalog/products HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"sku\":",
        app.token(&[Role::Staff], "staff-1"),
    );
    stream.write_all(head.as_bytes()).await.expect("write");
    let started = Instant::now();
    let mut answer = String::new();
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        let mut buf = [0u8; 1024];
        let n = stream.read(&mut buf).await.expect("read");
        answer.push_str(&String::from_utf8_lossy(&buf[..n]));
    })
    .await;
    assert!(read.is_ok(), "the server answered within 5 s");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("body_timeout"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(
        app.get("/api/catalog/products").await.body["items"],
        json!([]),
        "nothing was created"
    );
}

async fn a_nul_byte_in_any_string_is_a_400_naming_the_field(backend: Backend) {
    let app = Spawn::new(backend, app::modules()).start().await;
    let product = app
        .post(
            "/api/catalog/products",
            &json!({"sku": "TEA-1", "name": "Te\u{0}a", "description": "a\u{0}b",
                    "price_minor": 1, "currency": "EUR", "initial_stock": 1}),
        )
        .await;
    product.expect_status(400);
    assert_eq!(product.error_fields(), ["description", "name"]);
    let order = app
        .post(
            "/api/checkout/orders",
            &json!({"customer_email": "ada@example.com", "items": [{"sku": "TEA-1", "quantity": 1}],
                    "shipping_address": {"name": "Ada", "line1": "1 Road", "city": "London",
                                         "postal_code": "N1", "country": "GB"},
                    "payment_token": "tok\u{0}visa"}),
        )
        .await;
    order.expect_status(400);
    assert_eq!(order.error_fields(), ["payment_token"]);
    let price = app.get("/api/checkout/prices/TEA%001").await;
    price.expect_status(400);
    assert_eq!(price.error_fields(), ["sku"]);
    let patch = app
        .patch("/api/catalog/products/TEA-1", &json!({"name": "\u{0}"}))
        .await;
    patch.expect_status(400);
}

on_both_backends!(
    a_body_that_does_not_arrive_in_time_is_cut_off,
    a_nul_byte_in_any_string_is_a_400_naming_the_field,
);
