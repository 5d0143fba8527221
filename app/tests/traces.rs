//! Traces exported over OTLP: the app, with an exporter pointed at a collector stand-in
//! served by this test (an HTTP/protobuf receiver on 127.0.0.1:0, reached over HTTPS with
//! a certificate of a CA the test makes and names in the exporter's CA file), runs one order from
//! placement to shipment; the collector receives one trace with spans of all three modules,
//! each consumer's span a child of the span that published its event, every span but the
//! request's a child of a span the trace holds (none hangs under a span that is never
//! exported, such as a background task's), and the log lines carry the same trace id and
//! span ids that were exported. Once with the modules in process on the in-process bus,
//! once over Redis Streams with fulfillment in an app of its own (its own database, as
//! after an extraction). A binary of its own: it installs the process's subscriber and
//! exporter, which both tests share (each looks only at its own trace).

use std::net::TcpListener;
use std::sync::{Arc, Mutex, OnceLock};

use actix_web::{App, HttpResponse, HttpServer, web};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message;
use testkit::tls::{HttpsFront, TestCa};
use testkit::{Backend, Spawn, TestApp, eventually, json};

#[derive(Debug, Clone)]
struct Exported {
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    name: String,
    module: Option<String>,
}

#[derive(Default)]
struct Collector {
    spans: Mutex<Vec<Exported>>,
}

async fn receive(collector: web::Data<Collector>, body: web::Bytes) -> HttpResponse {
    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
        return HttpResponse::BadRequest().finish();
    };
    let mut spans = collector.spans.lock().expect("not poisoned");
    for resource in request.resource_spans {
        for scope in resource.scope_spans {
            for span in scope.spans {
                let module =
                    span.attributes
                        .iter()
                        .find(|a| a.key == "module")
                        .and_then(|a| match a.value.as_ref()?.value.as_ref()? {
                            AnyValue::StringValue(s) => Some(s.clone()),
                            _ => None,
                        });
                spans.push(Exported {
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    name: span.name,
                    module,
                });
            }
        }
    }
    HttpResponse::Ok()
        .content_type("application/x-protobuf")
        .finish()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The log lines, as the app writes them.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("not poisoned").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The collector and the log lines, shared by the tests of this binary.
struct Setup {
    collector: web::Data<Collector>,
    logs: Logs,
}

/// Starts the collector and its TLS front (on a thread of their own, so they outlive each
/// test's runtime) and installs the process's subscriber and exporter, once.
fn setup() -> &'static Setup {
    static SETUP: OnceLock<Setup> = OnceLock::new();
    SETUP.get_or_init(|| {
        let collector = web::Data::new(Collector::default());
        let listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
        let plain = listener.local_addr().expect("an address");
        let ca = TestCa::new("the collector's CA");
        // The exporter reads the CA file when it is built, so the folder may go after.
        let dir = tempfile::tempdir().expect("a directory");
        let ca_file = ca.write_pem(dir.path(), "collector-ca.pem");
        let (front_url, url) = std::sync::mpsc::channel();
        let data = collector.clone();
        std::thread::spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                let front = HttpsFront::start(&ca, plain).await;
                front_url
                    .send(front.url.clone())
                    .expect("the test waits for it");
                HttpServer::new(move || {
                    App::new()
                        .app_data(data.clone())
                        .app_data(web::PayloadConfig::new(16 * 1024 * 1024))
                        .route("/v1/traces", web::post().to(receive))
                })
                .workers(1)
                .listen(listener)
                .expect("listen")
                .run()
                .await
            })
        });
        let endpoint = format!("{}/v1/traces", url.recv().expect("the front's URL"));
        let logs = Logs::default();
        let sink = logs.clone();
        let subscriber = runtime::telemetry::subscriber_with_traces(
            "shop".into(),
            "info",
            move || sink.clone(),
            &endpoint,
            Some(&ca_file),
        )
        .expect("the exporter builds");
        runtime::telemetry::init(subscriber).expect("the only subscriber of this binary");
        Setup { collector, logs }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_order_is_one_trace_across_the_three_modules_with_consumers_under_their_publishers() {
    let setup = setup();
    let app = Spawn::new(Backend::Sqlite, app::modules()).start().await;
    let trace_id = journey(&app, &app).await;
    check(setup, &trace_id).await;
    app.stop().await;
}

