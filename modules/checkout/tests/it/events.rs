//! Checkout alone with a recording bus: feed it catalog's and fulfillment's events, see
//! what it publishes and what its API shows. Races between modules are played out here
//! event by event.

use std::sync::Arc;

use contracts::catalog::{
    ProductPublishedV1, ProductRepricedV1, ShortageV1, StockLineV1, StockRejectedV1,
    StockReservedV1,
};
use contracts::checkout::{
    CancelReasonV1, OrderCancelledV1, OrderConfirmedV1, OrderPlacedV1, OrderReinstatedV1,
};
use contracts::fulfillment::{ShipmentDeliveredV1, ShipmentDispatchedV1};
use contracts::{Cause, Envelope, Event};
use serde_json::Value;
use testkit::{
    Backend, RecordingBus, Spawn, TestApp, envelope, eventually, json, on_both_backends,
};
use uuid::Uuid;

struct Checkout {
    app: TestApp,
    bus: Arc<RecordingBus>,
}

impl Checkout {
    async fn start(backend: Backend) -> Self {
        let (spawn, bus) = Spawn::alone(backend, Arc::new(checkout::Checkout));
        Self {
            app: spawn.start().await,
            bus,
        }
    }

    async fn feed(&self, event: &Envelope) {
        self.bus.feed("checkout", event).await;
    }

    async fn price(&self, sku: &str, price_minor: i64, version: i64) {
        let event = if version == 1 {
            envelope(&ProductPublishedV1 {
                sku: sku.into(),
                name: sku.into(),
                price_minor,
                currency: "EUR".into(),
                version,
            })
        } else {
            envelope(&ProductRepricedV1 {
                sku: sku.into(),
                price_minor,
                currency: "EUR".into(),
                version,
            })
        };
        self.feed(&event).await;
    }

    async fn place(&self, sku: &str, quantity: i64, token: &str) -> Uuid {
        let reply = self
            .app
            .post(
                "/api/checkout/orders",
                &json!({"customer_email": "ada@example.com", "items": [{"sku": sku, "quantity": quantity}],
                        "shipping_address": {"name": "Ada", "line1": "1 Road", "city": "London", "postal_code": "N1", "country": "GB"},
                        "payment_token": token}),
            )
            .await;
        reply.expect_status(201);
        reply.body["id"]
            .as_str()
            .and_then(|id| id.parse().ok())
            .expect("an id")
    }

    async fn order(&self, id: Uuid) -> Value {
        self.app
            .get(&format!("/api/checkout/orders/{id}"))
            .await
            .body
    }

    async fn order_becomes(&self, id: Uuid, status: &str) -> Value {
        eventually(20, &format!("order to be {status}"), || async {
            let order = self.order(id).await;
            (order["status"] == status).then_some(order)
        })
        .await
    }

    fn published<E: Event>(&self, order_id: Uuid) -> Vec<E> {
        self.bus
            .published_of(E::TYPE)
            .iter()
            .filter(|e| e.key == order_id.to_string())
            .map(|e| e.decode().expect("decodes"))
            .collect()
    }

    /// Waits until checkout is drained (outbox published, no payment attempt pending),
    /// then counts the rows it wrote to its outbox for `event_type` and the order: a count
    /// no constraint caps, so a second event shows.
    async fn settled_count_of(&self, event_type: &str, order_id: Uuid) -> i64 {
        self.app
            .drained(
                &["checkout"],
                &[(
                    "checkout",
                    "SELECT COUNT(*) FROM payment_attempts WHERE status = 'pending'",
                )],
            )
            .await;
        self.app
            .count(
                "checkout",
                &format!(
                    "SELECT COUNT(*) FROM outbox WHERE event_type = '{event_type}' AND ordering_key = '{order_id}'"
                ),
            )
            .await
    }

    /// Catalog's reservation as catalog makes it: following the `order_placed` it
    /// answers, so it continues that event's trace.
    async fn reserve_following(&self, placed: &Envelope, sku: &str, quantity: i64) {
        let order_id: Uuid = placed.key.parse().expect("an order id");
        let event = StockReservedV1 {
            order_id,
            lines: vec![StockLineV1 {
                sku: sku.into(),
                quantity,
            }],
        };
        self.feed(&Envelope::new(&event, &Cause::following(placed)).expect("a valid event"))
            .await;
    }

