//! Checkout paying through the HTTP provider adapter, against a fake provider served by
//! the test on 127.0.0.1:0 that can be slow, fail, refuse, rate-limit, flap and recover,
//! over plain HTTP or over HTTPS with a certificate of a CA made by the test.
//! Stock is held by feeding checkout catalog's events through a recording bus; what the
//! provider saw and what the orders became are the assertions. Timings are scaled down.

use std::collections::{HashMap, HashSet};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use contracts::Envelope;
use contracts::catalog::{ProductPublishedV1, StockLineV1, StockReservedV1};
use serde_json::Value;
use testkit::tls::{HttpsFront, TestCa};
use testkit::{
    Backend, RecordingBus, Spawn, TestApp, envelope, eventually, json, on_both_backends,
};
use uuid::Uuid;

/// How the fake provider answers an authorization.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    Up,
    /// 503 to everything.
    Down,
    /// Answers after this long (longer than the adapter waits: a timeout).
    Slow(Duration),
    /// 400: the request itself is refused.
    Refusing,
    /// 429 with `Retry-After` in seconds, once per idempotency key, then up.
    RateLimitedOnce(u64),
    /// 503 to the first `n` calls of each idempotency key, then up.
    FailsFirst(usize),
    /// 503 to every other call.
    Flapping,
}

#[derive(Debug, Clone)]
struct Call {
    key: String,
    bearer: Option<String>,
    at: Instant,
    order_id: String,
}

struct Provider {
    mode: Mutex<Mode>,
    calls: Mutex<Vec<Call>>,
    /// One authorization per idempotency key, whatever the number of calls.
    authorized: Mutex<HashMap<String, String>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    address: String,
    socket: SocketAddr,
}

impl Provider {
    fn start(mode: Mode) -> Arc<Provider> {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
        let socket = listener.local_addr().expect("an address");
        let address = format!("http://{socket}");
        let provider = Arc::new(Provider {
            mode: Mutex::new(mode),
            calls: Mutex::default(),
            authorized: Mutex::default(),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            address,
            socket,
        });
        let data = web::Data::from(provider.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .route("/v1/authorizations", web::post().to(authorize))
        })
        .workers(1)
        .listen(listener)
        .expect("listen")
        .run();
        tokio::spawn(server);
        provider
    }

    fn set(&self, mode: Mode) {
        *self.mode.lock().expect("not poisoned") = mode;
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().expect("not poisoned").clone()
    }

    fn calls_for(&self, order_id: Uuid) -> Vec<Call> {
        let id = order_id.to_string();
        self.calls()
            .into_iter()
            .filter(|c| c.order_id == id)
            .collect()
    }
}

async fn authorize(
    provider: web::Data<Provider>,
    request: HttpRequest,
    body: web::Json<Value>,
) -> HttpResponse {
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let key = header("Idempotency-Key").unwrap_or_default();
    let call = Call {
        key: key.clone(),
        bearer: header("Authorization"),
        at: Instant::now(),
        order_id: body["order_id"].as_str().unwrap_or_default().to_owned(),
    };
    let earlier = {
        let mut calls = provider.calls.lock().expect("not poisoned");
        let earlier = calls.iter().filter(|c| c.key == key).count();
        calls.push(call);
        earlier
    };
    let total = provider.calls.lock().expect("not poisoned").len();
    let now = provider.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    provider.max_in_flight.fetch_max(now, Ordering::SeqCst);
    let mode = *provider.mode.lock().expect("not poisoned");
    let unavailable = || HttpResponse::ServiceUnavailable().body("down");
    let reply = match mode {
        Mode::Down => unavailable(),
        Mode::Refusing => HttpResponse::BadRequest().body("unknown currency"),
        Mode::FailsFirst(n) if earlier < n => unavailable(),
        Mode::Flapping if total.is_multiple_of(2) => unavailable(),
        Mode::RateLimitedOnce(secs) if earlier == 0 => HttpResponse::TooManyRequests()
            .insert_header(("Retry-After", secs.to_string()))
            .body("slow down"),
        Mode::Slow(delay) => {
            tokio::time::sleep(delay).await;
            approve(&provider, &key, &body)
        }
        _ => approve(&provider, &key, &body),
    };
    provider.in_flight.fetch_sub(1, Ordering::SeqCst);
    reply
}

