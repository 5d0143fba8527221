//! Fulfillment alone with a recording bus: feed it checkout's events, drive shipments over
//! HTTP, see what it publishes.

use std::sync::Arc;

use contracts::checkout::{
    AddressV1, CancelReasonV1, OrderCancelledV1, OrderConfirmedV1, OrderLineV1,
};
use contracts::fulfillment::{ShipmentCreatedV1, ShipmentDeliveredV1, ShipmentDispatchedV1};
use contracts::{Envelope, Event};
use serde_json::Value;
use testkit::{Backend, RecordingBus, Spawn, TestApp, envelope, eventually, on_both_backends};
use uuid::Uuid;

struct Fulfillment {
    app: TestApp,
    bus: Arc<RecordingBus>,
}

fn confirmed(order_id: Uuid) -> Envelope {
    envelope(&OrderConfirmedV1 {
        order_id,
        lines: vec![OrderLineV1 {
            sku: "TEA-1".into(),
            quantity: 2,
            unit_price_minor: 450,
        }],
        currency: "EUR".into(),
        total_minor: 900,
        customer_email: "ada@example.com".into(),
        shipping_address: AddressV1 {
            name: "Ada".into(),
            line1: "1 Road".into(),
            line2: None,
            city: "London".into(),
            postal_code: "N1".into(),
            country: "GB".into(),
        },
    })
}

fn cancelled(order_id: Uuid) -> Envelope {
    envelope(&OrderCancelledV1 {
        order_id,
        reason: CancelReasonV1::CancelledByCustomer,
    })
}

impl Fulfillment {
    async fn start(backend: Backend) -> Self {
        let (spawn, bus) = Spawn::alone(backend, Arc::new(fulfillment::Fulfillment));
        Self {
            app: spawn.start().await,
            bus,
        }
    }

    async fn feed(&self, event: &Envelope) {
        self.bus.feed("fulfillment", event).await;
    }

    /// The id of `order_id`'s first shipment.
    async fn shipment_id(&self, order_id: Uuid) -> String {
        self.shipments(order_id).await[0]["id"]
            .as_str()
            .expect("id")
            .to_owned()
    }

    async fn shipments(&self, order_id: Uuid) -> Vec<Value> {
        let reply = self
            .app
            .get(&format!("/api/fulfillment/shipments?order_id={order_id}"))
            .await;
        reply.expect_status(200);
        reply.body["items"].as_array().cloned().unwrap_or_default()
    }

    fn published<E: Event>(&self) -> Vec<E> {
        self.bus
            .published_of(E::TYPE)
            .iter()
            .map(|e| e.decode().expect("decodes"))
            .collect()
    }
}

on_both_backends!(
    a_confirmed_order_gets_one_shipment,
    dispatch_and_delivery_are_announced_in_order,
    a_cancel_before_dispatch_cancels_the_shipment,
    a_cancel_after_dispatch_leaves_the_shipment_on_its_way,
    a_cancel_arriving_before_the_confirmation_means_no_shipment,
    bad_requests_are_refused,
);

async fn a_confirmed_order_gets_one_shipment(backend: Backend) {
    let f = Fulfillment::start(backend).await;
    let order = Uuid::now_v7();
    let event = confirmed(order);
    f.feed(&event).await;
    f.feed(&event).await;
    f.feed(&confirmed(order)).await;
    let shipments = f.shipments(order).await;
    assert_eq!(shipments.len(), 1);
    assert_eq!(shipments[0]["status"], "ready");
    let created = eventually(20, "shipment_created", || async {
        f.published::<ShipmentCreatedV1>().into_iter().next()
    })
    .await;
    assert_eq!(created.order_id, order);
    assert_eq!(f.published::<ShipmentCreatedV1>().len(), 1);
}

