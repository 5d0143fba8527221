//! Open-loop load: requests start at a fixed rate whatever the answers take (a closed loop
//! would slow down with the app and hide a stall), with a cap on requests in flight so a
//! dead app cannot make the generator pile up work without bound.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::task::JoinSet;

/// One request's outcome.
#[derive(Debug, Clone)]
pub(crate) struct Outcome {
    /// When it started, in seconds since the scenario began.
    pub(crate) at: f64,
    pub(crate) latency_ms: f64,
    /// The HTTP status; 0 when no answer came (refused, reset, timed out).
    pub(crate) status: u16,
    /// The accepted order's id (normalized: lowercase hex without dashes).
    pub(crate) order_id: Option<String>,
    /// The status of the cancel that followed, if the plan asked for one.
    pub(crate) cancel_status: Option<u16>,
}

/// What a load run did.
#[derive(Debug, Default)]
pub(crate) struct Run {
    pub(crate) outcomes: Vec<Outcome>,
    /// Ticks dropped because `max_in_flight` requests were already waiting.
    pub(crate) skipped: usize,
}

impl Run {
    pub(crate) fn accepted(&self) -> Vec<String> {
        self.outcomes
            .iter()
            .filter_map(|o| o.order_id.clone())
            .collect()
    }

    /// Latencies of the requests answered with `ok`, started within `[from, to)`.
    pub(crate) fn latencies(&self, ok: u16, from: f64, to: f64) -> Vec<f64> {
        self.outcomes
            .iter()
            .filter(|o| o.status == ok && o.at >= from && o.at < to)
            .map(|o| o.latency_ms)
            .collect()
    }

    /// Requests per status (0: no answer).
    pub(crate) fn statuses(&self) -> std::collections::BTreeMap<u16, usize> {
        let mut out = std::collections::BTreeMap::new();
        for o in &self.outcomes {
            *out.entry(o.status).or_default() += 1;
        }
        out
    }
}

/// Starts `make(i)` `rate` times a second until `stop` is set or `until` has come,
/// with at most `max_in_flight` unanswered, then waits for those in flight.
pub(crate) async fn open_loop<F, Fut>(
    rate: f64,
    until: Instant,
    stop: Arc<AtomicBool>,
    max_in_flight: usize,
    make: F,
) -> Run
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    let outcomes = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = JoinSet::new();
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(0.1)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut skipped = 0;
    let mut i = 0;
    while Instant::now() < until && !stop.load(Ordering::Relaxed) {
        ticker.tick().await;
        while tasks.try_join_next().is_some() {}
        if tasks.len() >= max_in_flight {
            skipped += 1;
            continue;
        }
        let request = make(i);
        let sink = outcomes.clone();
        tasks.spawn(async move {
            let outcome = request.await;
            sink.lock().unwrap_or_else(|e| e.into_inner()).push(outcome);
        });
        i += 1;
    }
    while tasks.join_next().await.is_some() {}
    let outcomes = std::mem::take(&mut *outcomes.lock().unwrap_or_else(|e| e.into_inner()));
    Run { outcomes, skipped }
}

/// Runs `make(i)` back to back on `connections` workers until `stop` is set or `until`
/// has come: as many requests as the app will take, as a burst of clients would send.
pub(crate) async fn closed_loop<F, Fut>(
    connections: usize,
    until: Instant,
    stop: Arc<AtomicBool>,
    make: F,
) -> Run
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    let make = Arc::new(make);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = JoinSet::new();
    for _ in 0..connections.max(1) {
        let (make, next, stop) = (make.clone(), next.clone(), stop.clone());
        workers.spawn(async move {
            let mut mine = Vec::new();
            while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                let i = next.fetch_add(1, Ordering::Relaxed);
                mine.push(make(i).await);
            }
            mine
        });
    }
    let mut outcomes = Vec::new();
    while let Some(done) = workers.join_next().await {
        outcomes.extend(done.unwrap_or_default());
    }
    Run {
        outcomes,
        skipped: 0,
    }
}

/// Lowercase hex without dashes: how the audit compares ids across backends.
pub(crate) fn normalize_id(id: &str) -> String {
    id.replace('-', "").to_lowercase()
}

