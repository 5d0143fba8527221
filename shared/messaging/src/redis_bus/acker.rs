//! Settling a subscription's deliveries: acknowledgements (XACK) after the consumer's
//! commit, the ones Redis did not take kept and sent again, retries re-claimed after their
//! delay, and the backlog the progress watchdog reads.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redis::aio::ConnectionManager;

use super::connection::{count_error, unavailable};
use super::gate::StreamEntry;
use super::groups::is_no_group;
use super::subscription::SubState;
use crate::bus::{Acker, BusError, DeliveryTag};

/// Settles this subscription's deliveries; knows the producers it reads from, for its
/// backlog.
pub(super) struct RedisAcker(pub(super) Arc<SubState>, pub(super) Vec<String>);

#[async_trait]
impl Acker for RedisAcker {
    /// What the partitions this instance holds still have for its group: entries
    /// delivered and not acknowledged, plus entries not read yet (`XINFO GROUPS`).
    async fn backlog(&self) -> Result<Option<u64>, BusError> {
        let state = &self.0;
        let partitions: Vec<u32> = state.flow().owned.keys().copied().collect();
        let mut conn = state.inner.conn.clone();
        let mut total = 0_u64;
        for producer in &self.1 {
            for &partition in &partitions {
                let stream = state.inner.stream(producer, partition);
                let groups: Vec<HashMap<String, redis::Value>> = redis::cmd("XINFO")
                    .arg("GROUPS")
                    .arg(&stream)
                    .query_async(&mut conn)
                    .await
                    .map_err(unavailable("backlog"))?;
                for group in groups {
                    let named = matches!(group.get("name"), Some(v) if redis::from_redis_value::<String>(v.clone()).ok().as_deref() == Some(state.group));
                    if !named {
                        continue;
                    }
                    let number = |field: &str| {
                        group
                            .get(field)
                            .and_then(|v| redis::from_redis_value::<u64>(v.clone()).ok())
                            .unwrap_or(0)
                    };
                    total += number("pending") + number("lag");
                }
            }
        }
        Ok(Some(total))
    }

    async fn ack(&self, tags: &[DeliveryTag]) -> Result<(), BusError> {
        let state = &self.0;
        let mut by_stream: HashMap<Arc<str>, Vec<String>> = HashMap::new();
        for tag in tags {
            if let Some(StreamEntry { stream, id }) = tag.get::<StreamEntry>() {
                by_stream
                    .entry(stream.clone())
                    .or_default()
                    .push(id.to_string());
            }
        }
        let mut pipe = redis::pipe();
        for (stream, ids) in &by_stream {
            pipe.cmd("XACK")
                .arg(&**stream)
                .arg(state.group)
                .arg(ids)
                .ignore();
        }
        let mut conn = state.inner.conn.clone();
        let acked: Result<(), redis::RedisError> = pipe.query_async(&mut conn).await;
        if acked.is_err() {
            // The work is committed: keep the acknowledgements to send again later. If
            // this process dies first, the entries are claimed again and the inbox skips
            // them.
            let mut flow = state.flow();
            for (stream, ids) in by_stream {
                flow.unacked
                    .extend(ids.into_iter().map(|id| (stream.clone(), id)));
            }
        }
        for tag in tags {
            state.settle(tag);
        }
        acked.map_err(unavailable("ack"))
    }

