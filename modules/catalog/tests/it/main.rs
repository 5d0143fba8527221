//! Catalog booted alone: its HTTP API, its product reads, and its events against a
//! recording bus.

mod api;
mod events;
mod reads;

use std::sync::Arc;

use testkit::{Backend, RecordingBus, Spawn, TestApp, json};

/// A minute: long enough that, inside a test, only a change forgetting a product can make
/// a remembered read fresh again.
const LONG_CACHE_MS: u64 = 60_000;

/// Catalog alone: what it publishes goes to the returned recording bus, since no consumer
/// runs. Product reads are remembered for `cache_ms`.
async fn catalog_alone(backend: Backend, cache_ms: u64) -> (TestApp, Arc<RecordingBus>) {
    let (spawn, bus) = Spawn::alone(backend, Arc::new(catalog::Catalog));
    let app = spawn
        .configure(|s| {
            s.modules
                .sections
                .insert("catalog".into(), json!({ "product_cache_ms": cache_ms }));
        })
        .start()
        .await;
    (app, bus)
}
