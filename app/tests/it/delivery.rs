//! Delivery guarantees of the whole monolith (at least once, applied once, in order per key), on SQLite and PostgreSQL:
//! duplicates change nothing, a poison event is parked without stopping the others and
//! runs once when replayed, and a process killed at any crash point loses no event and
//! applies none twice.

use std::sync::Arc;
use std::time::Duration;

use messaging::{Faults, Outgoing};
use runtime::host::Hooks;
use serde_json::Value;
use testkit::{Backend, DuplicatingBus, Spawn, eventually, json, on_both_backends};

use crate::shop::{Shop, WAIT};

on_both_backends!(
    every_event_delivered_twice_leaves_the_same_end_state,
    a_poison_event_is_parked_and_runs_once_when_replayed,
    an_undecodable_event_is_parked_with_its_raw_bytes,
    a_crash_after_the_business_commit_before_the_relay_published,
    a_crash_after_publication_before_the_outbox_row_was_marked,
    a_crash_inside_a_handler,
    a_crash_after_the_handler_ran_before_its_commit,
    a_crash_after_the_consumer_committed_before_it_acknowledged,
    a_consumer_that_settles_nothing_for_several_leases_is_not_ready_until_it_moves_again,
);

async fn every_event_delivered_twice_leaves_the_same_end_state(backend: Backend) {
    let hooks = Hooks {
        wrap_bus: Some(Arc::new(DuplicatingBus::wrap)),
        ..Hooks::default()
    };
    let shop = Shop::on(
        Spawn::new(backend, app::modules())
            .hooks(hooks)
            .start()
            .await,
    );
    shop.product("TEA-1", 450, 10).await;
    let shipped = shop.place(&[("TEA-1", 2)], "tok_visa").await;
    let declined = shop.place(&[("TEA-1", 1)], checkout::DECLINED_TOKEN).await;
    let too_many = shop.place(&[("TEA-1", 50)], "tok_visa").await;
    let cancelled = shop.place(&[("TEA-1", 3)], "tok_visa").await;
    shop.order_becomes(&cancelled, "confirmed").await;
    shop.cancel(&cancelled).await.expect_status(200);
    let shipment = shop.shipment_becomes(&shipped, "ready").await;
    shop.dispatch(shipment["id"].as_str().expect("id"))
        .await
        .expect_status(200);
    shop.order_becomes(&shipped, "shipped").await;
    shop.order_becomes(&declined, "rejected").await;
    shop.order_becomes(&too_many, "rejected").await;
    shop.settled().await;

    assert_eq!(
        shop.available("TEA-1").await,
        8,
        "only the shipped order holds stock"
    );
    for (order, shipments) in [
        (&shipped, 1),
        (&declined, 0),
        (&too_many, 0),
        (&cancelled, 1),
    ] {
        let condition = format!("order_id = '{order}'");
        let found = shop
            .rows(
                "fulfillment",
                "shipments",
                &uuid_condition(backend, "order_id", order),
            )
            .await;
        assert_eq!(found, shipments, "shipments of {order} ({condition})");
    }
    assert_eq!(
        shop.rows(
            "checkout",
            "payment_attempts",
            &uuid_condition(backend, "order_id", &shipped)
        )
        .await,
        1
    );
    assert_eq!(
        shop.rows(
            "catalog",
            "stock_reservations",
            &uuid_condition(backend, "order_id", &shipped)
        )
        .await,
        1
    );
    assert_eq!(shop.order(&cancelled).await["status"], "cancelled");
    // Every copy was skipped: no event that happens at most once per order was emitted
    // twice. Outbox rows are counted per event type and key, which no constraint caps
    // (a shipment or a reservation row could not show a second handling).
    for (module, once_per_order) in [
        (
            "catalog",
            ["catalog.stock_reserved.v1", "catalog.stock_rejected.v1"],
        ),
        (
            "checkout",
            ["checkout.order_confirmed.v1", "checkout.order_cancelled.v1"],
        ),
        (
            "fulfillment",
            [
                "fulfillment.shipment_created.v1",
                "fulfillment.shipment_dispatched.v1",
            ],
        ),
    ] {
        let repeated = shop
            .app
            .count(
                module,
                &format!(
                    "SELECT COUNT(*) FROM (SELECT event_type, ordering_key FROM outbox \
                     WHERE event_type IN ('{}', '{}') GROUP BY event_type, ordering_key \
                     HAVING COUNT(*) > 1) AS twice",
                    once_per_order[0], once_per_order[1]
                ),
            )
            .await;
        assert_eq!(repeated, 0, "{module} emitted an event twice for one order");
        let emitted = shop
            .app
            .count(
                module,
                &format!(
                    "SELECT COUNT(*) FROM outbox WHERE event_type IN ('{}', '{}')",
                    once_per_order[0], once_per_order[1]
                ),
            )
            .await;
        assert!(emitted > 0, "{module} emitted {once_per_order:?}");
    }
    for module in ["catalog", "checkout", "fulfillment"] {
        assert_eq!(
            shop.rows(module, "dead_letters", "1 = 1").await,
            0,
            "{module} parked nothing"
        );
    }
}