/// The same over Redis Streams: catalog and checkout in one app, fulfillment alone in
/// another with a database of its own, both on one Redis namespace; nothing but the
/// events' envelopes carries the trace from one to the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_redis_with_fulfillment_on_its_own_one_order_is_still_one_trace() {
    let setup = setup();
    let namespace = format!("test-traces-{}", uuid::Uuid::new_v4().simple());
    let _keys = testkit::RedisKeys(namespace.clone());
    let on_redis = |settings: &mut runtime::config::Settings| {
        settings.bus.kind = runtime::config::BusKind::Redis;
        settings.bus.redis.namespace = namespace.clone();
    };
    let (alone, together): (Vec<_>, Vec<_>) = app::modules()
        .into_iter()
        .partition(|m| m.name() == "fulfillment");
    assert_eq!(alone.len(), 1, "fulfillment is one of the app's modules");
    let shop = Spawn::new(Backend::Sqlite, together)
        .configure(on_redis)
        .start()
        .await;
    let fulfillment = Spawn::new(Backend::Sqlite, alone)
        .configure(on_redis)
        .start()
        .await;
    let trace_id = journey(&shop, &fulfillment).await;
    let spans = check(setup, &trace_id).await;
    // The fulfillment app's consumer is under a publish span of the other app: the trace
    // crossed Redis between two hosts.
    let fulfillment_consumer = spans
        .iter()
        .find(|s| s.name == "consume" && s.module.as_deref() == Some("fulfillment"))
        .expect("fulfillment's consumer");
    assert!(
        spans
            .iter()
            .any(|p| p.span_id == fulfillment_consumer.parent_span_id
                && p.name == "publish checkout.order_confirmed.v1"),
        "fulfillment's consumer is not under the confirmation's publish span: {spans:#?}"
    );
    fulfillment.stop().await;
    shop.stop().await;
}

/// Places one order on `shop` under a caller's trace and waits for its shipment on
/// `fulfillment`; returns the trace id.
async fn journey(shop: &TestApp, fulfillment: &TestApp) -> String {
    shop.post(
        "/api/catalog/products",
        &json!({"sku": "TEA-1", "name": "Tea", "price_minor": 450, "currency": "EUR", "initial_stock": 5}),
    )
    .await
    .expect_status(201);
    eventually(20, "checkout to learn the price", || async {
        (shop.get("/api/checkout/prices/TEA-1").await.status == 200).then_some(())
    })
    .await;

    // The caller's trace: the order's spans must all be in it.
    let trace_id = format!(
        "{:032x}",
        u128::from(fastrand_u64()) << 64 | u128::from(fastrand_u64())
    );
    let placed = testkit::read(
        shop.client
            .post(shop.url("/api/checkout/orders"))
            .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
            .json(&json!({"customer_email": "ada@example.com", "items": [{"sku": "TEA-1", "quantity": 1}],
                          "shipping_address": {"name": "Ada", "line1": "1 Road", "city": "London", "postal_code": "N1", "country": "GB"},
                          "payment_token": "tok_visa"}))
            .send()
            .await,
    )
    .await;
    placed.expect_status(201);
    let order = placed.body["id"].as_str().expect("an id").to_owned();
    eventually(20, "the order's shipment", || async {
        let shipments = fulfillment
            .get(&format!("/api/fulfillment/shipments?order_id={order}"))
            .await;
        (shipments.body["items"]
            .as_array()
            .is_some_and(|s| !s.is_empty()))
        .then_some(())
    })
    .await;
    trace_id
}

