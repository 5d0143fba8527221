//! Metrics in the Prometheus text format: the process-wide recorder every `metrics::*!`
//! call of every crate writes to, the HTTP middleware that counts and times requests, the
//! sampler that reads what no code path reports by itself (outbox depth, pool use), and
//! the `/metrics` endpoint on the admin port.
//!
//! Names follow Prometheus conventions: counters end in `_total`, durations are seconds,
//! and labels take few values (a module, a route template, a status class, a reason),
//! never an id or a raw path, so the number of series stays bounded.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{Method, StatusCode};
use actix_web::middleware::Next;
use actix_web::{HttpMessage, HttpResponse, web};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use sea_orm::DbBackend;
use tokio_util::sync::CancellationToken;

use crate::http::Route;
use store::ModuleDb;

/// Histogram buckets for every `*_seconds` family: from a fast query to a slow provider.
const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// How often the sampler reads the outbox and the pools.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);

static RECORDER: OnceLock<Result<PrometheusHandle, String>> = OnceLock::new();

/// Installs the Prometheus recorder for the whole process on first use and returns its
/// handle; later calls return the same handle. A process holds one global recorder, and
/// tests start several applications in one process: they share it.
pub fn install() -> anyhow::Result<PrometheusHandle> {
    RECORDER
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
                .map_err(|e| e.to_string())?
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).map_err(|e| e.to_string())?;
            describe();
            Ok(handle)
        })
        .clone()
        .map_err(|e| anyhow::anyhow!("cannot install the metrics recorder: {e}"))
}

/// The help text of each family this system emits, shown on `/metrics`.
fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "http_requests_total",
        "HTTP requests answered, by method, route template and status class"
    );
    describe_histogram!(
        "http_request_duration_seconds",
        Unit::Seconds,
        "Time to answer an HTTP request, by method, route template and status class"
    );
    describe_gauge!(
        "outbox_unpublished_events",
        "Events committed to a module's outbox and not yet handed to the bus"
    );
    describe_gauge!(
        "outbox_oldest_unpublished_age_seconds",
        Unit::Seconds,
        "Age of a module's oldest unpublished outbox event (0 when none waits)"
    );
    describe_counter!(
        "outbox_published_total",
        "Events the relay handed to the bus"
    );
    describe_counter!(
        "relay_failures_total",
        "Relay passes that failed and will be retried"
    );
    describe_counter!(
        "events_handled_total",
        "Events a module's consumer handled and committed"
    );
    describe_counter!(
        "event_retries_total",
        "Event deliveries that failed and were scheduled again"
    );
    describe_counter!(
        "dead_letters_total",
        "Events parked in a module's dead-letter store"
    );
    describe_histogram!(
        "consumer_batch_duration_seconds",
        Unit::Seconds,
        "Time to handle one batch of events in one transaction, by outcome"
    );
    describe_gauge!(
        "consumer_backlog",
        "Events waiting for a module's consumer, as its bus reports them"
    );
    describe_gauge!(
        "consumer_stalled",
        "1 while a module's consumer has work but settles nothing, else 0"
    );
    describe_gauge!(
        "db_pool_connections",
        "Open connections of a module's pool, by state (idle, in_use)"
    );
    describe_gauge!(
        "tokio_workers",
        "Worker threads of the runtime running the background work"
    );
    describe_gauge!(
        "tokio_alive_tasks",
        "Tasks alive on the runtime running the background work"
    );
    describe_gauge!(
        "tokio_global_queue_depth",
        "Tasks waiting in that runtime's global queue: a rising value means its workers cannot keep up"
    );
    describe_histogram!(
        "db_begin_duration_seconds",
        Unit::Seconds,
        "Time to begin a module's write transaction: waits for a pooled connection (or SQLite's write lock) show here"
    );
    describe_counter!(
        "db_statistics_refreshed_total",
        "Tables a module analyzed because they outgrew their planner statistics"
    );
    describe_gauge!(
        "db_pool_max_connections",
        "The most connections a module's pool may open"
    );
    describe_counter!(
        "redis_errors_total",
        "Round trips to Redis that failed, by what they were for (op)"
    );
}

/// `GET /metrics`: the text exposition format.
pub(crate) async fn endpoint(handle: web::Data<PrometheusHandle>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(handle.render())
}

