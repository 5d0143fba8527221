//! The publishing transaction (`Store::begin` → `Tx::publish` → `Tx::commit`) on both
//! backends: its events reach the outbox only when it commits, in one go, under its
//! cause; a transaction dropped without commit leaves nothing and runs no hook; the relay
//! is woken by a commit that published something and by nothing else; hooks run after
//! the commit, in the order given; rows given to `insert_at_commit` and changes given to
//! `change_at_commit` are written with the events, or nothing is.

use std::sync::Mutex;

use futures::FutureExt;
use messaging::{PublishError, Store};

use super::*;

/// The producer's store, and its outbox to watch the relay's wake-ups on.
fn store(dbs: &Dbs) -> (Store, Outbox) {
    let outbox = Outbox::new(PRODUCER);
    (Store::new(dbs.producer.clone(), outbox.clone()), outbox)
}

/// The outbox's envelopes, in row order, read on a connection of its own (the pool of a
/// SQLite database has one, which an open transaction holds).
async fn outbox_rows(dbs: &Dbs) -> Vec<Envelope> {
    let (producer, _) = connect(dbs.location()).await;
    query(&producer, "SELECT envelope FROM outbox ORDER BY id", vec![])
        .await
        .expect("read the outbox")
        .iter()
        .map(|row| {
            let text: String = row.try_get("", "envelope").expect("an envelope");
            Envelope::from_bytes(text.as_bytes()).expect("a valid envelope")
        })
        .collect()
}

/// True if the relay was woken since the last look (and takes the wake-up).
fn woken(outbox: &Outbox) -> bool {
    outbox.woken().now_or_never().is_some()
}

/// Hooks that note their number in `ran` when they run.
fn noting(ran: &Arc<Mutex<Vec<u32>>>, n: u32) -> impl FnOnce() + Send + Sync + 'static {
    let ran = ran.clone();
    move || ran.lock().expect("not poisoned").push(n)
}

async fn events_reach_the_outbox_on_commit_under_the_cause_and_hooks_run_after_in_order(
    backend: Backend,
) {
    let dbs = open(backend).await;
    let (store, outbox) = store(&dbs);
    let cause = Cause::fresh();
    let key = Uuid::now_v7();
    let ran = Arc::new(Mutex::new(Vec::new()));
    let mut tx = store.begin(&cause).await.expect("begin");
    tx.publish(&payload(key, 1)).expect("a valid event");
    tx.after_commit(noting(&ran, 1));
    tx.publish(&payload(key, 2)).expect("a valid event");
    tx.after_commit(noting(&ran, 2));
    assert!(
        outbox_rows(&dbs).await.is_empty(),
        "nothing is in the outbox before the commit"
    );
    assert!(ran.lock().expect("not poisoned").is_empty());
    assert!(!woken(&outbox), "the relay is not woken before the commit");
    tx.commit().await.expect("commit");
    let rows = outbox_rows(&dbs).await;
    let seqs: Vec<i64> = rows
        .iter()
        .map(|e| e.decode::<OrderConfirmedV1>().expect("decodes").total_minor)
        .collect();
    assert_eq!(seqs, [1, 2], "both events, in the order published");
    for row in &rows {
        assert_eq!(row.correlation_id, cause.correlation_id);
        assert_eq!(row.causation_id, cause.causation_id);
        assert_eq!(row.key, key.to_string());
    }
    assert_eq!(*ran.lock().expect("not poisoned"), [1, 2]);
    assert!(woken(&outbox), "a commit with events wakes the relay");
    assert!(!woken(&outbox), "once");
}

async fn a_transaction_dropped_without_commit_publishes_nothing_and_runs_no_hook(backend: Backend) {
    let dbs = open(backend).await;
    let (store, outbox) = store(&dbs);
    let ran = Arc::new(Mutex::new(Vec::new()));
    let mut tx = store.begin(&Cause::fresh()).await.expect("begin");
    tx.publish(&payload(Uuid::now_v7(), 1))
        .expect("a valid event");
    tx.after_commit(noting(&ran, 1));
    drop(tx);
    // The rollback also freed the write lock: another transaction commits.
    let mut next = store.begin(&Cause::fresh()).await.expect("begin again");
    next.after_commit(noting(&ran, 2));
    next.commit().await.expect("commit");
    assert!(outbox_rows(&dbs).await.is_empty());
    assert_eq!(
        *ran.lock().expect("not poisoned"),
        [2],
        "only the committed hook ran"
    );
    assert!(
        !woken(&outbox),
        "neither a rollback nor a commit without events wakes the relay"
    );
}