/// A UUID column compared with a literal, on either backend (SQLite stores UUIDs as
/// 16-byte blobs).
fn uuid_condition(backend: Backend, column: &str, id: &str) -> String {
    match backend {
        Backend::Postgres => format!("{column} = '{id}'"),
        Backend::Sqlite => format!("{column} = x'{}'", id.replace('-', "")),
    }
}

const TOKEN: &str = "operator-secret";

async fn letters(shop: &Shop, module: &str, status: &str) -> Vec<Value> {
    let reply = testkit::read(
        shop.app
            .client
            .get(
                shop.app
                    .url(&format!("/admin/{module}/dead-letters?status={status}")),
            )
            .bearer_auth(TOKEN)
            .send()
            .await,
    )
    .await;
    reply.expect_status(200);
    reply.body["items"].as_array().cloned().unwrap_or_default()
}

async fn a_poison_event_is_parked_and_runs_once_when_replayed(backend: Backend) {
    let faults = Faults::for_tests();
    let hooks = Hooks {
        faults: faults.clone(),
        ..Hooks::default()
    };
    let app = Spawn::new(backend, app::modules())
        .configure(|s| s.operator.token = Some(TOKEN.to_owned().into()))
        .hooks(hooks)
        .start()
        .await;
    let shop = Shop::on(app);
    // A bug makes checkout fail on every event about POISON-1.
    faults.fail_key("POISON-1");
    shop.app
        .post(
            "/api/catalog/products",
            &json!({"sku": "POISON-1", "name": "Bad", "price_minor": 1, "currency": "EUR", "initial_stock": 1}),
        )
        .await
        .expect_status(201);
    // Later events keep flowing while it fails.
    shop.product("TEA-1", 450, 5).await;
    let order = shop.place(&[("TEA-1", 1)], "tok_visa").await;
    shop.order_becomes(&order, "confirmed").await;

    let parked = eventually(WAIT, "the poison event to be parked", || async {
        letters(&shop, "checkout", "dead").await.into_iter().next()
    })
    .await;
    assert_eq!(parked["event_type"], "catalog.product_published.v1");
    assert_eq!(parked["attempts"], shop.app.settings.messaging.max_attempts);
    assert!(
        parked["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("injected failure")),
        "{parked}"
    );
    assert_eq!(parked["raw"]["payload"]["sku"], "POISON-1");
    assert_eq!(
        shop.app.get("/api/checkout/prices/POISON-1").await.status,
        404
    );

    // Operator endpoints need the token.
    let path = format!("/admin/checkout/dead-letters/{}/replay", parked["id"]);
    let anonymous = shop.app.post_empty(&path).await;
    assert_eq!(anonymous.status, 401);
    let wrong = testkit::read(
        shop.app
            .client
            .post(shop.app.url(&path))
            .bearer_auth("nope")
            .send()
            .await,
    )
    .await;
    assert_eq!(wrong.status, 401);

    // The fix ships; the operator replays the letter; it runs once.
    faults.heal();
    let replayed = testkit::read(
        shop.app
            .client
            .post(shop.app.url(&path))
            .bearer_auth(TOKEN)
            .send()
            .await,
    )
    .await;
    replayed.expect_status(200);
    shop.priced("POISON-1").await;
    let done = eventually(WAIT, "the letter to be marked replayed", || async {
        letters(&shop, "checkout", "replayed")
            .await
            .into_iter()
            .next()
    })
    .await;
    assert_eq!(done["id"], parked["id"]);
    let again = testkit::read(
        shop.app
            .client
            .post(shop.app.url(&path))
            .bearer_auth(TOKEN)
            .send()
            .await,
    )
    .await;
    assert_eq!(
        (again.status, again.error_code()),
        (409, "dead_letter_status")
    );
    let event_id = parked["event_id"].as_str().expect("event id");
    let inbox = shop
        .rows(
            "checkout",
            "inbox",
            &uuid_condition(backend, "event_id", event_id),
        )
        .await;
    // The inbox's key caps this count at one: what it shows is that the replay committed
    // its key, so a later copy of the event is skipped. That a replay runs no handler
    // twice is shown with an uncapped counter in the bus tests (`replays.rs`).
    assert_eq!(inbox, 1, "the replay went through the inbox");
}

async fn an_undecodable_event_is_parked_with_its_raw_bytes(backend: Backend) {
    let app = Spawn::new(backend, app::modules())
        .configure(|s| s.operator.token = Some(TOKEN.to_owned().into()))
        .start()
        .await;
    let shop = Shop::on(app);
    let garbage = Outgoing {
        event_id: uuid::Uuid::now_v7(),
        event_type: "catalog.product_published.v1".into(),
        source: "catalog".into(),
        key: "GARBAGE".into(),
        envelope: Arc::from("this is not JSON {"),
        handed_before: false,
    };
    let mut forged = contracts::Envelope::new(
        &contracts::catalog::ProductPublishedV1 {
            sku: "FORGED-1".into(),
            name: "x".into(),
            price_minor: 1,
            currency: "EUR".into(),
            version: 1,
        },
        &contracts::Cause::fresh(),
    )
    .expect("valid");
    forged.payload["currency"] = json!("not a currency");
    let broken = Outgoing {
        event_id: forged.id,
        event_type: forged.event_type.clone(),
        source: "catalog".into(),
        key: forged.key.clone(),
        envelope: Arc::from(String::from_utf8(forged.to_bytes()).expect("utf-8")),
        handed_before: false,
    };
    shop.app
        .bus
        .publish(&[garbage, broken])
        .await
        .expect("the bus takes them");
    shop.product("TEA-1", 450, 5).await;
    let parked = eventually(WAIT, "both to be parked", || async {
        let found = letters(&shop, "checkout", "dead").await;
        (found.len() == 2).then_some(found)
    })
    .await;
    assert_eq!(parked[0]["raw"], "this is not JSON {");
    assert_eq!(parked[0]["event_id"], Value::Null);
    assert!(
        parked[0]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("undecodable"))
    );
    assert_eq!(parked[1]["event_id"], forged.id.to_string());
    assert_eq!(parked[1]["attempts"], 1, "a broken contract is not retried");
    assert!(
        parked[1]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("contract")),
        "{}",
        parked[1]
    );
}