/// Counts and times every request by method, route template and status class. The route
/// is the pattern that matched (`/api/checkout/orders/{id}`), never the path itself; a
/// request no route matched is `unmatched`.
pub(crate) async fn record_http(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let method = method_label(req.method());
    let result = next.call(req).await;
    let (route, status) = match &result {
        Ok(res) => {
            let found = res
                .request()
                .extensions()
                .get::<Route>()
                .map(|r| r.0.clone());
            let route = found.unwrap_or_else(|| {
                res.request()
                    .match_pattern()
                    .unwrap_or_else(|| "unmatched".to_owned())
            });
            (route, res.status())
        }
        Err(e) => ("unmatched".to_owned(), e.as_response_error().status_code()),
    };
    let labels = [
        ("method", method.to_owned()),
        ("route", route),
        ("status", status_class(status).to_owned()),
    ];
    metrics::counter!("http_requests_total", &labels).increment(1);
    metrics::histogram!("http_request_duration_seconds", &labels)
        .record(started.elapsed().as_secs_f64());
    result
}

/// The method as a label; anything outside the standard set is `other`, so a client
/// cannot create series at will.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

fn status_class(status: StatusCode) -> &'static str {
    match status.as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// Every [`SAMPLE_EVERY`] until cancelled: each module's outbox depth and oldest
/// unpublished age, its pool's connections, the runtime's figures that cost nothing to
/// read, and the recorder's upkeep (which folds recorded histogram samples into their
/// buckets, so they do not pile up between scrapes).
pub(crate) async fn sample(
    dbs: Vec<ModuleDb>,
    handle: PrometheusHandle,
    cancel: CancellationToken,
) {
    loop {
        for db in &dbs {
            sample_outbox(db).await;
            sample_pool(db);
        }
        sample_runtime();
        handle.run_upkeep();
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(SAMPLE_EVERY) => {}
        }
    }
}

async fn sample_outbox(db: &ModuleDb) {
    let module = db.module();
    match messaging::outbox::unpublished(db).await {
        Ok(summary) => {
            metrics::gauge!("outbox_unpublished_events", "module" => module)
                .set(summary.count as f64);
            metrics::gauge!("outbox_oldest_unpublished_age_seconds", "module" => module)
                .set(summary.oldest_age.as_secs_f64());
        }
        Err(e) => {
            tracing::debug!(module, error = %e, "reading the outbox for its metrics failed");
        }
    }
}

/// The runtime this runs on: the one of relays, consumers and module tasks (each HTTP
/// worker runs a small runtime of its own, which the request metrics already cover).
fn sample_runtime() {
    let runtime = tokio::runtime::Handle::current().metrics();
    metrics::gauge!("tokio_workers").set(runtime.num_workers() as f64);
    metrics::gauge!("tokio_alive_tasks").set(runtime.num_alive_tasks() as f64);
    metrics::gauge!("tokio_global_queue_depth").set(runtime.global_queue_depth() as f64);
}

fn sample_pool(db: &ModuleDb) {
    let module = db.module();
    let conn = db.conn();
    let (size, idle, max) = match db.backend() {
        DbBackend::Postgres => {
            let pool = conn.get_postgres_connection_pool();
            (
                pool.size(),
                pool.num_idle(),
                pool.options().get_max_connections(),
            )
        }
        DbBackend::Sqlite => {
            let pool = conn.get_sqlite_connection_pool();
            (
                pool.size(),
                pool.num_idle(),
                pool.options().get_max_connections(),
            )
        }
        _ => return,
    };
    let idle = (idle as u32).min(size);
    metrics::gauge!("db_pool_connections", "module" => module, "state" => "idle")
        .set(f64::from(idle));
    metrics::gauge!("db_pool_connections", "module" => module, "state" => "in_use")
        .set(f64::from(size - idle));
    metrics::gauge!("db_pool_max_connections", "module" => module).set(f64::from(max));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_take_a_bounded_set_of_values() {
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(
            method_label(&Method::from_bytes(b"BREW").expect("a method")),
            "other"
        );
        assert_eq!(status_class(StatusCode::CREATED), "2xx");
        assert_eq!(status_class(StatusCode::NOT_FOUND), "4xx");
        assert_eq!(status_class(StatusCode::SERVICE_UNAVAILABLE), "5xx");
    }
}
