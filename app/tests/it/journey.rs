//! The order journey over HTTP, through catalog, checkout and fulfillment by events alone
//! (placed, stock held, paid, confirmed, shipped, delivered, and every other ending), on SQLite and on PostgreSQL.

use contracts::Event;
use contracts::catalog::ProductRepricedV1;
use testkit::{Backend, Spawn, eventually, json, on_both_backends};

use crate::shop::Shop;

on_both_backends!(
    an_order_travels_from_placement_to_delivery,
    an_order_beyond_the_stock_is_rejected_and_holds_nothing,
    a_declined_payment_rejects_the_order_and_releases_its_stock,
    a_cancel_before_dispatch_releases_stock_and_cancels_the_shipment,
    a_cancel_after_dispatch_is_refused,
    a_cancel_while_pending_stops_the_order_before_payment,
    an_idempotency_key_gives_back_the_same_order,
    an_idempotency_key_expires_and_may_then_place_a_new_order,
    orders_placed_at_once_are_each_answered_once_and_keys_hold,
    an_order_checkout_cannot_price_is_refused,
    an_invalid_order_names_every_bad_field,
    a_new_price_reaches_checkout_and_an_old_one_never_returns,
    concurrent_reprices_each_get_their_own_version_and_checkout_keeps_the_last,
);

async fn an_order_travels_from_placement_to_delivery(backend: Backend) {
    let shop = Shop::open(backend).await;
    shop.product("TEA-1", 450, 5).await;
    shop.product("MUG-7", 1200, 2).await;
    let id = shop.place(&[("TEA-1", 2), ("MUG-7", 1)], "tok_visa").await;
    let order = shop.order(&id).await;
    assert_eq!(order["total_minor"], 2100);
    assert_eq!(order["currency"], "EUR");

    let confirmed = shop.order_becomes(&id, "confirmed").await;
    assert_eq!(confirmed["status_reason"], serde_json::Value::Null);
    assert_eq!(shop.available("TEA-1").await, 3);
    assert_eq!(shop.available("MUG-7").await, 1);

    let shipment = shop.shipment_becomes(&id, "ready").await;
    let shipment_id = shipment["id"].as_str().expect("id");
    let dispatched = shop.dispatch(shipment_id).await;
    dispatched.expect_status(200);
    assert_eq!(dispatched.body["status"], "dispatched");
    assert!(
        dispatched.body["tracking_number"]
            .as_str()
            .is_some_and(|t| t.starts_with("TRK-"))
    );
    shop.order_becomes(&id, "shipped").await;

    shop.deliver(shipment_id).await.expect_status(200);
    shop.order_becomes(&id, "delivered").await;
    let fetched = shop
        .app
        .get(&format!("/api/fulfillment/shipments/{shipment_id}"))
        .await;
    assert_eq!(fetched.body["status"], "delivered");
    // Transitions the status does not allow are conflicts.
    let again = shop.dispatch(shipment_id).await;
    assert_eq!(
        (again.status, again.error_code()),
        (409, "invalid_transition")
    );
    let twice = shop.deliver(shipment_id).await;
    assert_eq!(twice.status, 409);
}

async fn an_order_beyond_the_stock_is_rejected_and_holds_nothing(backend: Backend) {
    let shop = Shop::open(backend).await;
    shop.product("TEA-1", 450, 5).await;
    shop.product("MUG-7", 1200, 2).await;
    let id = shop.place(&[("TEA-1", 1), ("MUG-7", 3)], "tok_visa").await;
    let order = shop.order_becomes(&id, "rejected").await;
    assert_eq!(order["status_reason"], "out_of_stock");
    shop.settled().await;
    assert_eq!(shop.available("TEA-1").await, 5, "all lines or none");
    assert_eq!(shop.available("MUG-7").await, 2);
    assert!(shop.shipments_of(&id).await.is_empty());
}

async fn a_declined_payment_rejects_the_order_and_releases_its_stock(backend: Backend) {
    let shop = Shop::open(backend).await;
    shop.product("TEA-1", 450, 5).await;
    let id = shop.place(&[("TEA-1", 2)], checkout::DECLINED_TOKEN).await;
    let order = shop.order_becomes(&id, "rejected").await;
    assert_eq!(order["status_reason"], "payment_declined");
    shop.available_becomes("TEA-1", 5).await;
    shop.settled().await;
    assert!(shop.shipments_of(&id).await.is_empty());
    assert_eq!(
        shop.rows("catalog", "order_holds", "status = 'released'")
            .await,
        1
    );
}