/// Arms `point`, places an order, kills the app when a task reaches the point, starts it
/// again on the same database, and checks that the journey completes with every effect
/// exactly once.
async fn crash_at(backend: Backend, point: &'static str) {
    let faults = Faults::for_tests();
    let hooks = Hooks {
        faults: faults.clone(),
        ..Hooks::default()
    };
    let shop = Shop::on(
        Spawn::new(backend, app::modules())
            .hooks(hooks)
            .start()
            .await,
    );
    shop.product("TEA-1", 450, 5).await;
    shop.settled().await;
    let reached = faults.arm(point);
    let id = shop.place(&[("TEA-1", 2)], "tok_visa").await;
    tokio::time::timeout(Duration::from_secs(WAIT), reached)
        .await
        .unwrap_or_else(|_| panic!("nothing reached {point}"))
        .expect("the crash point reports");
    let shop = Shop::on(shop.app.restart(Hooks::default()).await);

    shop.order_becomes(&id, "confirmed").await;
    shop.shipment_becomes(&id, "ready").await;
    shop.settled().await;
    assert_eq!(shop.available("TEA-1").await, 3, "stock held exactly once");
    let order = uuid_condition(backend, "order_id", &id);
    assert_eq!(shop.rows("catalog", "stock_reservations", &order).await, 1);
    assert_eq!(shop.rows("checkout", "payment_attempts", &order).await, 1);
    assert_eq!(shop.rows("fulfillment", "shipments", &order).await, 1);
    // Those tables cap their rows per order; the outboxes do not: each effect announced
    // once is each handler's work done once.
    for (module, event_type) in [
        ("checkout", "checkout.order_placed.v1"),
        ("catalog", "catalog.stock_reserved.v1"),
        ("checkout", "checkout.order_confirmed.v1"),
        ("fulfillment", "fulfillment.shipment_created.v1"),
    ] {
        assert_eq!(
            shop.rows(
                module,
                "outbox",
                &format!("event_type = '{event_type}' AND ordering_key = '{id}'")
            )
            .await,
            1,
            "{event_type} announced once"
        );
    }
    for module in ["catalog", "checkout", "fulfillment"] {
        assert_eq!(
            shop.rows(module, "dead_letters", "1 = 1").await,
            0,
            "{module}"
        );
    }
}