    async fn reserve(&self, order_id: Uuid, sku: &str, quantity: i64) {
        self.feed(&envelope(&StockReservedV1 {
            order_id,
            lines: vec![StockLineV1 {
                sku: sku.into(),
                quantity,
            }],
        }))
        .await;
    }

    async fn dispatched(&self, order_id: Uuid) {
        self.feed(&envelope(&ShipmentDispatchedV1 {
            shipment_id: Uuid::now_v7(),
            order_id,
            tracking_number: "TRK-1".into(),
        }))
        .await;
    }
}

on_both_backends!(
    the_price_list_keeps_the_newest_price,
    an_order_is_announced_then_confirmed_once_its_stock_is_held,
    refused_stock_rejects_the_order,
    a_declined_payment_cancels_the_order,
    a_cancel_crossing_a_dispatch_ships_the_order_and_reinstates_its_stock,
    stock_held_for_an_order_already_cancelled_starts_no_payment,
    a_caller_s_traceparent_is_continued_by_the_events_of_its_order,
);

async fn the_price_list_keeps_the_newest_price(backend: Backend) {
    let c = Checkout::start(backend).await;
    c.price("TEA-1", 450, 1).await;
    c.price("TEA-1", 600, 3).await;
    // A late, older price changes nothing.
    c.price("TEA-1", 500, 2).await;
    let price = c.app.get("/api/checkout/prices/TEA-1").await;
    assert_eq!(
        (
            price.body["price_minor"].as_i64(),
            price.body["version"].as_i64()
        ),
        (Some(600), Some(3))
    );
}

async fn an_order_is_announced_then_confirmed_once_its_stock_is_held(backend: Backend) {
    let c = Checkout::start(backend).await;
    c.price("TEA-1", 450, 1).await;
    let id = c.place("TEA-1", 2, "tok_visa").await;
    let placed = eventually(20, "order_placed", || async {
        c.published::<OrderPlacedV1>(id).into_iter().next()
    })
    .await;
    assert_eq!((placed.total_minor, placed.lines.len()), (900, 1));
    assert!(
        c.published::<OrderConfirmedV1>(id).is_empty(),
        "no confirmation before stock is held"
    );
    let placed_envelope = c.bus.published_of(OrderPlacedV1::TYPE)[0].clone();
    c.reserve_following(&placed_envelope, "TEA-1", 2).await;
    c.order_becomes(id, "confirmed").await;
    let confirmed = eventually(20, "order_confirmed", || async {
        c.published::<OrderConfirmedV1>(id).into_iter().next()
    })
    .await;
    assert_eq!(confirmed.shipping_address.city, "London");
    assert_eq!(confirmed.customer_email, "ada@example.com");
    // A duplicate reservation (a new event, so the inbox does not stop it) confirms
    // nothing twice.
    c.reserve(id, "TEA-1", 2).await;
    assert_eq!(
        c.settled_count_of(OrderConfirmedV1::TYPE, id).await,
        1,
        "one confirmation"
    );
    assert_eq!(c.published::<OrderConfirmedV1>(id).len(), 1);
    // The confirmation carries the trace of the request that placed the order, through
    // catalog's reservation.
    let confirmed_envelope = &c.bus.published_of(OrderConfirmedV1::TYPE)[0];
    assert!(placed_envelope.trace_id().is_some());
    assert_eq!(
        confirmed_envelope.trace_id(),
        placed_envelope.trace_id(),
        "the confirmation continues the placing request's trace"
    );
}

async fn refused_stock_rejects_the_order(backend: Backend) {
    let c = Checkout::start(backend).await;
    c.price("TEA-1", 450, 1).await;
    let id = c.place("TEA-1", 2, "tok_visa").await;
    c.feed(&envelope(&StockRejectedV1 {
        order_id: id,
        shortages: vec![ShortageV1 {
            sku: "TEA-1".into(),
            requested: 2,
            available: 1,
        }],
    }))
    .await;
    let order = c.order_becomes(id, "rejected").await;
    assert_eq!(order["status_reason"], "out_of_stock");
    assert_eq!(c.settled_count_of(OrderConfirmedV1::TYPE, id).await, 0);
    assert_eq!(
        c.settled_count_of(OrderCancelledV1::TYPE, id).await,
        0,
        "nothing was held, nothing to release"
    );
}