async fn a_cancel_before_dispatch_releases_stock_and_cancels_the_shipment(backend: Backend) {
    let shop = Shop::open(backend).await;
    shop.product("TEA-1", 450, 5).await;
    let id = shop.place(&[("TEA-1", 2)], "tok_visa").await;
    shop.order_becomes(&id, "confirmed").await;
    let shipment = shop.shipment_becomes(&id, "ready").await;
    assert_eq!(shop.available("TEA-1").await, 3);

    let cancelled = shop.cancel(&id).await;
    cancelled.expect_status(200);
    assert_eq!(cancelled.body["status"], "cancelled");
    assert_eq!(cancelled.body["status_reason"], "cancelled_by_customer");
    shop.available_becomes("TEA-1", 5).await;
    shop.shipment_becomes(&id, "cancelled").await;
    let late = shop.dispatch(shipment["id"].as_str().expect("id")).await;
    assert_eq!(late.status, 409);
    // Cancelling again changes nothing and still succeeds.
    let again = shop.cancel(&id).await;
    again.expect_status(200);
    assert_eq!(again.body["status"], "cancelled");
    shop.settled().await;
    assert_eq!(shop.available("TEA-1").await, 5);
}

async fn a_cancel_after_dispatch_is_refused(backend: Backend) {
    let shop = Shop::open(backend).await;
    shop.product("TEA-1", 450, 5).await;
    let id = shop.place(&[("TEA-1", 2)], "tok_visa").await;
    let shipment = shop.shipment_becomes(&id, "ready").await;
    shop.dispatch(shipment["id"].as_str().expect("id"))
        .await
        .expect_status(200);
    shop.order_becomes(&id, "shipped").await;
    let refused = shop.cancel(&id).await;
    assert_eq!(
        (refused.status, refused.error_code()),
        (409, "order_already_shipped")
    );
    assert_eq!(shop.order(&id).await["status"], "shipped");
    assert_eq!(shop.available("TEA-1").await, 3);
}

async fn a_cancel_while_pending_stops_the_order_before_payment(backend: Backend) {
    let shop = Shop::open(backend).await;
    shop.product("TEA-1", 450, 5).await;
    // Place and cancel at once: whatever catalog and the payment worker did meanwhile, the
    // order ends cancelled, its stock free, and no shipment exists.
    let id = shop.place(&[("TEA-1", 2)], "tok_visa").await;
    let cancelled = shop.cancel(&id).await;
    cancelled.expect_status(200);
    shop.settled().await;
    let order = shop.order(&id).await;
    assert_eq!(order["status"], "cancelled", "{order}");
    assert_eq!(shop.available("TEA-1").await, 5);
    let shipments = shop.shipments_of(&id).await;
    assert!(
        shipments.is_empty() || shipments.iter().all(|s| s["status"] == "cancelled"),
        "{shipments:?}"
    );
}

async fn an_idempotency_key_gives_back_the_same_order(backend: Backend) {
    let shop = Shop::open(backend).await;
    shop.product("TEA-1", 450, 5).await;
    let body = Shop::order_body(&[("TEA-1", 1)], "tok_visa");
    let send = |key: &'static str, body: serde_json::Value| {
        let app = &shop.app;
        async move {
            testkit::read(
                app.client
                    .post(app.url("/api/checkout/orders"))
                    .header("Idempotency-Key", key)
                    .json(&body)
                    .send()
                    .await,
            )
            .await
        }
    };
    let first = send("order-42", body.clone()).await;
    first.expect_status(201);
    let second = send("order-42", body.clone()).await;
    second.expect_status(201);
    assert_eq!(second.body["id"], first.body["id"]);
    assert_eq!(second.header("idempotent-replayed"), Some("true"));
    let mut other = body.clone();
    other["items"][0]["quantity"] = json!(2);
    let reused = send("order-42", other).await;
    assert_eq!(
        (reused.status, reused.error_code()),
        (422, "idempotency_key_reused")
    );
    let bad = send("has space", body).await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.error_fields(), ["Idempotency-Key"]);
    shop.settled().await;
    assert_eq!(shop.rows("checkout", "orders", "1 = 1").await, 1);
    assert_eq!(shop.available("TEA-1").await, 4);
}

