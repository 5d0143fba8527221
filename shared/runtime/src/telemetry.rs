//! Logs: `tracing` spans and events written as bunyan JSON lines to stdout. Every line
//! carries the fields of the spans it is in, so the request id and the module name set on
//! a request's root span (or a worker's span) appear on every line below it.

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

/// Installs `subscriber` for the whole process, and routes `log` records (sqlx, actix) into
/// it. Call once, from the binary.
pub fn init(subscriber: impl Subscriber + Send + Sync + 'static) -> anyhow::Result<()> {
    use tracing_subscriber::util::SubscriberInitExt;
    subscriber.try_init()?;
    Ok(())
}
