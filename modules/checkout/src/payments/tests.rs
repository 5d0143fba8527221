//! Two claims of one attempt, played out step by step: the checkout app places the
//! orders and stops, then payment workers sharing its database claim, call and record
//! in the order a test chooses, against a provider that keeps what it was asked.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use contracts::catalog::{ProductPublishedV1, StockReservedV1};
use module_api::{Incoming, ModuleDb, Store};
use testkit::{Backend, Spawn, TestDatabase, eventually, json};

use std::sync::Arc;
use std::time::Duration;

use contracts::Cause;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::breaker::Breaker;
use super::claim::Claimed;
use super::handoff::Handoff;
use super::{
    Authorization, AuthorizeRequest, GatewayError, PaymentGateway, PaymentSettings, PaymentWorker,
};
use crate::db::{fixtures, queries};
use crate::domain::OrderStatus;

/// A provider that honours idempotency keys: one authorization per key, whatever the
/// number of calls. Voids are kept, or never answered. It can take its time, never
/// answer the first calls, count the calls in flight at once, and look at checkout's
/// database while it is asked.
#[derive(Default)]
struct Provider {
    authorized: Mutex<HashMap<Uuid, String>>,
    voided: Mutex<Vec<String>>,
    voids_hang: bool,
    /// How long each authorization takes.
    latency: Duration,
    /// How many first calls never answer.
    hang_first: std::sync::atomic::AtomicUsize,
    calls: std::sync::atomic::AtomicUsize,
    in_flight: std::sync::atomic::AtomicUsize,
    most_in_flight: std::sync::atomic::AtomicUsize,
    /// When set (PostgreSQL), each call counts checkout's sessions inside a
    /// transaction, into `open_transactions`.
    watch: Option<ModuleDb>,
    open_transactions: Mutex<Vec<i64>>,
}

impl Provider {
    fn authorizations(&self) -> usize {
        self.authorized.lock().expect("not poisoned").len()
    }

    fn voided(&self) -> Vec<String> {
        self.voided.lock().expect("not poisoned").clone()
    }
}

#[async_trait]
impl PaymentGateway for Provider {
    async fn authorize(&self, request: &AuthorizeRequest) -> Result<Authorization, GatewayError> {
        use std::sync::atomic::Ordering::SeqCst;
        let call = self.calls.fetch_add(1, SeqCst);
        let now = self.in_flight.fetch_add(1, SeqCst) + 1;
        self.most_in_flight.fetch_max(now, SeqCst);
        if let Some(db) = &self.watch {
            let n = fixtures::open_transactions(db).await;
            self.open_transactions.lock().expect("not poisoned").push(n);
        }
        if call < self.hang_first.load(SeqCst) {
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(self.latency).await;
        self.in_flight.fetch_sub(1, SeqCst);
        let mut authorized = self.authorized.lock().expect("not poisoned");
        let next = authorized.len() + 1;
        let reference = authorized
            .entry(request.idempotency_key)
            .or_insert_with(|| format!("auth_{next}"))
            .clone();
        Ok(Authorization::Approved { reference })
    }

    async fn void(&self, reference: &str) -> Result<(), GatewayError> {
        if self.voids_hang {
            std::future::pending::<()>().await;
        }
        self.voided
            .lock()
            .expect("not poisoned")
            .push(reference.to_owned());
        Ok(())
    }
}

/// Checkout's database with `orders` pending orders, and nothing running on it.
struct Stage {
    store: Store,
    orders: Vec<Uuid>,
    _db: TestDatabase,
}

impl Stage {
    async fn new(backend: Backend, orders: usize) -> Stage {
        let (spawn, bus) = Spawn::alone(backend, Arc::new(crate::Checkout));
        let app = spawn.start().await;
        bus.feed(
            "checkout",
            &testkit::envelope(&ProductPublishedV1 {
                sku: "TEA-1".into(),
                name: "Tea".into(),
                price_minor: 450,
                currency: "EUR".into(),
                version: 1,
            }),
        )
        .await;
        let mut ids = Vec::new();
        for _ in 0..orders {
            let reply = app
                .post(
                    "/api/checkout/orders",
                    &json!({"customer_email": "ada@example.com", "items": [{"sku": "TEA-1", "quantity": 1}],
                            "shipping_address": {"name": "Ada", "line1": "1 Road", "city": "London", "postal_code": "N1", "country": "GB"},
                            "payment_token": "tok_visa"}),
                )
                .await;
            reply.expect_status(201);
            ids.push(
                reply.body["id"]
                    .as_str()
                    .expect("an id")
                    .parse()
                    .expect("a uuid"),
            );
        }
        let settings = app.settings.clone();
        let db = app.stop().await;
        Stage {
            store: testkit::module_store(&settings.database, crate::NAME).await,
            orders: ids,
            _db: db,
        }
    }