async fn a_batch_publishes_each_event_under_its_own_cause_and_refuses_what_breaks_a_contract(
    backend: Backend,
) {
    let dbs = open(backend).await;
    let (store, outbox) = store(&dbs);
    let (first, second) = (event(Uuid::now_v7(), 1), event(Uuid::now_v7(), 2));
    let mut tx = store.begin_batch().await.expect("begin");
    assert!(
        matches!(
            tx.publish(&payload(Uuid::now_v7(), 3)),
            Err(PublishError::NoCause)
        ),
        "a batch has no cause of its own"
    );
    let mut invalid = payload(Uuid::now_v7(), 4);
    invalid.currency = "euro".into();
    assert!(matches!(
        tx.publish_with(&Cause::following(&first), &invalid),
        Err(PublishError::Contract(_))
    ));
    tx.publish_with(&Cause::following(&first), &payload(Uuid::now_v7(), 5))
        .expect("a valid event");
    tx.publish_with(&Cause::following(&second), &payload(Uuid::now_v7(), 6))
        .expect("a valid event");
    tx.commit().await.expect("commit");
    let rows = outbox_rows(&dbs).await;
    let causes: Vec<_> = rows
        .iter()
        .map(|e| (e.correlation_id, e.causation_id))
        .collect();
    assert_eq!(
        causes,
        [
            (first.correlation_id, Some(first.id)),
            (second.correlation_id, Some(second.id))
        ],
        "each event follows its own cause; the refused ones are not published"
    );
    assert!(woken(&outbox));
}

/// Inbox rows for `ids` under handler `h`, as a module's own rows for `insert_at_commit`.
fn inbox_rows(ids: &[Uuid]) -> store::Rows {
    use sea_orm::sea_query::ArrayType;
    store::Rows::new()
        .column(
            "event_id",
            ArrayType::Uuid,
            ids.iter().map(|id| (*id).into()),
        )
        .column("handler", ArrayType::String, ids.iter().map(|_| "h".into()))
        .column(
            "processed_at",
            ArrayType::BigInt,
            ids.iter().map(|_| 1_i64.into()),
        )
}

async fn inbox_ids(dbs: &Dbs) -> Vec<Uuid> {
    processed_at(dbs)
        .await
        .into_iter()
        .map(|(id, _)| id)
        .collect()
}

/// Rows given to `insert_at_commit` are written when the transaction commits, with its
/// events (one statement on PostgreSQL); if one of them cannot be written, the commit
/// fails and nothing of the transaction is kept: no row, no event, no hook, no wake-up.
async fn rows_inserted_at_commit_are_written_with_the_events_or_not_at_all(backend: Backend) {
    let dbs = open(backend).await;
    let (store, outbox) = store(&dbs);
    let ran = Arc::new(Mutex::new(Vec::new()));
    let mut ids = vec![Uuid::now_v7(), Uuid::now_v7()];
    ids.sort();
    let mut tx = store.begin(&Cause::fresh()).await.expect("begin");
    tx.insert_at_commit("inbox", inbox_rows(&ids));
    tx.publish(&payload(Uuid::now_v7(), 1))
        .expect("a valid event");
    assert!(
        inbox_ids(&dbs).await.is_empty(),
        "nothing is written before the commit"
    );
    tx.commit().await.expect("commit");
    assert_eq!(inbox_ids(&dbs).await, ids);
    assert_eq!(outbox_rows(&dbs).await.len(), 1);
    assert!(woken(&outbox));

    // The same keys again: the insert fails, and with it the whole commit.
    let mut tx = store.begin(&Cause::fresh()).await.expect("begin");
    tx.insert_at_commit("inbox", inbox_rows(&[Uuid::now_v7()]));
    tx.insert_at_commit("inbox", inbox_rows(&ids));
    tx.publish(&payload(Uuid::now_v7(), 2))
        .expect("a valid event");
    tx.after_commit(noting(&ran, 1));
    assert!(
        tx.commit().await.is_err(),
        "a row that cannot be written fails the commit"
    );
    assert_eq!(
        inbox_ids(&dbs).await,
        ids,
        "no row of the failed transaction is kept"
    );
    assert_eq!(outbox_rows(&dbs).await.len(), 1, "nor its event");
    assert!(
        ran.lock().expect("not poisoned").is_empty(),
        "nor did its hook run"
    );
    assert!(!woken(&outbox), "nor was the relay woken");
}