/// Forty orders at once, as placement writes them in shared transactions: twenty without
/// a key each get an order; ten with one key and one body get one order between them,
/// the others replaying it; ten with another key and ten different bodies get one order,
/// the others refused as reusing the key. Every order has its stock held, exactly once.
async fn orders_placed_at_once_are_each_answered_once_and_keys_hold(backend: Backend) {
    let shop = Shop::open(backend).await;
    shop.product("TEA-1", 450, 500).await;
    let send = |key: Option<&'static str>, quantity: i64| {
        let app = &shop.app;
        async move {
            let mut request = app.client.post(app.url("/api/checkout/orders"));
            if let Some(key) = key {
                request = request.header("Idempotency-Key", key);
            }
            let body = Shop::order_body(&[("TEA-1", quantity)], "tok_visa");
            testkit::read(request.json(&body).send().await).await
        }
    };
    let requests = (0..40).map(|i| match i {
        0..20 => send(None, 1),
        20..30 => send(Some("same-body"), 2),
        _ => send(Some("many-bodies"), i - 27),
    });
    let replies = futures::future::join_all(requests).await;
    let ids = |range: std::ops::Range<usize>, status: u16| -> Vec<String> {
        replies[range]
            .iter()
            .filter(|r| r.status == status)
            .map(|r| r.body["id"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    let unkeyed = ids(0..20, 201);
    assert_eq!(unkeyed.len(), 20);
    assert_eq!(
        unkeyed
            .iter()
            .collect::<std::collections::HashSet<_>>()
            .len(),
        20
    );
    let same = ids(20..30, 201);
    assert_eq!(
        same.len(),
        10,
        "every request with the same body is answered"
    );
    assert!(same.iter().all(|id| *id == same[0]), "{same:?}");
    let replayed = replies[20..30]
        .iter()
        .filter(|r| r.header("idempotent-replayed") == Some("true"))
        .count();
    assert_eq!(replayed, 9);
    let won = ids(30..40, 201);
    assert_eq!(won.len(), 1, "one body wins the key");
    for reply in replies[30..40].iter().filter(|r| r.status != 201) {
        assert_eq!(
            (reply.status, reply.error_code()),
            (422, "idempotency_key_reused"),
            "{}",
            reply.text
        );
    }
    let won_quantity = replies[30..40]
        .iter()
        .zip(3..)
        .find(|(r, _)| r.status == 201)
        .map(|(_, q)| q)
        .unwrap_or_default();
    shop.settled().await;
    assert_eq!(shop.rows("checkout", "orders", "1 = 1").await, 22);
    assert_eq!(
        shop.rows(
            "checkout",
            "outbox",
            "event_type = 'checkout.order_placed.v1'"
        )
        .await,
        22
    );
    assert_eq!(shop.available("TEA-1").await, 500 - 20 - 2 - won_quantity);
}

/// Past `modules.checkout.idempotency_retention_secs` the cleaner deletes a key (younger
/// keys stay), and the customer's next request with it places a new order.
async fn an_idempotency_key_expires_and_may_then_place_a_new_order(backend: Backend) {
    let app = Spawn::new(backend, app::modules())
        .configure(|s| {
            s.messaging.cleanup_interval_secs = 1;
            s.modules
                .sections
                .insert("checkout".into(), json!({"idempotency_retention_secs": 3}));
        })
        .start()
        .await;
    let shop = Shop::on(app);
    shop.product("TEA-1", 450, 5).await;
    let body = Shop::order_body(&[("TEA-1", 1)], "tok_visa");
    let send = || {
        let app = &shop.app;
        let body = body.clone();
        async move {
            testkit::read(
                app.client
                    .post(app.url("/api/checkout/orders"))
                    .header("Idempotency-Key", "order-43")
                    .json(&body)
                    .send()
                    .await,
            )
            .await
        }
    };
    let first = send().await;
    first.expect_status(201);
    let again = send().await;
    again.expect_status(201);
    assert_eq!(again.body["id"], first.body["id"], "a fresh key replays");
    eventually(20, "the expired key is deleted", || async {
        (shop.rows("checkout", "idempotency_keys", "1 = 1").await == 0).then_some(())
    })
    .await;
    let later = send().await;
    later.expect_status(201);
    assert_ne!(later.body["id"], first.body["id"], "{}", later.text);
    assert_eq!(later.header("idempotent-replayed"), None);
    assert_eq!(shop.rows("checkout", "idempotency_keys", "1 = 1").await, 1);
    shop.settled().await;
    assert_eq!(shop.rows("checkout", "orders", "1 = 1").await, 2);
}

async fn an_order_checkout_cannot_price_is_refused(backend: Backend) {
    let shop = Shop::open(backend).await;
    shop.product("TEA-1", 450, 5).await;
    let reply = shop
        .app
        .post(
            "/api/checkout/orders",
            &Shop::order_body(&[("TEA-1", 1), ("NOPE-1", 1)], "tok_visa"),
        )
        .await;
    assert_eq!(
        (reply.status, reply.error_code()),
        (422, "unknown_sku"),
        "{}",
        reply.text
    );
    assert_eq!(reply.error_fields(), ["items[1].sku"]);
    assert_eq!(shop.rows("checkout", "orders", "1 = 1").await, 0);
}

async fn an_invalid_order_names_every_bad_field(backend: Backend) {
    let shop = Shop::open(backend).await;
    let cases = [
        (
            json!({}),
            vec![
                "customer_email",
                "items",
                "payment_token",
                "shipping_address",
            ],
        ),
        (
            json!({"customer_email": "not-an-email", "items": [], "payment_token": " ",
                   "shipping_address": {"name": "", "line1": "x", "city": "c", "postal_code": "p", "country": "gbr"}}),
            vec![
                "customer_email",
                "items",
                "payment_token",
                "shipping_address.country",
                "shipping_address.name",
            ],
        ),
        (
            json!({"customer_email": "a@b.co", "items": [{"sku": "A", "quantity": 0}, {"sku": "bad sku", "quantity": 1}, {"quantity": "2"}],
                   "payment_token": "t", "shipping_address": crate::shop::address()}),
            vec![
                "items[0].quantity",
                "items[1].sku",
                "items[2].quantity",
                "items[2].sku",
            ],
        ),
        (
            json!({"customer_email": "a@b.co", "items": [{"sku": "A", "quantity": 1}, {"sku": "A", "quantity": 2}],
                   "payment_token": "t", "shipping_address": crate::shop::address()}),
            vec!["items[1].sku"],
        ),
    ];
    for (body, fields) in cases {
        let reply = shop.app.post("/api/checkout/orders", &body).await;
        assert_eq!(reply.status, 400, "{body}: {}", reply.text);
        assert_eq!(reply.error_fields(), fields, "{body}: {}", reply.text);
    }
    let not_uuid = shop.app.get("/api/checkout/orders/123").await;
    assert_eq!(
        (not_uuid.status, not_uuid.error_fields()),
        (400, vec!["id".to_owned()])
    );
    let missing = shop
        .app
        .get(&format!("/api/checkout/orders/{}", uuid::Uuid::now_v7()))
        .await;
    assert_eq!(
        (missing.status, missing.error_code()),
        (404, "order_not_found")
    );
    let cancel_missing = shop.cancel(&uuid::Uuid::now_v7().to_string()).await;
    assert_eq!(cancel_missing.status, 404);
    assert_eq!(shop.rows("checkout", "orders", "1 = 1").await, 0);
}

async fn a_new_price_reaches_checkout_and_an_old_one_never_returns(backend: Backend) {
    let shop = Shop::open(backend).await;
    shop.product("TEA-1", 450, 5).await;
    for price in [500, 550, 600] {
        shop.app
            .patch(
                "/api/catalog/products/TEA-1",
                &json!({"price_minor": price}),
            )
            .await
            .expect_status(200);
    }
    testkit::eventually(
        crate::shop::WAIT,
        "checkout to see the last price",
        || async {
            let price = shop.app.get("/api/checkout/prices/TEA-1").await;
            (price.body["price_minor"] == 600).then_some(())
        },
    )
    .await;
    let id = shop.place(&[("TEA-1", 2)], "tok_visa").await;
    assert_eq!(shop.order(&id).await["total_minor"], 1200);
}

async fn concurrent_reprices_each_get_their_own_version_and_checkout_keeps_the_last(
    backend: Backend,
) {
    let shop = Shop::open(backend).await;
    shop.product("TEA-1", 100, 5).await;
    let prices: Vec<i64> = (101..=124).collect();
    let app = &shop.app;
    let replies = futures::future::join_all(prices.iter().map(|price| async move {
        app.patch(
            "/api/catalog/products/TEA-1",
            &json!({"price_minor": price}),
        )
        .await
    }))
    .await;
    for reply in &replies {
        reply.expect_status(200);
    }
    let last = shop.app.get("/api/catalog/products/TEA-1").await.body["price_minor"]
        .as_i64()
        .expect("a price");

    // Every reprice saw the one before it: one event each, versions 2, 3, ... in commit
    // order, the newest carrying the price catalog ended with.
    let repriced: Vec<ProductRepricedV1> = shop
        .outbox_events("catalog", ProductRepricedV1::TYPE)
        .await
        .iter()
        .map(|e| e.decode().expect("a reprice"))
        .collect();
    let versions: Vec<i64> = repriced.iter().map(|r| r.version).collect();
    let expected: Vec<i64> = (2..=prices.len() as i64 + 1).collect();
    assert_eq!(versions, expected, "one distinct version per reprice");
    assert_eq!(repriced.last().map(|r| r.price_minor), Some(last));

    testkit::eventually(
        crate::shop::WAIT,
        "checkout to keep the last price",
        || async {
            let price = shop.app.get("/api/checkout/prices/TEA-1").await;
            (price.body["price_minor"] == last && price.body["version"] == prices.len() as i64 + 1)
                .then_some(())
        },
    )
    .await;
}