async fn a_crash_after_the_business_commit_before_the_relay_published(backend: Backend) {
    crash_at(backend, "relay.before_publish").await;
}

async fn a_crash_after_publication_before_the_outbox_row_was_marked(backend: Backend) {
    crash_at(backend, "relay.after_publish").await;
}

async fn a_crash_inside_a_handler(backend: Backend) {
    crash_at(backend, "consumer.before_handler").await;
}

async fn a_crash_after_the_handler_ran_before_its_commit(backend: Backend) {
    crash_at(backend, "consumer.before_commit").await;
}

async fn a_crash_after_the_consumer_committed_before_it_acknowledged(backend: Backend) {
    crash_at(backend, "consumer.after_commit").await;
}

async fn a_consumer_that_settles_nothing_for_several_leases_is_not_ready_until_it_moves_again(
    backend: Backend,
) {
    let faults = Faults::for_tests();
    let hooks = Hooks {
        faults: faults.clone(),
        ..Hooks::default()
    };
    // Short leases: a consumer with work that settles nothing for three of them (1.8 s)
    // is stalled.
    let app = Spawn::new(backend, app::modules())
        .configure(|s| s.messaging.lease_ms = 600)
        .hooks(hooks)
        .start()
        .await;
    let shop = Shop::on(app);
    shop.app.get("/readyz").await.expect_status(200);
    // Checkout's handler hangs on this product's event for 5 s.
    faults.slow_key("STUCK-1", Duration::from_secs(5));
    shop.app
        .post(
            "/api/catalog/products",
            &json!({"sku": "STUCK-1", "name": "Stuck", "price_minor": 1, "currency": "EUR", "initial_stock": 1}),
        )
        .await
        .expect_status(201);
    // (On SQLite the hung handler also holds checkout's write lock, so its database
    // check may fail beside it.)
    let reply = eventually(WAIT, "readiness to report the stalled consumer", || async {
        let reply = shop.app.get("/readyz").await;
        let failed = reply.body["failed"].as_array().cloned().unwrap_or_default();
        (reply.status == 503 && failed.contains(&json!("checkout.consumer"))).then_some(reply)
    })
    .await;
    assert!(
        !reply.body["failed"].as_array().is_some_and(|f| f
            .iter()
            .any(|m| m.as_str().is_some_and(|m| !m.starts_with("checkout.")))),
        "only checkout is affected: {}",
        reply.body
    );
    // The answer says which check is down; why is in the log, not in the body.
    assert_eq!(
        reply.body["checks"]["checkout.consumer"], "down",
        "{}",
        reply.body
    );
    // Once the handler finishes, the consumer moves again and is ready.
    shop.priced("STUCK-1").await;
    eventually(WAIT, "readiness to recover", || async {
        (shop.app.get("/readyz").await.status == 200).then_some(())
    })
    .await;
}