    /// The customer cancels `order_id` (the stage placed its orders as the test kit's
    /// caller).
    async fn cancel(&self, order_id: Uuid) {
        crate::use_cases::cancel_order::cancel_order(
            &self.store,
            &Cause::fresh(),
            testkit::TESTER,
            order_id,
        )
        .await
        .expect("cancel");
    }

    /// What catalog's reservation does to an order: its payment becomes due.
    async fn hold_stock(&self, order_id: Uuid) {
        fixtures::insert_due_attempt(self.store.db(), order_id).await;
    }

    fn worker(&self, gateway: Arc<Provider>, lease_ms: i64) -> PaymentWorker {
        self.worker_polling(gateway, lease_ms, Duration::from_millis(20))
    }

    /// [`Stage::worker`] polling the database every `poll`.
    fn worker_polling(
        &self,
        gateway: Arc<Provider>,
        lease_ms: i64,
        poll: Duration,
    ) -> PaymentWorker {
        let breaker = Arc::new(Breaker::new(Default::default()));
        PaymentWorker {
            store: self.store.clone(),
            gateway,
            breaker: breaker.clone(),
            settings: PaymentSettings {
                timeout_ms: 200,
                ..PaymentSettings::default()
            },
            handoff: Arc::new(Handoff::new(breaker, lease_ms)),
            poll,
        }
    }

    /// What catalog's reservation of `orders` does, through checkout's own handler, in one
    /// transaction that commits or, with `commit` false, rolls back.
    async fn reserve(&self, orders: &[Uuid], handoff: &Arc<Handoff>, commit: bool) {
        let mut tx = self.store.begin_batch().await.expect("begin");
        let events = orders
            .iter()
            .map(|order_id| Incoming {
                event: StockReservedV1 {
                    order_id: *order_id,
                    lines: Vec::new(),
                },
                cause: Cause::fresh(),
            })
            .collect();
        crate::use_cases::stock_outcome::on_reserved(&mut tx, events, handoff.clone())
            .await
            .expect("handled");
        if commit {
            tx.commit().await.expect("commit");
        }
    }

    async fn attempt(&self, order_id: Uuid) -> (String, Option<String>) {
        fixtures::attempt_of(self.store.db(), order_id).await
    }

    async fn order_status(&self, order_id: Uuid) -> OrderStatus {
        queries::load_order(self.store.conn(), order_id, false)
            .await
            .expect("read the order")
            .expect("the order")
            .status
    }

