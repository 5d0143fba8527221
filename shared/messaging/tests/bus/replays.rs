//! Replaying and discarding dead letters, against the real consumer: an operator's change
//! and the consumer's replay of one letter never both take effect, and a letter whose
//! event no handler takes any more can still be settled.

use messaging::dead_letters::{self, Change};
use tokio::sync::Notify;

use super::*;

/// Applies events like [`Recorder`], but holds each replay open until the test lets it
/// finish, so the test can act while the replay's transaction is in flight.
#[derive(Clone, Default)]
struct Gated(Arc<Gate>);

#[derive(Default)]
struct Gate {
    entered: Notify,
    release: Notify,
}

#[async_trait]
impl Handler for Gated {
    fn name(&self) -> &'static str {
        "replays.gated"
    }
    fn event_types(&self) -> &'static [&'static str] {
        &[OrderConfirmedV1::TYPE]
    }
    async fn handle(&self, tx: &mut Tx, events: &[&Envelope]) -> Result<(), HandlerError> {
        Recorder.handle(tx, events).await?;
        self.0.entered.notify_one();
        self.0.release.notified().await;
        Ok(())
    }
}

/// Parks `event` in the consumer's dead-letter store, as the consumer would after its
/// last failed attempt; returns the letter's id.
async fn park(dbs: &Dbs, event: &Envelope, handlers: &str) -> i64 {
    let rows = query(
        dbs.consumer.conn(),
        "INSERT INTO dead_letters (event_id, event_type, handlers, raw, attempts, last_error, status, first_failed_at, last_failed_at) \
         VALUES ($1, $2, $3, $4, 3, 'a bug', 'dead', 0, 0) RETURNING id",
        vec![
            event.id.into(),
            event.event_type.clone().into(),
            handlers.into(),
            event.to_bytes().into(),
        ],
    )
    .await
    .expect("park a letter");
    rows[0].try_get("", "id").expect("an id")
}

async fn status(dbs: &Dbs, id: i64) -> String {
    dead_letters::get(&dbs.consumer, id)
        .await
        .expect("read the letter")
        .expect("the letter")
        .status
}

struct Consuming {
    replays: Arc<Notify>,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

impl Consuming {
    async fn start(dbs: &Dbs, handlers: Vec<Arc<dyn Handler>>) -> Consuming {
        let bus = bus(Transport::Local, dbs, "instance-a").await;
        let subscription = bus
            .subscribe(SubscriberSpec {
                module: CONSUMER,
                event_types: vec![OrderConfirmedV1::TYPE],
                max_in_flight: settings().max_in_flight,
            })
            .await
            .expect("subscribe");
        let replays = Arc::new(Notify::new());
        let consumer = Consumer {
            db: dbs.consumer.clone(),
            outbox: Outbox::new(CONSUMER),
            handlers,
            settings: settings(),
            faults: Faults::default(),
            replays: replays.clone(),
            progress: messaging::Progress::new(CONSUMER),
        };
        let cancel = CancellationToken::new();
        let task = tokio::spawn(consumer.run(subscription, cancel.child_token()));
        Consuming {
            replays,
            cancel,
            task,
        }
    }