async fn dispatch_and_delivery_are_announced_in_order(backend: Backend) {
    let f = Fulfillment::start(backend).await;
    let order = Uuid::now_v7();
    f.feed(&confirmed(order)).await;
    let id = f.shipment_id(order).await;
    let early = f
        .app
        .post_empty(&format!("/api/fulfillment/shipments/{id}/deliver"))
        .await;
    assert_eq!(
        (early.status, early.error_code()),
        (409, "invalid_transition")
    );
    let dispatched = f
        .app
        .post_empty(&format!("/api/fulfillment/shipments/{id}/dispatch"))
        .await;
    dispatched.expect_status(200);
    let tracking = dispatched.body["tracking_number"]
        .as_str()
        .expect("tracking")
        .to_owned();
    f.app
        .post_empty(&format!("/api/fulfillment/shipments/{id}/deliver"))
        .await
        .expect_status(200);
    eventually(20, "both events", || async {
        (f.bus.published().len() == 3).then_some(())
    })
    .await;
    let types: Vec<String> = f
        .bus
        .published()
        .into_iter()
        .map(|e| e.event_type)
        .collect();
    assert_eq!(
        types,
        [
            ShipmentCreatedV1::TYPE,
            ShipmentDispatchedV1::TYPE,
            ShipmentDeliveredV1::TYPE
        ]
    );
    assert_eq!(
        f.published::<ShipmentDispatchedV1>()[0].tracking_number,
        tracking
    );
    assert!(
        f.bus.published().iter().all(|e| e.key == order.to_string()),
        "keyed by order"
    );
}

async fn a_cancel_before_dispatch_cancels_the_shipment(backend: Backend) {
    let f = Fulfillment::start(backend).await;
    let order = Uuid::now_v7();
    f.feed(&confirmed(order)).await;
    f.feed(&cancelled(order)).await;
    let shipment = &f.shipments(order).await[0];
    assert_eq!(shipment["status"], "cancelled");
    let late = f
        .app
        .post_empty(&format!(
            "/api/fulfillment/shipments/{}/dispatch",
            shipment["id"].as_str().expect("id")
        ))
        .await;
    assert_eq!(late.status, 409);
}

async fn a_cancel_after_dispatch_leaves_the_shipment_on_its_way(backend: Backend) {
    let f = Fulfillment::start(backend).await;
    let order = Uuid::now_v7();
    f.feed(&confirmed(order)).await;
    let id = f.shipment_id(order).await;
    f.app
        .post_empty(&format!("/api/fulfillment/shipments/{id}/dispatch"))
        .await
        .expect_status(200);
    f.feed(&cancelled(order)).await;
    assert_eq!(f.shipments(order).await[0]["status"], "dispatched");
}

async fn a_cancel_arriving_before_the_confirmation_means_no_shipment(backend: Backend) {
    let f = Fulfillment::start(backend).await;
    let order = Uuid::now_v7();
    f.feed(&cancelled(order)).await;
    f.feed(&confirmed(order)).await;
    assert!(f.shipments(order).await.is_empty());
    assert!(f.published::<ShipmentCreatedV1>().is_empty());
}

async fn bad_requests_are_refused(backend: Backend) {
    let f = Fulfillment::start(backend).await;
    let cases = [
        (
            "/api/fulfillment/shipments?order_id=nope",
            400,
            "validation_failed",
        ),
        (
            "/api/fulfillment/shipments?limit=0",
            400,
            "validation_failed",
        ),
        ("/api/fulfillment/shipments/nope", 400, "validation_failed"),
    ];
    for (path, status, code) in cases {
        let reply = f.app.get(path).await;
        assert_eq!(
            (reply.status, reply.error_code()),
            (status, code),
            "{path}: {}",
            reply.text
        );
    }
    let missing = f
        .app
        .get(&format!("/api/fulfillment/shipments/{}", Uuid::now_v7()))
        .await;
    assert_eq!(
        (missing.status, missing.error_code()),
        (404, "shipment_not_found")
    );
    let dispatch_missing = f
        .app
        .post_empty(&format!(
            "/api/fulfillment/shipments/{}/dispatch",
            Uuid::now_v7()
        ))
        .await;
    assert_eq!(dispatch_missing.status, 404);
}