    async fn confirmations(&self, order_id: Uuid) -> usize {
        fixtures::confirmations(self.store.db(), order_id).await
    }
}

/// A worker's claim of exactly the attempt of `order_id`, waiting until one is free.
async fn claim_of(worker: &PaymentWorker, order_id: Uuid) -> Claimed {
    eventually(20, "the attempt to be free to claim", || async {
        let claimed = worker.claim(10).await.expect("claim");
        assert!(
            claimed.iter().all(|c| c.order_id == order_id),
            "only one attempt is due at a time here"
        );
        claimed.into_iter().next()
    })
    .await
}

testkit::on_both_backends!(
    an_outcome_recorded_after_its_lease_was_taken_over_pays_once_and_voids_nothing,
    a_void_the_provider_never_answers_does_not_hold_up_the_worker,
    a_payment_approved_for_an_order_cancelled_meanwhile_is_voided_and_the_order_stays_cancelled,
    no_more_provider_calls_run_at_once_than_max_concurrent,
    a_call_the_provider_never_answers_times_out_and_is_retried_under_the_same_key,
    a_worker_that_died_between_the_provider_call_and_recording_it_is_replaced_and_the_order_paid_once,
    payments_are_handed_to_the_worker_by_the_transaction_that_opens_them_and_the_rest_claimed,
    a_reservation_handled_again_or_rolled_back_hands_nothing_over,
    attempts_due_in_the_database_are_claimed_when_due_without_waiting_for_the_poll,
);

/// Runs `worker`'s loop until every order of `stage` is `status`, then stops it.
async fn run_until(stage: &Stage, worker: PaymentWorker, status: OrderStatus) {
    let cancel = CancellationToken::new();
    let running = tokio::spawn(worker.run(cancel.child_token()));
    for order in &stage.orders {
        eventually(30, &format!("order {order} to be {status:?}"), || async {
            (stage.order_status(*order).await == status).then_some(())
        })
        .await;
    }
    cancel.cancel();
    running.await.expect("the worker stops");
}

async fn a_payment_approved_for_an_order_cancelled_meanwhile_is_voided_and_the_order_stays_cancelled(
    backend: Backend,
) {
    let stage = Stage::new(backend, 1).await;
    let order = stage.orders[0];
    stage.hold_stock(order).await;
    let provider = Arc::new(Provider::default());
    let worker = stage.worker(provider.clone(), 10_000);
    let claimed = claim_of(&worker, order).await;
    let called = worker.call(&claimed).await;
    // The customer cancels while the provider approves.
    stage.cancel(order).await;
    worker.record(vec![(claimed, called)]).await;
    assert_eq!(stage.attempt(order).await.0, "voided");
    assert_eq!(
        provider.voided(),
        vec!["auth_1".to_owned()],
        "the approval was voided"
    );
    assert_eq!(stage.order_status(order).await, OrderStatus::Cancelled);
    assert_eq!(stage.confirmations(order).await, 0, "nothing confirmed");
}

/// Six payments due, calls that take 300 ms, and a bulkhead of two: never more than
/// two calls at once, and two at once at some point. On PostgreSQL the provider also
/// looks at checkout's sessions while it is asked (one order, so nothing else runs
/// then): none is inside a transaction.
async fn no_more_provider_calls_run_at_once_than_max_concurrent(backend: Backend) {
    use std::sync::atomic::Ordering::SeqCst;
    let stage = Stage::new(backend, 6).await;
    for order in &stage.orders {
        stage.hold_stock(*order).await;
    }
    let provider = Arc::new(Provider {
        latency: Duration::from_millis(300),
        ..Provider::default()
    });
    let mut worker = stage.worker(provider.clone(), 10_000);
    worker.settings.max_concurrent = 2;
    worker.settings.timeout_ms = 5_000;
    run_until(&stage, worker, OrderStatus::Confirmed).await;
    assert_eq!(
        provider.most_in_flight.load(SeqCst),
        2,
        "the bulkhead holds"
    );
    assert_eq!(provider.authorizations(), 6);

    if matches!(backend, Backend::Postgres) {
        let alone = Stage::new(backend, 1).await;
        alone.hold_stock(alone.orders[0]).await;
        let provider = Arc::new(Provider {
            watch: Some(alone.store.db().clone()),
            ..Provider::default()
        });
        // A bulkhead of one: while the call is out, the worker claims nothing, so no
        // claim's transaction can be caught open beside it (under load one was).
        let mut worker = alone.worker(provider.clone(), 10_000);
        worker.settings.max_concurrent = 1;
        run_until(&alone, worker, OrderStatus::Confirmed).await;
        let seen = provider
            .open_transactions
            .lock()
            .expect("not poisoned")
            .clone();
        assert_eq!(
            seen,
            vec![0],
            "no transaction is held across the provider call"
        );
    }
}

/// The bulkhead bounds calls to the provider, not outcomes waiting to be recorded: with a
/// bulkhead of one and the recorder held up (every order row locked, as a slow writer
/// would), each of six due payments is still asked for, one call at a time; once the
/// orders are free again all six are recorded. (When a call kept its place until its
/// outcome was handed to the recorder, the calls stopped after four: one outcome in the
/// recorder, two in its channel, one call waiting to hand its outcome over.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_go_on_while_their_outcomes_wait_for_the_recorder() {
    use std::sync::atomic::Ordering::SeqCst;
    let stage = Stage::new(Backend::Postgres, 6).await;
    for order in &stage.orders {
        stage.hold_stock(*order).await;
    }
    let held = fixtures::lock_all_orders(stage.store.db()).await;
    let provider = Arc::new(Provider::default());
    let mut worker = stage.worker(provider.clone(), 10_000);
    worker.settings.max_concurrent = 1;
    let cancel = CancellationToken::new();
    let running = tokio::spawn(worker.run(cancel.clone()));
    eventually(20, "every due payment is asked for", || async {
        (provider.authorizations() == 6).then_some(())
    })
    .await;
    assert_eq!(
        provider.most_in_flight.load(SeqCst),
        1,
        "the bulkhead holds"
    );
    for order in &stage.orders {
        assert_eq!(
            stage.order_status(*order).await,
            OrderStatus::Pending,
            "nothing recorded while the orders are locked"
        );
    }
    drop(held);
    for order in &stage.orders {
        eventually(20, "the payment is recorded", || async {
            (stage.order_status(*order).await == OrderStatus::Confirmed).then_some(())
        })
        .await;
    }
    cancel.cancel();
    running.await.expect("the worker stops");
}

