//! A customer's and an operator's view of the running shop, for the journey tests.

use serde_json::Value;
use testkit::{Backend, Spawn, TestApp, eventually, json};

pub(crate) struct Shop {
    pub(crate) app: TestApp,
}

pub(crate) const WAIT: u64 = 20;

pub(crate) fn address() -> Value {
    json!({"name": "Ada Lovelace", "line1": "12 St James's Square", "city": "London",
           "postal_code": "SW1Y 4JH", "country": "GB"})
}

impl Shop {
    pub(crate) async fn open(backend: Backend) -> Shop {
        Shop {
            app: Spawn::new(backend, app::modules()).start().await,
        }
    }

    pub(crate) fn on(app: TestApp) -> Shop {
        Shop { app }
    }

    /// Creates a product, then waits until checkout's price list knows it.
    pub(crate) async fn product(&self, sku: &str, price_minor: i64, stock: i64) {
        self.app
            .post(
                "/api/catalog/products",
                &json!({"sku": sku, "name": format!("Product {sku}"), "price_minor": price_minor,
                        "currency": "EUR", "initial_stock": stock}),
            )
            .await
            .expect_status(201);
        self.priced(sku).await;
    }

    pub(crate) async fn priced(&self, sku: &str) {
        let path = format!("/api/checkout/prices/{sku}");
        eventually(
            WAIT,
            &format!("checkout to learn the price of {sku}"),
            || async { (self.app.get(&path).await.status == 200).then_some(()) },
        )
        .await;
    }

    pub(crate) fn order_body(items: &[(&str, i64)], token: &str) -> Value {
        json!({
            "customer_email": "ada@example.com",
            "items": items.iter().map(|(sku, q)| json!({"sku": sku, "quantity": q})).collect::<Vec<_>>(),
            "shipping_address": address(),
            "payment_token": token,
        })
    }

    /// Places an order; returns its id.
    pub(crate) async fn place(&self, items: &[(&str, i64)], token: &str) -> String {
        let reply = self
            .app
            .post("/api/checkout/orders", &Self::order_body(items, token))
            .await;
        reply.expect_status(201);
        assert_eq!(reply.body["status"], "pending");
        reply.body["id"].as_str().expect("an id").to_owned()
    }

    pub(crate) async fn order(&self, id: &str) -> Value {
        let reply = self.app.get(&format!("/api/checkout/orders/{id}")).await;
        reply.expect_status(200);
        reply.body
    }

    /// Waits for the order to reach `status`; returns it.
    pub(crate) async fn order_becomes(&self, id: &str, status: &str) -> Value {
        eventually(WAIT, &format!("order {id} to be {status}"), || async {
            let order = self.order(id).await;
            (order["status"] == status).then_some(order)
        })
        .await
    }

    pub(crate) async fn shipments_of(&self, order_id: &str) -> Vec<Value> {
        let reply = self
            .app
            .get(&format!("/api/fulfillment/shipments?order_id={order_id}"))
            .await;
        reply.expect_status(200);
        reply.body["items"].as_array().cloned().unwrap_or_default()
    }

    /// Waits for the order's shipment to reach `status`; returns it.
    pub(crate) async fn shipment_becomes(&self, order_id: &str, status: &str) -> Value {
        eventually(
            WAIT,
            &format!("the shipment of {order_id} to be {status}"),
            || async {
                self.shipments_of(order_id)
                    .await
                    .into_iter()
                    .find(|s| s["status"] == status)
            },
        )
        .await
    }

    pub(crate) async fn available(&self, sku: &str) -> i64 {
        let reply = self.app.get(&format!("/api/catalog/products/{sku}")).await;
        reply.expect_status(200);
        reply.body["available"].as_i64().expect("available")
    }

    pub(crate) async fn available_becomes(&self, sku: &str, units: i64) {
        eventually(
            WAIT,
            &format!("{sku} to have {units} available"),
            || async { (self.available(sku).await == units).then_some(()) },
        )
        .await
    }

    pub(crate) async fn dispatch(&self, shipment_id: &str) -> testkit::Reply {
        self.app
            .post_empty(&format!(
                "/api/fulfillment/shipments/{shipment_id}/dispatch"
            ))
            .await
    }

    pub(crate) async fn deliver(&self, shipment_id: &str) -> testkit::Reply {
        self.app
            .post_empty(&format!("/api/fulfillment/shipments/{shipment_id}/deliver"))
            .await
    }

    pub(crate) async fn cancel(&self, order_id: &str) -> testkit::Reply {
        self.app
            .post_empty(&format!("/api/checkout/orders/{order_id}/cancel"))
            .await
    }

    /// Rows of a module's table matching `condition`.
    pub(crate) async fn rows(&self, module: &'static str, table: &str, condition: &str) -> i64 {
        self.app
            .count(
                module,
                &format!("SELECT COUNT(*) FROM {table} WHERE {condition}"),
            )
            .await
    }

    /// The events of `event_type` a module has put in its outbox, in outbox order.
    pub(crate) async fn outbox_events(
        &self,
        module: &'static str,
        event_type: &str,
    ) -> Vec<contracts::Envelope> {
        let db = runtime::db::connect_module(&self.app.settings.database, module)
            .await
            .expect("connect to the module database");
        let rows = store::query(
            db.conn(),
            "SELECT envelope FROM outbox WHERE event_type = $1 ORDER BY id",
            vec![event_type.into()],
        )
        .await
        .expect("read the outbox");
        db.close().await.ok();
        rows.iter()
            .map(|row| {
                let text: String = row.try_get("", "envelope").expect("an envelope");
                contracts::Envelope::from_bytes(text.as_bytes()).expect("a valid envelope")
            })
            .collect()
    }

    /// Waits until the shop is drained: no module has an event left to publish or to
    /// handle and no payment attempt is pending, seen twice with nothing changed in
    /// between (`TestApp::drained`). What is counted after this is final.
    pub(crate) async fn settled(&self) {
        self.app
            .drained(
                &["catalog", "checkout", "fulfillment"],
                &[(
                    "checkout",
                    "SELECT COUNT(*) FROM payment_attempts WHERE status = 'pending'",
                )],
            )
            .await;
    }
}
