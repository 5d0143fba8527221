//! Logs: `tracing` spans and events written as bunyan JSON lines to stdout. Every line
//! carries the fields of the spans it is in, so the request id, the trace id and the module
//! name set on a request's root span (or a consumer's span) appear on every line below it.
//!
//! Traces: with `telemetry.otlp_endpoint` set, spans are also exported over OTLP
//! (HTTP/protobuf) in batches; without it nothing is exported and nothing is tried.

use std::sync::OnceLock;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Subscriber;
use tracing_bunyan_formatter::{BunyanFormattingLayer, JsonStorageLayer};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::{EnvFilter, Registry, layer::SubscriberExt};

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
        .with(BunyanFormattingLayer::new(name, sink))
}

/// The exporter of this process, kept to flush it before exit.
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// [`subscriber`], and spans exported over OTLP to `otlp_endpoint` (the full URL, such as
/// `http://collector:4318/v1/traces`) unless it is empty. Installs the exporter for the
/// whole process: call once.
pub fn subscriber_with_traces<Sink>(
    name: String,
    default_filter: &str,
    sink: Sink,
    otlp_endpoint: &str,
) -> anyhow::Result<impl Subscriber + Send + Sync>
where
    Sink: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let traces = if otlp_endpoint.is_empty() {
        None
    } else {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(otlp_endpoint)
            .build()?;
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
        .with(BunyanFormattingLayer::new(name, sink)))
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