async fn a_call_the_provider_never_answers_times_out_and_is_retried_under_the_same_key(
    backend: Backend,
) {
    use std::sync::atomic::Ordering::SeqCst;
    let stage = Stage::new(backend, 1).await;
    stage.hold_stock(stage.orders[0]).await;
    let provider = Arc::new(Provider {
        hang_first: 1.into(),
        ..Provider::default()
    });
    // The stage's worker times calls out after 200 ms.
    let worker = stage.worker(provider.clone(), 10_000);
    run_until(&stage, worker, OrderStatus::Confirmed).await;
    assert_eq!(
        provider.calls.load(SeqCst),
        2,
        "asked again after the timeout"
    );
    assert_eq!(provider.authorizations(), 1, "under the same key");
    assert_eq!(stage.confirmations(stage.orders[0]).await, 1);
}

/// A worker calls the provider and dies before recording the answer: once its claim
/// lapses, another worker asks again under the same idempotency key, so the provider
/// authorizes once and the order is confirmed once.
async fn a_worker_that_died_between_the_provider_call_and_recording_it_is_replaced_and_the_order_paid_once(
    backend: Backend,
) {
    let stage = Stage::new(backend, 1).await;
    let order = stage.orders[0];
    stage.hold_stock(order).await;
    let provider = Arc::new(Provider::default());
    let dying = stage.worker(provider.clone(), 100);
    let claimed = claim_of(&dying, order).await;
    let _answer_lost = dying.call(&claimed).await;
    drop(dying);
    let survivor = stage.worker(provider.clone(), 10_000);
    run_until(&stage, survivor, OrderStatus::Confirmed).await;
    assert_eq!(provider.authorizations(), 1, "one authorization");
    assert_eq!(stage.confirmations(order).await, 1, "confirmed once");
    assert_eq!(stage.attempt(order).await.0, "approved");
    assert_eq!(provider.voided(), Vec::<String>::new());
}

/// How the outcome of a stalled claim meets the outcome of the claim that took over.
#[derive(Debug, Clone, Copy)]
enum Meeting {
    LateRecordedLast,
    LateRecordedFirst,
    /// One worker claimed the attempt twice and holds both outcomes.
    InOneBatch,
}