/// Checks the exported spans and the log lines of `trace_id`; returns its spans.
async fn check(setup: &Setup, trace_id: &str) -> Vec<Exported> {
    let spans = eventually(20, "the spans of all three modules", || async {
        runtime::telemetry::flush_traces();
        let spans: Vec<Exported> = setup
            .collector
            .spans
            .lock()
            .expect("not poisoned")
            .iter()
            .filter(|s| s.trace_id == trace_id)
            .cloned()
            .collect();
        let consumers: Vec<&str> = spans
            .iter()
            .filter(|s| s.name == "consume")
            .filter_map(|s| s.module.as_deref())
            .collect();
        // catalog consumes order_placed, checkout stock_reserved, fulfillment
        // order_confirmed.
        ["catalog", "checkout", "fulfillment"]
            .iter()
            .all(|m| consumers.contains(m))
            .then_some(spans)
    })
    .await;

    assert!(
        spans
            .iter()
            .any(|s| s.name == "HTTP request" && s.parent_span_id == "00f067aa0ba902b7"),
        "the request's span is the caller's child: {spans:#?}"
    );
    let publishers: Vec<&Exported> = spans
        .iter()
        .filter(|s| s.name.starts_with("publish "))
        .collect();
    for event in [
        "checkout.order_placed.v1",
        "catalog.stock_reserved.v1",
        "checkout.order_confirmed.v1",
    ] {
        assert!(
            publishers
                .iter()
                .any(|p| p.name == format!("publish {event}")),
            "no publish span for {event}: {spans:#?}"
        );
    }
    for consumer in spans.iter().filter(|s| s.name == "consume") {
        assert!(
            publishers
                .iter()
                .any(|p| p.span_id == consumer.parent_span_id),
            "a consume span whose parent is no publish span: {consumer:?} in {spans:#?}"
        );
    }
    // No span of the order hangs under one the trace does not hold: the request's is the
    // caller's child, every other span the child of an exported span.
    let exported: Vec<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    for span in &spans {
        assert!(
            span.parent_span_id == "00f067aa0ba902b7"
                || exported.contains(&span.parent_span_id.as_str()),
            "a span whose parent was never exported: {span:?} in {spans:#?}"
        );
    }
    // The confirmation is published under the payment that decided it, and the payment
    // runs under checkout's consumer of the reservation.
    let payment = spans
        .iter()
        .find(|s| s.name == "payment authorize" && s.module.as_deref() == Some("checkout"))
        .unwrap_or_else(|| panic!("no payment span: {spans:#?}"));
    assert!(
        spans
            .iter()
            .any(|s| s.name == "publish checkout.order_confirmed.v1"
                && s.parent_span_id == payment.span_id),
        "the confirmation is not published under the payment: {spans:#?}"
    );
    assert!(
        spans.iter().any(|s| s.name == "consume"
            && s.module.as_deref() == Some("checkout")
            && s.span_id == payment.parent_span_id),
        "the payment is not under checkout's consumer: {spans:#?}"
    );

    // The log lines of the order's spans carry the trace id, and their own span ids.
    let text =
        String::from_utf8(setup.logs.0.lock().expect("not poisoned").clone()).expect("utf-8");
    let lines: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|l: &serde_json::Value| l["trace_id"] == trace_id)
        .collect();
    for module in ["catalog", "checkout", "fulfillment"] {
        assert!(
            lines
                .iter()
                .any(|l| l["module"] == module
                    && l["span_id"].as_str().is_some_and(|s| s.len() == 16)),
            "no log line of {module} with the trace and a span id"
        );
    }
    assert!(
        lines
            .iter()
            .filter_map(|l| l["span_id"].as_str())
            .all(|id| exported.contains(&id)),
        "a log line names a span that was not exported"
    );
    spans
}

fn fastrand_u64() -> u64 {
    uuid::Uuid::new_v4().as_u64_pair().0 | 1
}