    async fn retry(
        &self,
        tag: &DeliveryTag,
        delay: Duration,
        _error: &str,
    ) -> Result<(), BusError> {
        let state = self.0.clone();
        let Some(entry) = state.flow().gate.outstanding(tag).cloned() else {
            return Ok(());
        };
        // The entry stays its key's head (later entries of the key keep waiting). After
        // the delay it is claimed again, which counts the delivery in Redis.
        tokio::spawn(async move {
            tokio::select! {
                _ = state.closed.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
            let tag = entry.tag();
            let mut failures = 0;
            loop {
                if state.closed.is_cancelled() {
                    return;
                }
                let (held, owned) = {
                    let flow = state.flow();
                    (
                        flow.holds(entry.partition, Instant::now()),
                        flow.active && flow.owned.contains_key(&entry.partition),
                    )
                };
                if !owned {
                    // The partition is no longer ours: its owner delivers the entry, and
                    // claiming it here would take it from them.
                    state.forget(&tag);
                    return;
                }
                if !held {
                    // Its lease is not confirmed now: wait for a renewal to decide.
                    tokio::select! {
                        _ = state.closed.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(state.inner.settings.lease_ms / 3)) => {}
                    }
                    continue;
                }
                let mut conn = state.inner.conn.clone();
                let claimed: Result<redis::streams::StreamClaimReply, redis::RedisError> =
                    redis::cmd("XCLAIM")
                        .arg(&*entry.stream)
                        .arg(state.group)
                        .arg(&state.inner.config.instance)
                        .arg(0)
                        .arg(&*entry.id)
                        .query_async(&mut conn)
                        .await;
                match claimed {
                    Ok(reply) if !reply.ids.is_empty() => {
                        let ready = state.flow().gate.again(&tag, entry.attempt + 1);
                        if ready {
                            state.ready.notify_one();
                        }
                        return;
                    }
                    Ok(_) => {
                        // The entry's data is gone from the stream: nothing to deliver.
                        tracing::error!(module = state.group, id = %entry.id, "a retried entry was trimmed away");
                        let _ = ack_ids(
                            &mut conn,
                            &entry.stream,
                            state.group,
                            &[entry.id.to_string()],
                        )
                        .await;
                        state.settle(&tag);
                        return;
                    }
                    Err(e) => {
                        // Redis is away: the entry stays pending, its key stays held.
                        failures += 1;
                        let delay = state.inner.settings.backoff(failures);
                        count_error("retry");
                        tracing::warn!(module = state.group, error = %e, delay_ms = delay.as_millis() as u64, "re-claiming a retried entry failed; trying again");
                        tokio::select! {
                            _ = state.closed.cancelled() => return,
                            _ = tokio::time::sleep(delay) => {}
                        }
                    }
                }
            }
        });
        Ok(())
    }
}

impl SubState {
    /// Acknowledges entries of types this group does not take; what Redis does not take
    /// now is sent again later, so nothing stays pending for them.
    pub(super) async fn ack_foreign(
        &self,
        conn: &mut ConnectionManager,
        stream: &str,
        ids: Vec<String>,
    ) {
        if let Err(e) = ack_ids(conn, stream, self.group, &ids).await {
            count_error("ack");
            tracing::warn!(module = self.group, error = %e, "acknowledging foreign entries failed; sending again later");
            let stream: Arc<str> = Arc::from(stream);
            self.flow()
                .unacked
                .extend(ids.into_iter().map(|id| (stream.clone(), id)));
        }
    }
}

/// Sends again the acknowledgements that failed earlier; what fails again is kept for the
/// next pass.
pub(super) async fn resend_unacked(state: &SubState, conn: &mut ConnectionManager) {
    let group = state.group;
    let unacked = std::mem::take(&mut state.flow().unacked);
    let mut again = Vec::new();
    for (stream, id) in unacked {
        match ack_ids(conn, &stream, group, std::slice::from_ref(&id)).await {
            Ok(()) => {}
            // The group is gone, and its pending entries with it.
            Err(e) if is_no_group(&e) => {}
            Err(_) => again.push((stream, id)),
        }
    }
    state.flow().unacked.extend(again);
}

pub(super) async fn ack_ids(
    conn: &mut ConnectionManager,
    stream: &str,
    group: &str,
    ids: &[String],
) -> Result<(), redis::RedisError> {
    if ids.is_empty() {
        return Ok(());
    }
    let _: i64 = redis::cmd("XACK")
        .arg(stream)
        .arg(group)
        .arg(ids)
        .query_async(conn)
        .await?;
    Ok(())
}
