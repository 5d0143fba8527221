//! Logs: `tracing` spans and events written as bunyan JSON lines to stdout. Every line
//! carries the fields of the spans it is in, so the request id, the trace id and the module
//! name set on a request's root span (or a consumer's span) appear on every line below it.
//! A span is written once, when it closes (`[HTTP REQUEST - END]`, with its status and
//! `elapsed_milliseconds`), not also when it opens: one line per request, not two.
//!
//! Traces: with `telemetry.otlp_endpoint` set, spans are also exported over OTLP
//! (HTTP/protobuf, `http://` or `https://`) in batches; without it nothing is exported and
//! nothing is tried.

use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::Context as _;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::span::{Attributes, Id};
use tracing::{Event, Subscriber};
use tracing_bunyan_formatter::{BunyanFormattingLayer, JsonStorageLayer};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::{EnvFilter, Registry, layer::SubscriberExt};

/// The bunyan layer without its `[... - START]` lines: events, and each span once when it
/// closes. The closing line has every field the opening one had, plus what was recorded
/// since (a request's status code) and the span's duration, so the opening line only
/// doubled the cost of logging a request (serializing every field of the span to JSON and
/// writing it to stdout).
pub struct ClosedSpans<W: for<'a> MakeWriter<'a> + 'static>(BunyanFormattingLayer<W>);

impl<W> ClosedSpans<W>
where
    W: for<'a> MakeWriter<'a> + 'static,
{
    pub fn new(name: String, sink: W) -> Self {
        Self(BunyanFormattingLayer::new(name, sink))
    }
}

impl<S, W> Layer<S> for ClosedSpans<W>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'a> MakeWriter<'a> + 'static,
{
    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        self.0.on_event(event, ctx);
    }

    fn on_new_span(&self, _attrs: &Attributes<'_>, _id: &Id, _ctx: Context<'_, S>) {}

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        self.0.on_close(id, ctx);
    }
}

/// A subscriber that writes bunyan JSON to `sink`, filtered by `RUST_LOG` when set, else by
/// `default_filter`.
pub fn subscriber<Sink>(
    name: String,
    default_filter: &str,
    sink: Sink,
) -> impl Subscriber + Send + Sync
where
    Sink: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    Registry::default()
        .with(filter)
        .with(JsonStorageLayer)
        .with(ClosedSpans::new(name, sink))
}

/// The exporter of this process, kept to flush it before exit.
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// [`subscriber`], and spans exported over OTLP to `otlp_endpoint` (the full URL, such as
/// `http://collector:4318/v1/traces`) unless it is empty; an `https://` collector is
/// checked against the system's roots and the CA of `otlp_ca_file`. Installs the exporter
/// for the whole process: call once.
pub fn subscriber_with_traces<Sink>(
    name: String,
    default_filter: &str,
    sink: Sink,
    otlp_endpoint: &str,
    otlp_ca_file: Option<&Path>,
) -> anyhow::Result<impl Subscriber + Send + Sync>
where
    Sink: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let traces = if otlp_endpoint.is_empty() {
        None
    } else {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(exporter_client(otlp_ca_file)?)
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(otlp_endpoint)
            .build()
            .context("telemetry.otlp_endpoint: no exporter")?;
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(Resource::builder().with_service_name(name.clone()).build())
            .build();
        opentelemetry::global::set_tracer_provider(provider.clone());
        let tracer = provider.tracer(name.clone());
        let _ = PROVIDER.set(provider);
        Some(tracing_opentelemetry::layer().with_tracer(tracer))
    };
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    Ok(Registry::default()
        .with(filter)
        .with(traces)
        .with(JsonStorageLayer)
        .with(ClosedSpans::new(name, sink)))
}

/// The exporter's HTTP client: blocking, as the batch processor runs on a thread of its own,
/// and built on a thread of its own too, as a blocking client must not be built (or
/// dropped) on an async runtime's thread.
fn exporter_client(ca_file: Option<&Path>) -> anyhow::Result<reqwest::blocking::Client> {
    let ca_file = ca_file.map(Path::to_path_buf);
    std::thread::spawn(move || {
        module_api::tls::blocking_client_builder(ca_file.as_deref())
            .context("telemetry.otlp_ca_file")?
            // The OTLP exporters' default timeout.
            .timeout(Duration::from_secs(10))
            .build()
            .context("telemetry.otlp_endpoint: no HTTP client")
    })
    .join()
    .map_err(|_| anyhow::anyhow!("telemetry.otlp_endpoint: building the HTTP client panicked"))?
}

/// Sends the spans still waiting in the exporter's batch; nothing without an exporter.
pub fn flush_traces() {
    if let Some(provider) = PROVIDER.get()
        && let Err(e) = provider.force_flush()
    {
        tracing::warn!(error = %e, "exporting the last spans failed");
    }
}

/// Installs `subscriber` for the whole process, and routes `log` records (sqlx, actix) into
/// it. Call once, from the binary.
pub fn init(subscriber: impl Subscriber + Send + Sync + 'static) -> anyhow::Result<()> {
    use tracing_subscriber::util::SubscriberInitExt;
    subscriber.try_init()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Lines written, kept for the test to read.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("not poisoned").extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Captured {
        type Writer = Captured;

        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    #[test]
    fn a_span_is_one_line_when_it_closes_with_its_fields_and_duration() {
        let sink = Captured::default();
        let subscriber = subscriber("test".into(), "info", sink.clone());
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!(
                "HTTP request",
                request_id = "req-1",
                http.status_code = tracing::field::Empty
            );
            let entered = span.enter();
            tracing::info!(step = 1, "inside");
            span.record("http.status_code", 404);
            drop(entered);
        });
        let bytes = sink.0.lock().expect("not poisoned").clone();
        let lines: Vec<serde_json::Value> = String::from_utf8(bytes)
            .expect("utf-8")
            .lines()
            .map(|l| serde_json::from_str(l).expect("every line is JSON"))
            .collect();
        let messages: Vec<&str> = lines.iter().filter_map(|l| l["msg"].as_str()).collect();
        assert_eq!(
            messages,
            ["[HTTP REQUEST - EVENT] inside", "[HTTP REQUEST - END]"],
            "{lines:?}"
        );
        assert_eq!(lines[0]["request_id"], "req-1");
        let end = &lines[1];
        assert_eq!(end["request_id"], "req-1");
        assert_eq!(end["http.status_code"], 404);
        assert!(end["elapsed_milliseconds"].is_u64(), "{end}");
    }
}