fn approve(provider: &Provider, key: &str, body: &Value) -> HttpResponse {
    if body["token"] == "tok_decline" {
        return HttpResponse::Ok()
            .json(json!({"status": "declined", "reason": "insufficient funds"}));
    }
    let mut authorized = provider.authorized.lock().expect("not poisoned");
    let next = authorized.len() + 1;
    let reference = authorized
        .entry(key.to_owned())
        .or_insert_with(|| format!("auth_{next}"))
        .clone();
    HttpResponse::Ok().json(json!({"status": "approved", "reference": reference}))
}

struct Checkout {
    app: TestApp,
    bus: Arc<RecordingBus>,
}

impl Checkout {
    /// Checkout paying through `provider`, with `payment` merged over fast test settings.
    async fn start(backend: Backend, provider: &Provider, payment: Value) -> Self {
        let mut settings = json!({
            "provider": "http",
            "url": format!("{}/v1", provider.address),
            "api_key": "sk_test_1",
            "timeout_ms": 300,
            "retry_base_ms": 20,
            "retry_max_ms": 200,
            "breaker": {"failures": 3, "open_ms": 300, "probes": 1},
        });
        for (k, v) in payment.as_object().expect("an object") {
            settings[k] = v.clone();
        }
        let (spawn, bus) = Spawn::alone(backend, Arc::new(checkout::Checkout));
        let app = spawn
            .configure(|s| {
                s.modules
                    .sections
                    .insert("checkout".into(), json!({ "payment": settings }));
            })
            .start()
            .await;
        let checkout = Self { app, bus };
        checkout
            .feed(&envelope(&ProductPublishedV1 {
                sku: "TEA-1".into(),
                name: "Tea".into(),
                price_minor: 450,
                currency: "EUR".into(),
                version: 1,
            }))
            .await;
        checkout
    }

    async fn feed(&self, event: &Envelope) {
        self.bus.feed("checkout", event).await;
    }

    /// Places an order and holds its stock: its payment is due.
    async fn order(&self, token: &str) -> Uuid {
        let reply = self
            .app
            .post(
                "/api/checkout/orders",
                &json!({"customer_email": "ada@example.com", "items": [{"sku": "TEA-1", "quantity": 1}],
                        "shipping_address": {"name": "Ada", "line1": "1 Road", "city": "London", "postal_code": "N1", "country": "GB"},
                        "payment_token": token}),
            )
            .await;
        reply.expect_status(201);
        let id: Uuid = reply.body["id"]
            .as_str()
            .expect("an id")
            .parse()
            .expect("a uuid");
        self.feed(&envelope(&StockReservedV1 {
            order_id: id,
            lines: vec![StockLineV1 {
                sku: "TEA-1".into(),
                quantity: 1,
            }],
        }))
        .await;
        id
    }

    async fn status(&self, id: Uuid) -> String {
        let reply = self.app.get(&format!("/api/checkout/orders/{id}")).await;
        reply.expect_status(200);
        reply.body["status"].as_str().expect("a status").to_owned()
    }

    async fn becomes(&self, id: Uuid, status: &str, secs: u64) {
        eventually(secs, &format!("order {id} to become {status}"), || async {
            (self.status(id).await == status).then_some(())
        })
        .await;
    }
}

on_both_backends!(the_provider_s_answers_confirm_and_reject_orders_under_a_stable_key);