/// Where orders go and what they look like.
#[derive(Clone)]
pub(crate) struct OrderPlan {
    /// Instances to spread orders over (round robin); a scenario may change it mid-run.
    pub(crate) ports: Arc<Mutex<Vec<u16>>>,
    pub(crate) skus: Arc<Vec<String>>,
    /// A product with little stock, so that some orders are refused for lack of it.
    pub(crate) scarce: Option<String>,
    /// Every n-th order pays with a token the provider declines (0: none).
    pub(crate) decline_every: usize,
    /// Every n-th order is cancelled by its customer shortly after placement (0: none).
    pub(crate) cancel_every: usize,
    pub(crate) t0: Instant,
}

impl OrderPlan {
    /// The body of order `i`: one or two lines, some declined, some for the scarce sku.
    pub(crate) fn body(&self, i: usize) -> serde_json::Value {
        let skus = &self.skus;
        let mut items = vec![json!({"sku": skus[i % skus.len()], "quantity": 1 + (i % 3)})];
        if i % 3 == 1 && skus.len() > 1 {
            items.push(json!({"sku": skus[(i * 7 + 1) % skus.len()], "quantity": 1}));
        }
        if let Some(scarce) = &self.scarce
            && i % 40 == 7
        {
            items = vec![json!({"sku": scarce, "quantity": 1})];
        }
        let token = if self.decline_every > 0 && i % self.decline_every == 3 {
            "tok_decline"
        } else {
            "tok_visa"
        };
        json!({
            "customer_email": format!("soak{i}@example.com"),
            "items": items,
            "shipping_address": {"name": "Soak", "line1": "1 Load St", "city": "Loopback",
                                 "postal_code": "127", "country": "GB"},
            "payment_token": token,
        })
    }

    /// Places order `i`, and cancels it if the plan says so.
    pub(crate) fn place(
        &self,
        client: &reqwest::Client,
        i: usize,
    ) -> impl Future<Output = Outcome> + Send + use<> {
        let port = {
            let ports = self.ports.lock().unwrap_or_else(|e| e.into_inner());
            ports[i % ports.len().max(1)]
        };
        let body = self.body(i);
        let cancel = self.cancel_every > 0 && i % self.cancel_every == 5;
        let client = client.clone();
        let t0 = self.t0;
        async move {
            let started = Instant::now();
            let at = started.duration_since(t0).as_secs_f64();
            let answer = client
                .post(format!("http://127.0.0.1:{port}/api/checkout/orders"))
                .json(&body)
                .timeout(Duration::from_secs(10))
                .send()
                .await;
            let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
            let mut outcome = Outcome {
                at,
                latency_ms,
                status: 0,
                order_id: None,
                cancel_status: None,
            };
            let Ok(response) = answer else {
                return outcome;
            };
            outcome.status = response.status().as_u16();
            if outcome.status != 201 {
                return outcome;
            }
            let Ok(order) = response.json::<serde_json::Value>().await else {
                return outcome;
            };
            let Some(id) = order["id"].as_str().map(str::to_owned) else {
                return outcome;
            };
            outcome.order_id = Some(normalize_id(&id));
            if cancel {
                // Late enough that the order is often confirmed already, early enough
                // that its shipment is still `ready`: both cancel paths get exercised.
                tokio::time::sleep(Duration::from_millis(50 + (i as u64 * 37) % 400)).await;
                outcome.cancel_status = client
                    .post(format!(
                        "http://127.0.0.1:{port}/api/checkout/orders/{id}/cancel"
                    ))
                    .timeout(Duration::from_secs(10))
                    .send()
                    .await
                    .ok()
                    .map(|r| r.status().as_u16());
            }
            outcome
        }
    }
}

/// Reads product `i`: the route of another module than the one a scenario slows.
pub(crate) fn read_product(
    client: &reqwest::Client,
    port: u16,
    sku: &str,
    t0: Instant,
) -> impl Future<Output = Outcome> + Send + use<> {
    let client = client.clone();
    let url = format!("http://127.0.0.1:{port}/api/catalog/products/{sku}");
    async move {
        let started = Instant::now();
        let status = client
            .get(url)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0);
        Outcome {
            at: started.duration_since(t0).as_secs_f64(),
            latency_ms: started.elapsed().as_secs_f64() * 1000.0,
            status,
            order_id: None,
            cancel_status: None,
        }
    }
}
