//! Catalog alone with a recording bus: feed it checkout's events, see what it publishes.

use std::sync::Arc;

use contracts::catalog::{
    ProductPublishedV1, ProductRepricedV1, StockRejectedV1, StockReleasedV1, StockReservedV1,
};
use contracts::checkout::{
    CancelReasonV1, OrderCancelledV1, OrderLineV1, OrderPlacedV1, OrderReinstatedV1,
};
use contracts::{Envelope, Event};
use testkit::{Backend, RecordingBus, TestApp, envelope, eventually, json, on_both_backends};
use uuid::Uuid;

/// Catalog alone, remembering product reads for a minute: a read after an event shows
/// its stock only because handling the event forgot the product.
async fn catalog(backend: Backend) -> (TestApp, Arc<RecordingBus>) {
    crate::catalog_alone(backend, crate::LONG_CACHE_MS).await
}

async fn product(app: &TestApp, sku: &str, stock: i64) {
    app.post(
        "/api/catalog/products",
        &json!({"sku": sku, "name": sku, "price_minor": 100, "currency": "EUR", "initial_stock": stock}),
    )
    .await
    .expect_status(201);
}

async fn available(app: &TestApp, sku: &str) -> i64 {
    app.get(&format!("/api/catalog/products/{sku}")).await.body["available"]
        .as_i64()
        .expect("available")
}

fn placed(order_id: Uuid, lines: &[(&str, i64)]) -> Envelope {
    envelope(&OrderPlacedV1 {
        order_id,
        lines: lines
            .iter()
            .map(|(sku, quantity)| OrderLineV1 {
                sku: (*sku).into(),
                quantity: *quantity,
                unit_price_minor: 100,
            })
            .collect(),
        currency: "EUR".into(),
        total_minor: 100,
    })
}

fn cancelled(order_id: Uuid) -> Envelope {
    envelope(&OrderCancelledV1 {
        order_id,
        reason: CancelReasonV1::CancelledByCustomer,
    })
}

on_both_backends!(
    products_are_announced_and_repriced,
    stock_is_held_for_every_line_or_none,
    a_cancel_releases_the_stock_once,
    a_cancel_before_the_order_arrived_means_nothing_is_held,
    a_cancel_lost_to_a_dispatch_holds_the_stock_again,
    a_reinstated_order_whose_stock_was_taken_meanwhile_holds_what_is_free_and_is_not_retried,
);

async fn products_are_announced_and_repriced(backend: Backend) {
    let (app, bus) = catalog(backend).await;
    product(&app, "TEA-1", 5).await;
    let published = eventually(20, "product_published", || async {
        bus.published_of(ProductPublishedV1::TYPE)
            .into_iter()
            .next()
    })
    .await;
    let payload: ProductPublishedV1 = published.decode().expect("decodes");
    assert_eq!(
        (payload.sku.as_str(), payload.price_minor, payload.version),
        ("TEA-1", 100, 1)
    );
    assert_eq!(published.key, "TEA-1");
    app.patch("/api/catalog/products/TEA-1", &json!({"name": "Tea"}))
        .await
        .expect_status(200);
    app.patch("/api/catalog/products/TEA-1", &json!({"price_minor": 120}))
        .await
        .expect_status(200);
    let repriced = eventually(20, "product_repriced", || async {
        bus.published_of(ProductRepricedV1::TYPE).into_iter().next()
    })
    .await;
    let payload: ProductRepricedV1 = repriced.decode().expect("decodes");
    assert_eq!((payload.price_minor, payload.version), (120, 3));
    assert_eq!(
        bus.published_of(ProductRepricedV1::TYPE).len(),
        1,
        "a rename is not a new price"
    );
}

async fn stock_is_held_for_every_line_or_none(backend: Backend) {
    let (app, bus) = catalog(backend).await;
    product(&app, "A", 5).await;
    product(&app, "B", 1).await;
    assert_eq!(
        (available(&app, "A").await, available(&app, "B").await),
        (5, 1),
        "read, and remembered, before the order"
    );
    let first = Uuid::now_v7();
    bus.feed("catalog", &placed(first, &[("A", 2), ("B", 1)]))
        .await;
    let reserved: StockReservedV1 = eventually(20, "StockReservedV1", || async {
        bus.published_of(StockReservedV1::TYPE).into_iter().next()
    })
    .await
    .decode()
    .expect("decodes");
    assert_eq!(reserved.order_id, first);
    assert_eq!(
        (available(&app, "A").await, available(&app, "B").await),
        (3, 0)
    );

    let second = Uuid::now_v7();
    bus.feed(
        "catalog",
        &placed(second, &[("A", 1), ("B", 1), ("UNKNOWN", 1)]),
    )
    .await;
    let rejected: StockRejectedV1 = eventually(20, "StockRejectedV1", || async {
        bus.published_of(StockRejectedV1::TYPE).into_iter().next()
    })
    .await
    .decode()
    .expect("decodes");
    assert_eq!(rejected.order_id, second);
    let short: Vec<(&str, i64)> = rejected
        .shortages
        .iter()
        .map(|s| (s.sku.as_str(), s.available))
        .collect();
    assert_eq!(short, [("B", 0), ("UNKNOWN", 0)]);
    assert_eq!(
        (available(&app, "A").await, available(&app, "B").await),
        (3, 0),
        "none of it held"
    );

    // The same order again decides nothing new.
    bus.feed("catalog", &placed(first, &[("A", 2), ("B", 1)]))
        .await;
    app.drained(&["catalog"], &[]).await;
    assert_eq!(bus.published_of(StockReservedV1::TYPE).len(), 1);
    assert_eq!(available(&app, "A").await, 3);
}