/// A batch of inserts and events written without a transaction around them
/// (`Store::writes`) is written all or none: on PostgreSQL in one statement, which is
/// atomic on its own; each event under its own cause, and the relay woken only when
/// something was written. An insert that fails takes the events and the other rows with it.
async fn writes_without_a_transaction_are_written_all_or_none(backend: Backend) {
    let dbs = open(backend).await;
    let (store, outbox) = store(&dbs);
    let mut ids = vec![Uuid::now_v7(), Uuid::now_v7()];
    ids.sort();
    let causes = [Cause::fresh(), Cause::fresh()];
    let mut writes = store.writes();
    writes
        .at_commit()
        .insert_at_commit("inbox", inbox_rows(&ids));
    for (n, cause) in causes.iter().enumerate() {
        writes
            .at_commit()
            .publish_with(cause, &payload(Uuid::now_v7(), n as i64 + 1))
            .expect("a valid event");
    }
    assert!(
        inbox_ids(&dbs).await.is_empty(),
        "nothing before the commit"
    );
    assert!(!woken(&outbox));
    writes.commit().await.expect("commit");
    assert_eq!(inbox_ids(&dbs).await, ids);
    let events = outbox_rows(&dbs).await;
    assert_eq!(events.len(), 2);
    for (event, cause) in events.iter().zip(&causes) {
        assert_eq!(
            event.correlation_id, cause.correlation_id,
            "under its own cause"
        );
    }
    assert!(woken(&outbox));

    // A new row, then the same keys again: the second insert fails, and with it the
    // first and the event.
    let mut writes = store.writes();
    writes
        .at_commit()
        .insert_at_commit("inbox", inbox_rows(&[Uuid::now_v7()]));
    writes
        .at_commit()
        .insert_at_commit("inbox", inbox_rows(&ids));
    writes
        .at_commit()
        .publish_with(&Cause::fresh(), &payload(Uuid::now_v7(), 3))
        .expect("a valid event");
    assert!(
        writes.commit().await.is_err(),
        "a row that cannot be written fails them all"
    );
    assert_eq!(
        inbox_ids(&dbs).await,
        ids,
        "no row of the failed writes is kept"
    );
    assert_eq!(outbox_rows(&dbs).await.len(), 2, "nor their event");
    assert!(!woken(&outbox), "nor was the relay woken");
}

/// Each inbox key's `processed_at`, by key, read on a connection of its own.
async fn processed_at(dbs: &Dbs) -> Vec<(Uuid, i64)> {
    let (producer, _) = connect(dbs.location()).await;
    query(
        &producer,
        "SELECT event_id, processed_at FROM inbox ORDER BY event_id",
        vec![],
    )
    .await
    .expect("read the inbox")
    .iter()
    .map(|row| {
        (
            row.try_get("", "event_id").expect("an id"),
            row.try_get("", "processed_at").expect("a time"),
        )
    })
    .collect()
}

/// Changes given to `change_at_commit` run when the transaction commits, in the order
/// given, with its inserts and events (on PostgreSQL in the same statement, each change's
/// parameters numbered after the ones before it); if the commit fails, none is kept.
async fn changes_at_commit_run_with_the_inserts_and_events_or_not_at_all(backend: Backend) {
    let dbs = open(backend).await;
    let (store, outbox) = store(&dbs);
    let mut ids = vec![Uuid::now_v7(), Uuid::now_v7()];
    ids.sort();
    let mut tx = store.begin(&Cause::fresh()).await.expect("begin");
    tx.insert_at_commit("inbox", inbox_rows(&ids));
    tx.commit().await.expect("commit");
    let db = dbs.producer.backend();
    let set = |at: i64, id: Uuid| {
        store::stmt(
            db,
            "UPDATE inbox SET processed_at = $1 WHERE event_id = $2",
            vec![at.into(), id.into()],
        )
    };

    let added = Uuid::now_v7();
    let mut tx = store.begin(&Cause::fresh()).await.expect("begin");
    tx.change_at_commit(set(7, ids[0]));
    tx.change_at_commit(set(9, ids[1]));
    tx.insert_at_commit("inbox", inbox_rows(&[added]));
    tx.publish(&payload(Uuid::now_v7(), 1))
        .expect("a valid event");
    assert_eq!(
        processed_at(&dbs).await,
        [(ids[0], 1), (ids[1], 1)],
        "nothing is changed before the commit"
    );
    tx.commit().await.expect("commit");
    let mut expected = vec![(ids[0], 7), (ids[1], 9), (added, 1)];
    expected.sort();
    assert_eq!(
        processed_at(&dbs).await,
        expected,
        "each change runs with its own values"
    );
    assert_eq!(outbox_rows(&dbs).await.len(), 1);
    assert!(woken(&outbox));

    // A change, then an insert that cannot be written: the change is not kept either.
    let mut tx = store.begin(&Cause::fresh()).await.expect("begin");
    tx.change_at_commit(set(11, ids[0]));
    tx.insert_at_commit("inbox", inbox_rows(&ids));
    tx.publish(&payload(Uuid::now_v7(), 2))
        .expect("a valid event");
    assert!(
        tx.commit().await.is_err(),
        "a row that cannot be written fails the commit"
    );
    assert_eq!(
        processed_at(&dbs).await,
        expected,
        "no change of the failed transaction is kept"
    );
    assert_eq!(outbox_rows(&dbs).await.len(), 1, "nor its event");
}

on_both_backends!(
    changes_at_commit_run_with_the_inserts_and_events_or_not_at_all,
    writes_without_a_transaction_are_written_all_or_none,
    events_reach_the_outbox_on_commit_under_the_cause_and_hooks_run_after_in_order,
    rows_inserted_at_commit_are_written_with_the_events_or_not_at_all,
    a_transaction_dropped_without_commit_publishes_nothing_and_runs_no_hook,
    a_batch_publishes_each_event_under_its_own_cause_and_refuses_what_breaks_a_contract,
);