async fn the_provider_s_answers_confirm_and_reject_orders_under_a_stable_key(backend: Backend) {
    let provider = Provider::start(Mode::Up);
    let c = Checkout::start(backend, &provider, json!({})).await;
    let approved = c.order("tok_visa").await;
    let declined = c.order("tok_decline").await;
    c.becomes(approved, "confirmed", 10).await;
    c.becomes(declined, "rejected", 10).await;
    let calls = provider.calls_for(approved);
    assert_eq!(calls.len(), 1);
    assert!(
        calls[0].key.parse::<Uuid>().is_ok(),
        "the idempotency key is the attempt's id: {:?}",
        calls[0].key
    );
    assert_eq!(calls[0].bearer.as_deref(), Some("Bearer sk_test_1"));
    let order = c.app.get(&format!("/api/checkout/orders/{declined}")).await;
    assert_eq!(order.body["status_reason"], "payment_declined");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transient_failure_is_retried_under_the_same_idempotency_key() {
    let provider = Provider::start(Mode::FailsFirst(2));
    // The breaker stays out of the way: this is about the retries.
    let c = Checkout::start(
        Backend::Sqlite,
        &provider,
        json!({"breaker": {"failures": 100}}),
    )
    .await;
    let order = c.order("tok_visa").await;
    c.becomes(order, "confirmed", 10).await;
    let calls = provider.calls_for(order);
    assert_eq!(calls.len(), 3, "two failures, then the answer: {calls:?}");
    let keys: HashSet<&str> = calls.iter().map(|c| c.key.as_str()).collect();
    assert_eq!(keys.len(), 1, "one key across the retries: {keys:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_request_is_not_retried_and_rejects_the_order() {
    let provider = Provider::start(Mode::Refusing);
    let c = Checkout::start(Backend::Sqlite, &provider, json!({})).await;
    let order = c.order("tok_visa").await;
    c.becomes(order, "rejected", 10).await;
    // Once no attempt is pending any more, no retry can come.
    c.app
        .drained(
            &["checkout"],
            &[(
                "checkout",
                "SELECT COUNT(*) FROM payment_attempts WHERE status = 'pending'",
            )],
        )
        .await;
    assert_eq!(provider.calls_for(order).len(), 1, "asked once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_call_is_retried_no_sooner_than_retry_after() {
    let provider = Provider::start(Mode::RateLimitedOnce(1));
    let c = Checkout::start(Backend::Sqlite, &provider, json!({})).await;
    let order = c.order("tok_visa").await;
    c.becomes(order, "confirmed", 10).await;
    let calls = provider.calls_for(order);
    assert_eq!(calls.len(), 2, "{calls:?}");
    let waited = calls[1].at - calls[0].at;
    assert!(
        waited >= Duration::from_millis(1000),
        "the retry came {waited:?} after the 429, before its Retry-After of 1 s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bulkhead_caps_the_calls_in_flight() {
    let provider = Provider::start(Mode::Slow(Duration::from_millis(150)));
    let c = Checkout::start(
        Backend::Sqlite,
        &provider,
        json!({"max_concurrent": 3, "timeout_ms": 2000}),
    )
    .await;
    let mut orders = Vec::new();
    for _ in 0..9 {
        orders.push(c.order("tok_visa").await);
    }
    for order in &orders {
        c.becomes(*order, "confirmed", 20).await;
    }
    assert_eq!(
        provider.max_in_flight.load(Ordering::SeqCst),
        3,
        "at most max_concurrent calls at once, and that many under load"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_breaker_stops_calls_to_a_failing_provider_holds_orders_and_lets_them_through_once_it_recovers()
 {
    let provider = Provider::start(Mode::Down);
    let c = Checkout::start(
        Backend::Sqlite,
        &provider,
        json!({"max_concurrent": 2, "breaker": {"failures": 3, "open_ms": 400, "probes": 1}}),
    )
    .await;
    let mut orders = Vec::new();
    for _ in 0..6 {
        orders.push(c.order("tok_visa").await);
    }
    let outage = Duration::from_millis(2000);
    tokio::time::sleep(outage).await;
    let during = provider.calls().len();
    // Without the breaker, retries 20-200 ms apart would make about a hundred calls here.
    // With it: the failures that open it (plus those already in flight), then one probe
    // per open period.
    let bound = 3 + 2 + (outage.as_millis() / 400) as usize + 1;
    assert!(
        during <= bound,
        "{during} calls during the outage, more than the breaker allows ({bound})"
    );
    for order in &orders {
        assert_eq!(
            c.status(*order).await,
            "pending",
            "orders wait while it is open"
        );
    }
    provider.set(Mode::Up);
    for order in &orders {
        c.becomes(*order, "confirmed", 10).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_under_load_rejects_no_order_and_pays_each_once() {
    let provider = Provider::start(Mode::Up);
    let c = Checkout::start(
        Backend::Sqlite,
        &provider,
        json!({"max_concurrent": 8, "timeout_ms": 200, "breaker": {"failures": 5, "open_ms": 300, "probes": 2}}),
    )
    .await;
    let mut orders = Vec::new();
    let place = |n: usize| {
        let c = &c;
        async move {
            let mut placed = Vec::new();
            for _ in 0..n {
                placed.push(c.order("tok_visa").await);
            }
            placed
        }
    };
    orders.extend(place(5).await);
    // The outage: first calls time out, then the provider answers 503, then it flaps; new
    // orders keep coming meanwhile.
    provider.set(Mode::Slow(Duration::from_millis(1000)));
    orders.extend(place(15).await);
    provider.set(Mode::Down);
    orders.extend(place(15).await);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    provider.set(Mode::Flapping);
    orders.extend(place(15).await);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    provider.set(Mode::Up);
    for order in &orders {
        c.becomes(*order, "confirmed", 30).await;
    }
    let authorized = provider.authorized.lock().expect("not poisoned").len();
    assert_eq!(authorized, orders.len(), "one authorization per order");
    assert!(
        provider.calls().len() > orders.len(),
        "the outage made calls fail (else this test shows nothing)"
    );
}

/// The provider over HTTPS, its certificate signed by a private CA whose file
/// `payment.ca_file` names: orders are paid as over HTTP, under the same key and token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_provider_behind_a_private_ca_is_paid_through() {
    let provider = Provider::start(Mode::Up);
    let ca = TestCa::new("the provider's CA");
    let dir = tempfile::tempdir().expect("a directory");
    let url = HttpsFront::start(&ca, provider.socket).await.url;
    let c = Checkout::start(
        Backend::Sqlite,
        &provider,
        json!({"url": format!("{url}/v1"), "ca_file": ca.write_pem(dir.path(), "ca.pem")}),
    )
    .await;
    let approved = c.order("tok_visa").await;
    let declined = c.order("tok_decline").await;
    c.becomes(approved, "confirmed", 10).await;
    c.becomes(declined, "rejected", 10).await;
    let calls = provider.calls_for(approved);
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0].bearer.as_deref(), Some("Bearer sk_test_1"));
}

/// A provider whose certificate no trusted CA signed (none of the system's, not the one
/// `ca_file` names) gets no request: the handshake fails, which is a connection failure
/// like any other. It is retried, the order waits, pending, and the attempt says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_whose_certificate_no_trusted_ca_signed_gets_no_call_and_the_order_waits() {
    let dir = tempfile::tempdir().expect("a directory");
    let another = TestCa::new("another CA").write_pem(dir.path(), "another.pem");
    for ca_file in [None, Some(another)] {
        let provider = Provider::start(Mode::Up);
        let url = HttpsFront::start(&TestCa::new("the provider's CA"), provider.socket)
            .await
            .url;
        let c = Checkout::start(
            Backend::Sqlite,
            &provider,
            json!({"url": format!("{url}/v1"), "ca_file": ca_file, "breaker": {"failures": 100}}),
        )
        .await;
        let order = c.order("tok_visa").await;
        eventually(10, "the attempt to record why it failed", || async {
            let failed = c
                .app
                .count(
                    "checkout",
                    "SELECT COUNT(*) FROM payment_attempts \
                     WHERE attempts >= 2 AND last_error LIKE '%invalid peer certificate%'",
                )
                .await;
            (failed == 1).then_some(())
        })
        .await;
        assert_eq!(c.status(order).await, "pending", "ca_file {ca_file:?}");
        assert!(
            provider.calls().is_empty(),
            "ca_file {ca_file:?}: the provider was called"
        );
        c.app.stop().await;
    }
}
