//! Cleanup: published outbox rows and inbox keys older than their retention are deleted,
//! a chunk at a time, and nothing else is; with no retention for the outbox, the relay
//! deletes each row once the bus took it.

use messaging::clean;

use super::*;

async fn only_published_outbox_rows_and_inbox_keys_past_their_retention_are_deleted(
    backend: Backend,
) {
    let dbs = open(backend).await;
    let settings = MessagingSettings {
        outbox_retention_secs: 3600,
        ..settings()
    };
    let now = store::now_ms();
    let retention = settings.outbox_retention_secs as i64 * 1000;
    let (old_published, new_published, old_unpublished) = (
        event(Uuid::now_v7(), 1),
        event(Uuid::now_v7(), 1),
        event(Uuid::now_v7(), 1),
    );
    commit(
        &dbs,
        &Outbox::new(PRODUCER),
        &[
            old_published.clone(),
            new_published.clone(),
            old_unpublished.clone(),
        ],
    )
    .await;
    for (event, published_at) in [
        (&old_published, Some(now - retention - 60_000)),
        (&new_published, Some(now - retention + 60_000)),
        (&old_unpublished, None),
    ] {
        execute(
            dbs.producer.conn(),
            "UPDATE outbox SET published_at = $1, created_at = $2 WHERE event_id = $3",
            vec![
                published_at.into(),
                (now - retention * 2).into(),
                event.id.into(),
            ],
        )
        .await
        .expect("date the row");
    }
    // More old inbox keys than one chunk (5,000) deletes, and one recent key.
    let inbox_retention = settings.inbox_retention_secs as i64 * 1000;
    execute(
        dbs.consumer.conn(),
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 5001) \
         INSERT INTO inbox (event_id, handler, processed_at) \
         SELECT $1, 'old-' || i, $2 FROM n",
        vec![
            Uuid::now_v7().into(),
            (now - inbox_retention - 60_000).into(),
        ],
    )
    .await
    .expect("old inbox keys");
    execute(
        dbs.consumer.conn(),
        "INSERT INTO inbox (event_id, handler, processed_at) VALUES ($1, 'recent', $2)",
        vec![
            Uuid::now_v7().into(),
            (now - inbox_retention + 60_000).into(),
        ],
    )
    .await
    .expect("a recent inbox key");

    let (outbox, _) = clean(&dbs.producer, &settings).await.expect("clean");
    let (_, inbox) = clean(&dbs.consumer, &settings).await.expect("clean");
    assert_eq!((outbox, inbox), (1, 5001), "rows deleted");
    let left = query(
        dbs.producer.conn(),
        "SELECT event_id FROM outbox ORDER BY id",
        vec![],
    )
    .await
    .expect("outbox");
    let left: Vec<Uuid> = left
        .iter()
        .map(|r| r.try_get("", "event_id").expect("id"))
        .collect();
    assert_eq!(
        left,
        [new_published.id, old_unpublished.id],
        "a recent published row and an unpublished one, however old, stay"
    );
    assert_eq!(
        scalar(&dbs.consumer, "SELECT COUNT(*) FROM inbox").await,
        1,
        "the recent inbox key stays"
    );
}

mod only_published_outbox_rows_and_inbox_keys_past_their_retention_are_deleted {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        super::only_published_outbox_rows_and_inbox_keys_past_their_retention_are_deleted(
            Backend::Sqlite,
        )
        .await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        super::only_published_outbox_rows_and_inbox_keys_past_their_retention_are_deleted(
            Backend::Postgres,
        )
        .await
    }
}

/// With no outbox retention (the default) the relay deletes each row once the bus took
/// it; with one, it marks the row published and keeps it for the cleaner. Either way every
/// event is delivered once.
async fn the_relay_deletes_what_it_published_unless_the_outbox_keeps_it(
    transport: Transport,
    backend: Backend,
) {
    for retention in [0, 3600] {
        let dbs = open(backend).await;
        let settings = MessagingSettings {
            outbox_retention_secs: retention,
            ..settings()
        };
        let bus = bus(transport, &dbs, "instance-a").await;
        let running =
            start_configured(bus, &dbs, "instance-a", Faults::default(), true, settings).await;
        let sent = events(3, 4);
        commit(&dbs, &Outbox::new(PRODUCER), &sent).await;
        assert_exactly_once_in_order(&dbs, &sent).await;
        running.stop().await;
        let (kept, marked) = (
            scalar(&dbs.producer, "SELECT COUNT(*) FROM outbox").await,
            scalar(
                &dbs.producer,
                "SELECT COUNT(*) FROM outbox WHERE published_at IS NOT NULL",
            )
            .await,
        );
        let expected = if retention == 0 { 0 } else { sent.len() as i64 };
        assert_eq!(
            (kept, marked),
            (expected, expected),
            "outbox rows left, and of them marked published, with {retention} s of retention"
        );
    }
}

mod the_relay_deletes_what_it_published_unless_the_outbox_keeps_it {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn local_sqlite() {
        super::the_relay_deletes_what_it_published_unless_the_outbox_keeps_it(
            Transport::Local,
            Backend::Sqlite,
        )
        .await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn local_postgres() {
        super::the_relay_deletes_what_it_published_unless_the_outbox_keeps_it(
            Transport::Local,
            Backend::Postgres,
        )
        .await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_postgres() {
        super::the_relay_deletes_what_it_published_unless_the_outbox_keeps_it(
            Transport::Redis,
            Backend::Postgres,
        )
        .await
    }
}
