//! A fake payment provider for the `payment-outage` scenario: the HTTP API checkout's
//! adapter speaks (`POST /authorizations`, `POST /authorizations/{reference}/void`),
//! served in this process on a free loopback port. It approves every token but
//! `tok_decline` (declined), answers the same for the same idempotency key, and while it is
//! down answers every call 503, as a provider behind its load balancer does during an
//! outage. It counts what it answered, for the scenario's checks.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use actix_web::dev::ServerHandle;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use serde::Deserialize;

/// What the provider did.
#[derive(Default)]
pub(crate) struct Tally {
    down: AtomicBool,
    /// Calls answered 503 because it was down.
    pub(crate) refused: AtomicUsize,
    /// Authorizations answered (approved or declined), repeats of a key included.
    pub(crate) answered: AtomicUsize,
    pub(crate) voids: AtomicUsize,
    /// The answer given to each idempotency key: `true` approved.
    keys: Mutex<HashMap<String, bool>>,
}

impl Tally {
    /// Distinct idempotency keys declined.
    pub(crate) fn declined_keys(&self) -> usize {
        self.keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|approved| !**approved)
            .count()
    }
}

pub(crate) struct FakeProvider {
    pub(crate) port: u16,
    pub(crate) tally: Arc<Tally>,
    handle: ServerHandle,
}

#[derive(Deserialize)]
struct Authorize {
    token: String,
}

async fn authorize(
    tally: web::Data<Arc<Tally>>,
    request: HttpRequest,
    body: web::Json<Authorize>,
) -> HttpResponse {
    if tally.down.load(Ordering::Relaxed) {
        tally.refused.fetch_add(1, Ordering::Relaxed);
        return HttpResponse::ServiceUnavailable().body("the provider is down");
    }
    let Some(key) = request
        .headers()
        .get("Idempotency-Key")
        .and_then(|v| v.to_str().ok())
    else {
        return HttpResponse::BadRequest().body("no Idempotency-Key");
    };
    tally.answered.fetch_add(1, Ordering::Relaxed);
    let approved = *tally
        .keys
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(key.to_owned())
        .or_insert(body.token != "tok_decline");
    if approved {
        HttpResponse::Ok()
            .json(serde_json::json!({"status": "approved", "reference": format!("ref-{key}")}))
    } else {
        HttpResponse::Ok()
            .json(serde_json::json!({"status": "declined", "reason": "card declined"}))
    }
}

async fn void(tally: web::Data<Arc<Tally>>) -> HttpResponse {
    if tally.down.load(Ordering::Relaxed) {
        tally.refused.fetch_add(1, Ordering::Relaxed);
        return HttpResponse::ServiceUnavailable().body("the provider is down");
    }
    tally.voids.fetch_add(1, Ordering::Relaxed);
    HttpResponse::Ok().finish()
}

impl FakeProvider {
    /// Serves on a free port of 127.0.0.1, up. Call within a tokio runtime.
    pub(crate) fn start() -> anyhow::Result<Self> {
        let tally = Arc::new(Tally::default());
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let data = web::Data::new(tally.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .route("/authorizations", web::post().to(authorize))
                .route("/authorizations/{reference}/void", web::post().to(void))
        })
        .workers(2)
        .disable_signals()
        .listen(listener)?
        .run();
        let handle = server.handle();
        tokio::spawn(server);
        Ok(Self {
            port,
            tally,
            handle,
        })
    }

    pub(crate) fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Down (every call answered 503) or up again.
    pub(crate) fn set_down(&self, down: bool) {
        self.tally.down.store(down, Ordering::Relaxed);
    }

    pub(crate) async fn stop(&self) {
        self.handle.stop(false).await;
    }
}
