//! Product reads served from memory: this process's own changes show at once, another
//! replica's once the cache time (`modules.catalog.product_cache_ms`) is up, and with the
//! cache off every read reaches the database.

use std::time::Duration;

use testkit::{Backend, TestApp, json, on_both_backends};

use crate::{LONG_CACHE_MS, catalog_alone};

on_both_backends!(
    a_change_made_here_shows_in_the_next_read_although_the_read_was_remembered,
    a_replica_serves_a_remembered_read_until_its_cache_time_is_up,
    a_replica_shows_another_s_change_once_its_cache_time_is_up,
    with_the_cache_off_a_replica_shows_another_s_change_at_once,
);

async fn created(app: &TestApp, sku: &str) {
    app.post(
        "/api/catalog/products",
        &json!({"sku": sku, "name": "Mug", "price_minor": 900, "currency": "EUR", "initial_stock": 10}),
    )
    .await
    .expect_status(201);
}

async fn read(app: &TestApp, sku: &str) -> (i64, i64) {
    let reply = app.get(&format!("/api/catalog/products/{sku}")).await;
    reply.expect_status(200);
    (
        reply.body["available"].as_i64().expect("available"),
        reply.body["price_minor"].as_i64().expect("price_minor"),
    )
}

async fn restock(app: &TestApp, sku: &str, quantity: i64) {
    app.post(
        &format!("/api/catalog/products/{sku}/restock"),
        &json!({ "quantity": quantity }),
    )
    .await
    .expect_status(200);
}

/// A replica of `app` whose product reads are remembered for `cache_ms`.
async fn replica(app: &TestApp, cache_ms: u64) -> TestApp {
    app.replica(|s| {
        s.modules
            .sections
            .insert("catalog".into(), json!({ "product_cache_ms": cache_ms }));
    })
    .await
}

async fn a_change_made_here_shows_in_the_next_read_although_the_read_was_remembered(
    backend: Backend,
) {
    let (app, _) = catalog_alone(backend, LONG_CACHE_MS).await;
    created(&app, "MUG-1").await;
    assert_eq!(read(&app, "MUG-1").await, (10, 900));
    restock(&app, "MUG-1", 5).await;
    assert_eq!(read(&app, "MUG-1").await, (15, 900), "restocked");
    app.patch("/api/catalog/products/MUG-1", &json!({"price_minor": 950}))
        .await
        .expect_status(200);
    assert_eq!(read(&app, "MUG-1").await, (15, 950), "repriced");
}

async fn a_replica_serves_a_remembered_read_until_its_cache_time_is_up(backend: Backend) {
    let (app, _) = catalog_alone(backend, LONG_CACHE_MS).await;
    created(&app, "MUG-1").await;
    let other = replica(&app, LONG_CACHE_MS).await;
    assert_eq!(read(&other, "MUG-1").await, (10, 900));
    restock(&app, "MUG-1", 5).await;
    assert_eq!(read(&app, "MUG-1").await, (15, 900));
    assert_eq!(
        read(&other, "MUG-1").await,
        (10, 900),
        "the replica answers from memory within its cache time"
    );
    other.stop().await;
}

async fn a_replica_shows_another_s_change_once_its_cache_time_is_up(backend: Backend) {
    let (app, _) = catalog_alone(backend, LONG_CACHE_MS).await;
    created(&app, "MUG-1").await;
    let cache = Duration::from_millis(300);
    let other = replica(&app, cache.as_millis() as u64).await;
    assert_eq!(read(&other, "MUG-1").await, (10, 900));
    restock(&app, "MUG-1", 5).await;
    tokio::time::sleep(cache + Duration::from_millis(100)).await;
    assert_eq!(
        read(&other, "MUG-1").await,
        (15, 900),
        "no read is older than the cache time"
    );
    other.stop().await;
}

async fn with_the_cache_off_a_replica_shows_another_s_change_at_once(backend: Backend) {
    let (app, _) = catalog_alone(backend, LONG_CACHE_MS).await;
    created(&app, "MUG-1").await;
    let other = replica(&app, 0).await;
    assert_eq!(read(&other, "MUG-1").await, (10, 900));
    restock(&app, "MUG-1", 5).await;
    assert_eq!(read(&other, "MUG-1").await, (15, 900));
    other.stop().await;
}