async fn an_outcome_recorded_after_its_lease_was_taken_over_pays_once_and_voids_nothing(
    backend: Backend,
) {
    let meetings = [
        Meeting::LateRecordedLast,
        Meeting::LateRecordedFirst,
        Meeting::InOneBatch,
    ];
    let stage = Stage::new(backend, meetings.len()).await;
    let provider = Arc::new(Provider::default());
    let late = stage.worker(provider.clone(), 100);
    let fresh = stage.worker(provider.clone(), 100);
    for (meeting, order) in meetings.into_iter().zip(stage.orders.clone()) {
        stage.hold_stock(order).await;
        let first = claim_of(&late, order).await;
        let first_called = late.call(&first).await;
        // `late` stalls (a database outage, say) past its lease; the attempt is
        // claimed again and the provider asked again, under the same key.
        let taker = match meeting {
            Meeting::InOneBatch => &late,
            _ => &fresh,
        };
        let second = claim_of(taker, order).await;
        let second_called = taker.call(&second).await;
        match meeting {
            Meeting::LateRecordedLast => {
                fresh.record(vec![(second, second_called)]).await;
                late.record(vec![(first, first_called)]).await;
            }
            Meeting::LateRecordedFirst => {
                late.record(vec![(first, first_called)]).await;
                fresh.record(vec![(second, second_called)]).await;
            }
            Meeting::InOneBatch => {
                late.record(vec![(first, first_called), (second, second_called)])
                    .await;
            }
        }
        assert_eq!(
            stage.order_status(order).await,
            OrderStatus::Confirmed,
            "{meeting:?}"
        );
        let (status, reference) = stage.attempt(order).await;
        assert_eq!(status, "approved", "{meeting:?}");
        assert!(reference.is_some(), "{meeting:?}");
        assert_eq!(stage.confirmations(order).await, 1, "{meeting:?}");
    }
    assert_eq!(provider.authorizations(), meetings.len(), "one per order");
    assert_eq!(provider.voided(), Vec::<String>::new(), "nothing voided");
}

async fn a_void_the_provider_never_answers_does_not_hold_up_the_worker(backend: Backend) {
    let stage = Stage::new(backend, 1).await;
    let order = stage.orders[0];
    stage.hold_stock(order).await;
    let provider = Arc::new(Provider {
        voids_hang: true,
        ..Provider::default()
    });
    let worker = stage.worker(provider, 10_000);
    let claimed = claim_of(&worker, order).await;
    let called = worker.call(&claimed).await;
    // The customer cancels while the provider is answering: the money must be released.
    stage.cancel(order).await;
    tokio::time::timeout(
        Duration::from_secs(5),
        worker.record(vec![(claimed, called)]),
    )
    .await
    .expect("recording ends although the void never does");
    assert_eq!(stage.attempt(order).await.0, "voided");
    assert_eq!(stage.order_status(order).await, OrderStatus::Cancelled);
}

/// Five orders' stock held in one transaction while the worker has places for two: those
/// two are opened under the worker's claim and handed to it (a claim could not take them:
/// their lease, a minute, runs all through the test), the other three opened for it to
/// claim. All five are paid, each asked for once.
async fn payments_are_handed_to_the_worker_by_the_transaction_that_opens_them_and_the_rest_claimed(
    backend: Backend,
) {
    let stage = Stage::new(backend, 5).await;
    let provider = Arc::new(Provider::default());
    let worker = stage.worker(provider.clone(), 60_000);
    let handoff = worker.handoff.clone();
    let others = handoff.reserve(Handoff::MOST - 2);
    assert_eq!(others.places(), Handoff::MOST - 2);
    stage.reserve(&stage.orders, &handoff, true).await;
    let locked = fixtures::locked_attempts(stage.store.db()).await;
    assert_eq!(
        locked, 2,
        "two opened claimed, as many as there were places"
    );
    drop(others);
    run_until(&stage, worker, OrderStatus::Confirmed).await;
    assert_eq!(provider.authorizations(), 5);
    assert_eq!(
        provider.calls.load(std::sync::atomic::Ordering::SeqCst),
        5,
        "each payment asked for once"
    );
}

/// A reservation handled again (its order has its attempt already) hands nothing over:
/// the attempt it made up was never written, and the provider must never hear of it. A
/// transaction that rolls back hands nothing over and gives its places back. An attempt
/// whose lease ran out while it waited is not taken: a claim takes it.
async fn a_reservation_handled_again_or_rolled_back_hands_nothing_over(backend: Backend) {
    let stage = Stage::new(backend, 2).await;
    let worker = stage.worker(Arc::new(Provider::default()), 60_000);
    let handoff = worker.handoff.clone();
    let order = stage.orders[0];
    stage.reserve(&[order], &handoff, true).await;
    stage.reserve(&[order], &handoff, true).await;
    let taken = handoff.take(10);
    assert_eq!(
        taken.iter().map(|a| a.order_id).collect::<Vec<_>>(),
        vec![order],
        "one attempt handed over, the one written"
    );
    let written = fixtures::attempt_id_of(stage.store.db(), order).await;
    assert_eq!(taken[0].id, written);

    stage.reserve(&[stage.orders[1]], &handoff, false).await;
    assert!(
        handoff.take(10).is_empty(),
        "rolled back: nothing handed over"
    );
    assert_eq!(
        handoff.reserve(Handoff::MOST).places(),
        Handoff::MOST,
        "and its place is free again"
    );

    let short = stage.worker(Arc::new(Provider::default()), 1);
    stage
        .reserve(&[stage.orders[1]], &short.handoff, true)
        .await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(
        short.handoff.take(10).is_empty(),
        "its lease ran out while it waited"
    );
    let claimed = claim_of(&short, stage.orders[1]).await;
    assert_eq!(claimed.order_id, stage.orders[1], "a claim takes it");
}