async fn a_declined_payment_cancels_the_order(backend: Backend) {
    let c = Checkout::start(backend).await;
    c.price("TEA-1", 450, 1).await;
    let id = c.place("TEA-1", 1, checkout::DECLINED_TOKEN).await;
    c.reserve(id, "TEA-1", 1).await;
    let order = c.order_becomes(id, "rejected").await;
    assert_eq!(order["status_reason"], "payment_declined");
    let cancelled = eventually(20, "order_cancelled", || async {
        c.published::<OrderCancelledV1>(id).into_iter().next()
    })
    .await;
    assert_eq!(cancelled.reason, CancelReasonV1::PaymentDeclined);
}

async fn a_cancel_crossing_a_dispatch_ships_the_order_and_reinstates_its_stock(backend: Backend) {
    let c = Checkout::start(backend).await;
    c.price("TEA-1", 450, 1).await;
    let id = c.place("TEA-1", 2, "tok_visa").await;
    c.reserve(id, "TEA-1", 2).await;
    c.order_becomes(id, "confirmed").await;
    // The customer cancels while fulfillment is dispatching: checkout has not heard yet.
    c.app
        .post_empty(&format!("/api/checkout/orders/{id}/cancel"))
        .await
        .expect_status(200);
    eventually(20, "order_cancelled", || async {
        c.published::<OrderCancelledV1>(id).into_iter().next()
    })
    .await;
    c.dispatched(id).await;
    let order = c.order_becomes(id, "shipped").await;
    assert_eq!(order["status_reason"], Value::Null);
    let reinstated = eventually(20, "order_reinstated", || async {
        c.published::<OrderReinstatedV1>(id).into_iter().next()
    })
    .await;
    assert_eq!(reinstated.lines[0].quantity, 2);
    c.dispatched(id).await;
    assert_eq!(
        c.settled_count_of(OrderReinstatedV1::TYPE, id).await,
        1,
        "a second dispatch reinstates nothing more"
    );
    c.feed(&envelope(&ShipmentDeliveredV1 {
        shipment_id: Uuid::now_v7(),
        order_id: id,
    }))
    .await;
    c.order_becomes(id, "delivered").await;
}

async fn stock_held_for_an_order_already_cancelled_starts_no_payment(backend: Backend) {
    let c = Checkout::start(backend).await;
    c.price("TEA-1", 450, 1).await;
    let id = c.place("TEA-1", 1, "tok_visa").await;
    c.app
        .post_empty(&format!("/api/checkout/orders/{id}/cancel"))
        .await
        .expect_status(200);
    c.reserve(id, "TEA-1", 1).await;
    assert_eq!(c.settled_count_of(OrderConfirmedV1::TYPE, id).await, 0);
    assert_eq!(c.order(id).await["status"], "cancelled");
    assert_eq!(
        c.app
            .count("checkout", "SELECT COUNT(*) FROM payment_attempts")
            .await,
        0
    );
}

/// A request that comes with a W3C `traceparent` is continued: the order's events carry
/// the caller's trace id, through catalog's reservation to the confirmation the payment
/// worker publishes.
async fn a_caller_s_traceparent_is_continued_by_the_events_of_its_order(backend: Backend) {
    let c = Checkout::start(backend).await;
    c.price("TEA-1", 450, 1).await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let reply = testkit::read(
        c.app
            .client
            .post(c.app.url("/api/checkout/orders"))
            .header("traceparent", format!("00-{trace_id}-{caller_span}-01"))
            .json(&json!({"customer_email": "ada@example.com", "items": [{"sku": "TEA-1", "quantity": 1}],
                    "shipping_address": {"name": "Ada", "line1": "1 Road", "city": "London", "postal_code": "N1", "country": "GB"},
                    "payment_token": "tok_visa"}))
            .send()
            .await,
    )
    .await;
    reply.expect_status(201);
    let id: Uuid = reply.body["id"]
        .as_str()
        .and_then(|id| id.parse().ok())
        .expect("an id");
    let placed = eventually(20, "order_placed", || async {
        c.bus
            .published_of(OrderPlacedV1::TYPE)
            .into_iter()
            .find(|e| e.key == id.to_string())
    })
    .await;
    assert_eq!(placed.trace_id().as_deref(), Some(trace_id));
    c.reserve_following(&placed, "TEA-1", 1).await;
    let confirmed = eventually(20, "order_confirmed", || async {
        c.bus
            .published_of(OrderConfirmedV1::TYPE)
            .into_iter()
            .find(|e| e.key == id.to_string())
    })
    .await;
    assert_eq!(confirmed.trace_id().as_deref(), Some(trace_id));
}
