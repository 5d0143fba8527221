//! A bounded hostile-input run: every route, as nobody, as two customers, as staff and
//! with a forged token, with generated and malicious path segments, query strings and
//! bodies (wrong types, huge numbers, NUL and control characters, deep nesting, unicode,
//! SQL and path tricks). No answer may be a 5xx, and no customer may reach the other's
//! order. The seed is printed, so a failure can be replayed with `FUZZ_SEED=<seed>`.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};
use testkit::{Backend, Role, on_both_backends};

use crate::access::ROUTES;
use crate::shop::Shop;

/// How long each backend's run may take.
const BUDGET: Duration = Duration::from_secs(20);

const NASTY: &[&str] = &[
    "",
    " ",
    "\u{0}",
    "a\u{0}b",
    "\u{1b}[31m",
    "'; DROP TABLE orders; --",
    "../../etc/passwd",
    "%00",
    "%2e%2e%2f",
    "TEA-1",
    "00000000-0000-0000-0000-000000000000",
    "ﾟ･✿ヾ╲(｡◕‿◕｡)╱✿･ﾟ",
    "\u{202e}gnp.exe",
    "9223372036854775808",
    "-1",
    "1e309",
    "null",
];

fn nasty_string(rng: &mut fastrand::Rng) -> String {
    match rng.u8(0..4) {
        0 => NASTY[rng.usize(0..NASTY.len())].to_owned(),
        1 => "x".repeat(rng.usize(0..5000)),
        2 => (0..rng.usize(1..40)).map(|_| rng.char(..)).collect(),
        _ => uuid::Uuid::new_v4().to_string(),
    }
}

fn nasty_value(rng: &mut fastrand::Rng, depth: u32) -> Value {
    match rng.u8(0..10) {
        0 => Value::Null,
        1 => json!(rng.bool()),
        2 => json!(rng.i64(..)),
        3 => json!(rng.f64() * 1e300),
        4 | 5 => json!(nasty_string(rng)),
        6 if depth < 6 => Value::Array(
            (0..rng.usize(0..4))
                .map(|_| nasty_value(rng, depth + 1))
                .collect(),
        ),
        7 if depth < 6 => nasty_object(rng, depth + 1),
        _ => json!(rng.i64(-5..1000)),
    }
}

/// An object with the routes' own field names (so validation is reached), and junk.
fn nasty_object(rng: &mut fastrand::Rng, depth: u32) -> Value {
    const FIELDS: &[&str] = &[
        "sku",
        "name",
        "description",
        "price_minor",
        "currency",
        "initial_stock",
        "quantity",
        "customer_email",
        "items",
        "shipping_address",
        "payment_token",
        "line1",
        "city",
        "postal_code",
        "country",
    ];
    let mut map = serde_json::Map::new();
    for _ in 0..rng.usize(0..8) {
        let key = if rng.bool() {
            FIELDS[rng.usize(0..FIELDS.len())].to_owned()
        } else {
            nasty_string(rng)
        };
        map.insert(key, nasty_value(rng, depth));
    }
    Value::Object(map)
}

fn encode(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

async fn no_input_makes_a_5xx_or_crosses_customers(backend: Backend) {
    let shop = Shop::open(backend).await;
    let app = &shop.app;
    shop.product("TEA-1", 450, 1000).await;
    let a = app.token(&[Role::Customer], "customer-a");
    let b = app.token(&[Role::Customer], "customer-b");
    let staff = app.token(&[Role::Staff], "staff-1");
    let forged = format!("{}x", &a[..a.len() - 1]);
    let placed = app
        .send(
            Method::POST,
            "/api/checkout/orders",
            Some(&a),
            Some(&Shop::order_body(&[("TEA-1", 1)], "tok_visa")),
        )
        .await;
    placed.expect_status(201);
    let a_order = placed.body["id"].as_str().expect("an id").to_owned();
    let seed = std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    eprintln!("fuzz seed: {seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    let callers: [(&str, Option<&str>); 5] = [
        ("nobody", None),
        ("forged", Some(&forged)),
        ("customer-a", Some(&a)),
        ("customer-b", Some(&b)),
        ("staff", Some(&staff)),
    ];
    let started = Instant::now();
    let mut sent = 0u32;
    while started.elapsed() < BUDGET {
        let (method, template) = ROUTES[rng.usize(0..ROUTES.len())];
        let path: String = template
            .split('/')
            .map(|part| {
                if !part.starts_with('{') {
                    part.to_owned()
                } else if rng.u8(0..4) == 0 {
                    a_order.clone()
                } else {
                    encode(&nasty_string(&mut rng))
                }
            })
            .collect::<Vec<_>>()
            .join("/");
        let query = match rng.u8(0..3) {
            0 => String::new(),
            _ => format!(
                "?{}={}&{}={}",
                ["limit", "after", "order_id", "status"][rng.usize(0..4)],
                encode(&nasty_string(&mut rng)),
                encode(&nasty_string(&mut rng)),
                encode(&nasty_string(&mut rng)),
            ),
        };
        let body = matches!(method, "POST" | "PATCH").then(|| match rng.u8(0..4) {
            0 => nasty_value(&mut rng, 0),
            _ => nasty_object(&mut rng, 0),
        });
        let (who, token) = callers[rng.usize(0..callers.len())];
        let method = Method::from_bytes(method.as_bytes()).expect("a method");
        let url = format!("{path}{query}");
        let reply = app.send(method.clone(), &url, token, body.as_ref()).await;
        sent += 1;
        assert!(
            reply.status < 500,
            "seed {seed}: {method} {url} as {who} with {body:?} answered {}: {}",
            reply.status,
            reply.text
        );
        // B never sees or changes A's order.
        if who == "customer-b" && path.contains(&a_order) && path.contains("/checkout/orders/") {
            assert_eq!(
                reply.status, 404,
                "seed {seed}: {method} {url} as B: {}",
                reply.text
            );
        }
    }
    let after = app
        .send(
            Method::GET,
            &format!("/api/checkout/orders/{a_order}"),
            Some(&a),
            None,
        )
        .await;
    after.expect_status(200);
    assert_eq!(after.body["customer_id"], "customer-a");
    eprintln!("fuzz: {sent} requests in {:?}", started.elapsed());
}

on_both_backends!(no_input_makes_a_5xx_or_crosses_customers);
