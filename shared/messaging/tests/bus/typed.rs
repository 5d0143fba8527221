//! Typed handler registration (`messaging::on`), as modules use it: the handler gets the
//! batch's events decoded, each with the cause of what it publishes in consequence; a
//! payload that does not decode as the registered type is rejected for good.

use messaging::{Incoming, Store, on};

use super::*;

/// Applies each event like [`Recorder`] (the effect names the event by its cause's
/// causation), and publishes a follow-up under the event's cause.
async fn follow(tx: &mut Tx, events: Vec<Incoming<OrderConfirmedV1>>) -> Result<(), HandlerError> {
    for Incoming { event, cause } in events {
        let handled = cause
            .causation_id
            .ok_or_else(|| HandlerError::Reject("no causation".into()))?;
        apply_effects(tx, handled, &event.order_id.to_string(), event.total_minor).await?;
        tx.publish_with(&cause, &payload(event.order_id, event.total_minor + 100))?;
    }
    Ok(())
}

async fn a_typed_handler_gets_decoded_events_and_publishes_under_each_one_s_cause(
    backend: Backend,
) {
    let dbs = open(backend).await;
    let sent = events(3, 1);
    commit(&dbs, &Outbox::new(PRODUCER), &sent).await;
    let handler = on::<OrderConfirmedV1>("typed.follow", |tx, events| Box::pin(follow(tx, events)));
    let running = start_handling(&dbs, vec![handler]).await;
    wait_applied(&dbs, 3).await;
    running.stop().await;
    let rows = query(
        dbs.consumer.conn(),
        "SELECT envelope FROM outbox ORDER BY id",
        vec![],
    )
    .await
    .expect("read the consumer's outbox");
    let mut published: Vec<(Uuid, Option<Uuid>, i64)> = rows
        .iter()
        .map(|row| {
            let text: String = row.try_get("", "envelope").expect("an envelope");
            let e = Envelope::from_bytes(text.as_bytes()).expect("an envelope");
            let seq = e.decode::<OrderConfirmedV1>().expect("decodes").total_minor;
            (e.correlation_id, e.causation_id, seq)
        })
        .collect();
    published.sort_by_key(|(_, causation, _)| *causation);
    let mut expected: Vec<(Uuid, Option<Uuid>, i64)> = sent
        .iter()
        .map(|e| (e.correlation_id, Some(e.id), 101))
        .collect();
    expected.sort_by_key(|(_, causation, _)| *causation);
    assert_eq!(
        published, expected,
        "one follow-up per event, each under the cause of the event it follows"
    );
}

async fn a_payload_that_does_not_decode_as_the_registered_type_is_rejected(backend: Backend) {
    let dbs = open(backend).await;
    let store = Store::new(dbs.consumer.clone(), Outbox::new(CONSUMER));
    // Were it called, the handler would ask for a retry: a rejection comes from decoding.
    let handler = on::<contracts::checkout::OrderCancelledV1>("typed.wrong", |_, _| {
        Box::pin(async { Err(HandlerError::Retry(anyhow::anyhow!("the handler ran"))) })
    });
    let confirmed = event(Uuid::now_v7(), 1);
    let mut tx = store.begin_batch().await.expect("begin");
    let refused = handler.handle(&mut tx, &[&confirmed]).await;
    assert!(
        matches!(refused, Err(HandlerError::Reject(_))),
        "rejected for good, not retried: {refused:?}"
    );
}

on_both_backends!(
    a_typed_handler_gets_decoded_events_and_publishes_under_each_one_s_cause,
    a_payload_that_does_not_decode_as_the_registered_type_is_rejected,
);