    /// Stops once the replay under way, if any, has ended: the consumer looks at its
    /// cancellation only between replays.
    async fn stop(self) {
        self.cancel.cancel();
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("the consumer stops")
            .expect("the consumer does not panic");
    }
}

async fn a_discard_and_a_replay_of_one_letter_never_both_take_effect(backend: Backend) {
    let dbs = open(backend).await;
    let event = event(Uuid::now_v7(), 1);
    let id = park(&dbs, &event, "replays.gated").await;
    let gated = Gated::default();
    let consuming = Consuming::start(&dbs, vec![Arc::new(gated.clone())]).await;
    assert_eq!(
        dead_letters::request_replay(&dbs.consumer, id)
            .await
            .expect("request"),
        Change::Done
    );
    consuming.replays.notify_one();
    tokio::time::timeout(WAIT, gated.0.entered.notified())
        .await
        .expect("the replay starts");

    // The operator discards the letter while its replay runs.
    let discarding = tokio::spawn({
        let db = dbs.consumer.clone();
        async move { dead_letters::discard(&db, id).await.expect("discard") }
    });
    let discarded = match backend {
        // Row locks: the discard does not wait for the replay.
        Backend::Postgres => {
            let change = discarding.await.expect("the discard task");
            gated.0.release.notify_one();
            change
        }
        // One writer at a time: the discard waits until the replay has committed.
        Backend::Sqlite => {
            gated.0.release.notify_one();
            discarding.await.expect("the discard task")
        }
    };
    consuming.stop().await;

    // What the operator was told is what happened.
    match discarded {
        Change::Done => {
            assert_eq!(status(&dbs, id).await, "discarded");
            assert_eq!(applied(&dbs).await, 0, "the replay was undone");
        }
        Change::WrongStatus => {
            assert_eq!(status(&dbs, id).await, "replayed");
            assert_eq!(applied(&dbs).await, 1, "the replay stands");
        }
        Change::NotFound => panic!("the letter exists"),
    }
    if matches!(backend, Backend::Postgres) {
        assert_eq!(discarded, Change::Done, "the discard went first");
    }
}

async fn a_letter_no_handler_takes_any_more_is_replayed_as_nothing_to_do(backend: Backend) {
    let dbs = open(backend).await;
    // Parked by a release whose handler of this event has since been removed.
    let event = event(Uuid::now_v7(), 1);
    let id = park(&dbs, &event, "replays.removed").await;
    let consuming = Consuming::start(&dbs, Vec::new()).await;
    assert_eq!(
        dead_letters::request_replay(&dbs.consumer, id)
            .await
            .expect("request"),
        Change::Done
    );
    consuming.replays.notify_one();
    let settled = {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let now = status(&dbs, id).await;
            if now != "replay_requested" {
                break now;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the replay was not settled in time"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let letter = dead_letters::get(&dbs.consumer, id)
        .await
        .expect("read the letter")
        .expect("the letter");
    assert_eq!(settled, "replayed", "last error: {}", letter.last_error);
    consuming.stop().await;
}

/// A letter whose event a copy then carried through (a redelivery after a lost
/// acknowledgement, say) is replayed through the inbox: the replay settles it and runs no
/// handler again.
async fn a_replayed_letter_whose_event_was_processed_meanwhile_runs_no_handler_again(
    backend: Backend,
) {
    let dbs = open(backend).await;
    let event = event(Uuid::now_v7(), 1);
    let id = park(&dbs, &event, Recorder.name()).await;
    let consuming = Consuming::start(&dbs, vec![Arc::new(Recorder)]).await;
    let publisher = bus(Transport::Local, &dbs, "publisher").await;
    publisher
        .publish(&[outgoing(&event)])
        .await
        .expect("publish a copy");
    wait_applied(&dbs, 1).await;
    assert_eq!(
        dead_letters::request_replay(&dbs.consumer, id)
            .await
            .expect("request"),
        Change::Done
    );
    consuming.replays.notify_one();
    let deadline = tokio::time::Instant::now() + WAIT;
    while status(&dbs, id).await == "replay_requested" {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the replay was not settled in time"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status(&dbs, id).await, "replayed");
    let settled = drained(&dbs).await;
    assert_eq!(settled.applied, 1, "the replay ran no handler again");
    assert_eq!(settled.inbox_keys, 1);
    consuming.stop().await;
}

macro_rules! on_both_backends {
    ($($name:ident),+ $(,)?) => {
        $(
            mod $name {
                use super::*;

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$name(Backend::Sqlite).await
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    super::$name(Backend::Postgres).await
                }
            }
        )+
    };
}

on_both_backends!(
    a_discard_and_a_replay_of_one_letter_never_both_take_effect,
    a_letter_no_handler_takes_any_more_is_replayed_as_nothing_to_do,
    a_replayed_letter_whose_event_was_processed_meanwhile_runs_no_handler_again,
);