async fn a_cancel_releases_the_stock_once(backend: Backend) {
    let (app, bus) = catalog(backend).await;
    product(&app, "A", 5).await;
    let order = Uuid::now_v7();
    bus.feed("catalog", &placed(order, &[("A", 2)])).await;
    assert_eq!(
        available(&app, "A").await,
        3,
        "read, and remembered, before the cancel"
    );
    let cancel = cancelled(order);
    bus.feed("catalog", &cancel).await;
    bus.feed("catalog", &cancel).await;
    bus.feed("catalog", &cancelled(order)).await;
    assert_eq!(available(&app, "A").await, 5);
    // Published by the relay after the ack: read once everything is.
    app.drained(&["catalog"], &[]).await;
    let released = bus.published_of(StockReleasedV1::TYPE);
    assert_eq!(released.len(), 1);
    let payload: StockReleasedV1 = released[0].decode().expect("decodes");
    assert_eq!(payload.lines.len(), 1);
}

async fn a_cancel_before_the_order_arrived_means_nothing_is_held(backend: Backend) {
    let (app, bus) = catalog(backend).await;
    product(&app, "A", 5).await;
    let order = Uuid::now_v7();
    bus.feed("catalog", &cancelled(order)).await;
    bus.feed("catalog", &placed(order, &[("A", 2)])).await;
    assert_eq!(available(&app, "A").await, 5);
    app.drained(&["catalog"], &[]).await;
    assert_eq!(
        outbox_rows(&app, order).await,
        0,
        "nothing reserved, nothing released"
    );
    assert!(bus.published_of(StockReservedV1::TYPE).is_empty());
    assert!(bus.published_of(StockReleasedV1::TYPE).is_empty());
}

/// Rows catalog wrote to its outbox for an order (any event type): a count no
/// constraint caps.
async fn outbox_rows(app: &TestApp, order: Uuid) -> i64 {
    app.count(
        "catalog",
        &format!("SELECT COUNT(*) FROM outbox WHERE ordering_key = '{order}'"),
    )
    .await
}

/// The oversold branch: a reinstated order whose stock another order took meanwhile
/// holds what is still free, and the shortfall is not retried (no failure, no dead
/// letter; the event is settled).
async fn a_reinstated_order_whose_stock_was_taken_meanwhile_holds_what_is_free_and_is_not_retried(
    backend: Backend,
) {
    let (app, bus) = catalog(backend).await;
    product(&app, "A", 5).await;
    let first = Uuid::now_v7();
    bus.feed("catalog", &placed(first, &[("A", 2)])).await;
    bus.feed("catalog", &cancelled(first)).await;
    let second = Uuid::now_v7();
    bus.feed("catalog", &placed(second, &[("A", 4)])).await;
    assert_eq!(available(&app, "A").await, 1);
    bus.feed(
        "catalog",
        &envelope(&OrderReinstatedV1 {
            order_id: first,
            lines: vec![contracts::catalog::StockLineV1 {
                sku: "A".into(),
                quantity: 2,
            }],
        }),
    )
    .await;
    app.drained(&["catalog"], &[]).await;
    assert_eq!(available(&app, "A").await, 0, "the one free unit is held");
    assert_eq!(
        app.count("catalog", "SELECT COUNT(*) FROM dead_letters")
            .await,
        0,
        "the shortfall is not a failure"
    );
}

async fn a_cancel_lost_to_a_dispatch_holds_the_stock_again(backend: Backend) {
    let (app, bus) = catalog(backend).await;
    product(&app, "A", 5).await;
    let order = Uuid::now_v7();
    bus.feed("catalog", &placed(order, &[("A", 2)])).await;
    bus.feed("catalog", &cancelled(order)).await;
    assert_eq!(available(&app, "A").await, 5);
    let reinstated = envelope(&OrderReinstatedV1 {
        order_id: order,
        lines: vec![contracts::catalog::StockLineV1 {
            sku: "A".into(),
            quantity: 2,
        }],
    });
    bus.feed("catalog", &reinstated).await;
    bus.feed("catalog", &reinstated).await;
    assert_eq!(available(&app, "A").await, 3, "held again, once");
}