/// The worker claims from the database only when something may be due there, and misses
/// nothing for it: with a poll longer than the test, attempts opened for it to claim (its
/// handoff full) are claimed at once, and then a payment whose call timed out is claimed
/// again when its retry is due. Each is asked for once, but the one retried.
async fn attempts_due_in_the_database_are_claimed_when_due_without_waiting_for_the_poll(
    backend: Backend,
) {
    use std::sync::atomic::Ordering::SeqCst;
    let stage = Stage::new(backend, 7).await;
    let provider = Arc::new(Provider::default());
    let worker = stage.worker_polling(provider.clone(), 60_000, Duration::from_secs(120));
    let handoff = worker.handoff.clone();
    let cancel = CancellationToken::new();
    let running = tokio::spawn(worker.run(cancel.child_token()));
    // Its first round's claim (finding nothing) is behind it.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (first, last) = stage.orders.split_at(6);
    let others = handoff.reserve(Handoff::MOST - 2);
    stage.reserve(first, &handoff, true).await;
    drop(others);
    all_confirmed(&stage, "two handed over, four opened unclaimed", first).await;
    assert_eq!(provider.calls.load(SeqCst), 6, "each asked for once");

    // The next call never answers: it times out, and its retry is due a moment later.
    provider.hang_first.store(7, SeqCst);
    stage.reserve(last, &handoff, true).await;
    all_confirmed(&stage, "one handed over, its call retried", last).await;
    assert_eq!(provider.calls.load(SeqCst), 8, "asked again once");
    assert_eq!(provider.authorizations(), 7);
    cancel.cancel();
    running.await.expect("the worker stops");
}

/// Waits until each of `orders` is confirmed.
async fn all_confirmed(stage: &Stage, what: &str, orders: &[Uuid]) {
    for order in orders {
        eventually(
            20,
            &format!("{what}: order {order} to be confirmed"),
            || async { (stage.order_status(*order).await == OrderStatus::Confirmed).then_some(()) },
        )
        .await;
    }
}

/// When a claim may find something: at start (an earlier process may have left attempts
/// due), once an attempt is opened unclaimed or falls due, and not while every attempt is
/// handed over.
#[test]
fn a_claim_is_due_only_when_an_attempt_may_wait_in_the_database() {
    let handoff = Arc::new(Handoff::new(
        Arc::new(Breaker::new(Default::default())),
        60_000,
    ));
    let now = super::worker::now_ms();
    let poll = Duration::from_millis(250);
    assert!(handoff.claim_due(now), "at start");
    assert!(!handoff.claim_due(now), "taken by the claim that followed");
    assert_eq!(handoff.until_due(now, poll), poll);

    handoff.reserve(1).hand_over(Vec::new(), false);
    assert!(!handoff.claim_due(now), "everything opened was handed over");
    handoff.reserve(1).hand_over(Vec::new(), true);
    assert!(handoff.claim_due(now), "some were opened unclaimed");

    handoff.due_from(now + 50);
    assert_eq!(handoff.until_due(now, poll), Duration::from_millis(50));
    assert!(!handoff.claim_due(now), "not due yet");
    assert!(handoff.claim_due(now + 50), "due");
    assert!(!handoff.claim_due(now + 50));

    handoff.due_from(now - 5);
    assert_eq!(
        handoff.until_due(now, poll),
        poll,
        "due already: the worker claims once it has room, and does not spin meanwhile"
    );
}
