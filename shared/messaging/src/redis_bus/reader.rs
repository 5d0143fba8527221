//! The reader loop of a subscription: keeps the leases (every third of a lease), claims
//! the pending entries of partitions it takes or looks through again, and reads new
//! entries of the partitions it holds as capacity frees up, over a connection of its own.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, MultiplexedConnection};
use redis::streams::{StreamId, StreamReadReply};

use super::acker::ack_ids;
use super::connection::{count_error, partition_of_stream, reader_connection};
use super::gate::Entry;
use super::groups::is_no_group;
use super::leases::{Owned, Watch, leave, maintain};
use super::subscription::SubState;

/// The reader: keeps this instance's name, membership and partition leases, claims the
/// pending entries of partitions it takes (and, now and then, of those it holds), and
/// reads new entries as capacity frees up.
pub(super) async fn read(
    state: Arc<SubState>,
    mut reader: MultiplexedConnection,
    producers: Vec<String>,
    types: HashSet<&'static str>,
) {
    let inner = state.inner.clone();
    let group = state.group;
    let lease = Duration::from_millis(inner.settings.lease_ms);
    let maintain_every = lease / 3;
    // Pending entries nothing delivers (a lost reply, a failed acknowledgement) are looked
    // for this often.
    let sweep_every = lease;
    let block_ms = (inner.settings.lease_ms / 6).clamp(10, 1000);
    let block = Duration::from_millis(block_ms);
    // A half-open connection never answers: give a read up well after its BLOCK.
    let read_timeout = block + (lease / 3).max(Duration::from_millis(500));
    let mut last_maintenance: Option<Instant> = None;
    let mut last_sweep = Instant::now();
    let mut watch = Watch::default();
    let mut failures = 0_u32;
    let mut turn = 0_usize;
    loop {
        if state.closed.is_cancelled() {
            break;
        }
        if last_maintenance.is_none_or(|t| t.elapsed() >= maintain_every) {
            match maintain(&state, &producers, &mut watch).await {
                Ok(()) => last_maintenance = Some(Instant::now()),
                Err(e) => {
                    count_error("leases");
                    tracing::warn!(module = group, error = %format!("{e:#}"), "keeping partition leases failed")
                }
            }
        }
        if last_sweep.elapsed() >= sweep_every {
            state.flow().sweep();
            last_sweep = Instant::now();
        }
        state.expire(Instant::now());
        if let Err(e) = recover(&state, &types).await {
            count_error("claim");
            tracing::warn!(module = group, error = %e, "claiming pending entries failed");
        }
        let free = state.free();
        // Only partitions whose lease outlasts this read by a margin, that are not being
        // handed back, and whose pending entries are all claimed.
        let streams: Vec<String> = {
            let flow = state.flow();
            let horizon = Instant::now() + block + lease / 10;
            let mut owned: Vec<(&u32, &Owned)> = flow
                .owned
                .iter()
                .filter(|(_, o)| flow.active && !o.draining && o.confirmed_until > horizon)
                .collect();
            owned.sort_unstable_by_key(|(p, _)| **p);
            owned
                .into_iter()
                .flat_map(|(_, o)| {
                    o.streams
                        .iter()
                        .filter(|s| !o.recovering.contains_key(*s))
                        .map(|s| s.to_string())
                })
                .collect()
        };
        if free == 0 || streams.is_empty() {
            tokio::select! {
                _ = state.closed.cancelled() => break,
                _ = state.freed.notified() => {}
                _ = tokio::time::sleep(block) => {}
            }
            continue;
        }
        // COUNT bounds each stream: share the free capacity between them, and with less
        // room than streams, read one entry from as many streams as there is room for,
        // taking turns.
        let budget = free.min(inner.settings.consumer_batch * 2);
        let streams: Vec<String> = if budget < streams.len() {
            turn = (turn + 1) % streams.len();
            streams
                .iter()
                .cycle()
                .skip(turn)
                .take(budget)
                .cloned()
                .collect()
        } else {
            streams
        };
        let count = (budget / streams.len()).max(1);
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(group)
            .arg(&inner.config.instance)
            .arg("COUNT")
            .arg(count)
            .arg("BLOCK")
            .arg(block_ms)
            .arg("STREAMS")
            .arg(&streams);
        for _ in &streams {
            cmd.arg(">");
        }
        let reply: Result<Option<StreamReadReply>, redis::RedisError> =
            match tokio::time::timeout(read_timeout, cmd.query_async(&mut reader)).await {
                Ok(reply) => reply,
                Err(_) => Err(redis::RedisError::from((
                    redis::ErrorKind::Io,
                    "no answer to a blocking read",
                ))),
            };
        match reply {
            Ok(reply) => {
                failures = 0;
                let mut conn = inner.conn.clone();
                for key in reply.map(|r| r.keys).unwrap_or_default() {
                    let Some(partition) = partition_of_stream(&key.key) else {
                        continue;
                    };
                    let (keep, skip) = entries(&key.key, partition, key.ids, &types);
                    state.ack_foreign(&mut conn, &key.key, skip).await;
                    for entry in keep {
                        state.offer(entry);
                    }
                }
            }
            Err(e) => {
                failures += 1;
                let delay = inner.settings.backoff(failures);
                // Redis may have handed entries to this consumer in a reply that never
                // arrived: find them before reading anything newer of their keys.
                state.flow().recover_streams(&streams);
                if is_no_group(&e) {
                    // Redis lost the groups (a restart without persistence): make them again.
                    inner.recreate_group(&producers, group).await;
                } else {
                    count_error("read");
                    tracing::warn!(module = group, error = %e, delay_ms = delay.as_millis() as u64, "reading streams failed; reconnecting");
                    if let Ok(Ok(fresh)) =
                        tokio::time::timeout(read_timeout, reader_connection(&inner)).await
                    {
                        reader = fresh;
                    }
                }
                tokio::select! {
                    _ = state.closed.cancelled() => break,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
    leave(&state).await;
    tracing::debug!(module = group, "subscription closed");
}

/// How a look through a stream's pending entries ended.
enum Page {
    /// Nothing more is pending that this instance does not already deal with.
    Done,
    /// More to look at after this id.
    More(String),
    /// No room for more now; continue after this id later.
    Full(Option<String>),
}

const PAGE: usize = 100;

/// Claims pending entries of streams being recovered (a partition just taken, a sweep, a
/// read whose reply was lost), in id order, as far as there is room; a stream is read for
/// new entries again only once its recovery is done.
async fn recover(state: &Arc<SubState>, types: &HashSet<&'static str>) -> anyhow::Result<()> {
    let mut conn = state.inner.conn.clone();
    loop {
        let free = state.free();
        if free == 0 {
            return Ok(());
        }
        let job = {
            let flow = state.flow();
            let now = Instant::now();
            let mut jobs: Vec<(u32, Arc<str>, Option<String>)> = flow
                .owned
                .iter()
                .filter(|(p, o)| !o.draining && flow.holds(**p, now))
                .flat_map(|(p, o)| {
                    o.recovering
                        .iter()
                        .map(move |(s, after)| (*p, s.clone(), after.clone()))
                })
                .collect();
            jobs.sort_unstable_by_key(|(p, _, _)| *p);
            jobs.into_iter().next()
        };
        let Some((partition, stream, after)) = job else {
            return Ok(());
        };
        let page = recover_page(
            state,
            &mut conn,
            partition,
            &stream,
            after.as_deref(),
            free,
            types,
        )
        .await?;
        let mut flow = state.flow();
        let Some(owned) = flow.owned.get_mut(&partition) else {
            continue;
        };
        match page {
            Page::Done => {
                owned.recovering.remove(&stream);
            }
            Page::More(after) => {
                owned.recovering.insert(stream, Some(after));
            }
            Page::Full(after) => {
                owned.recovering.insert(stream, after);
                return Ok(());
            }
        }
    }
}

/// Looks at one page of `stream`'s pending entries after `after`, and claims for this
/// instance, up to `free`, those it does not already deal with (whichever consumer held
/// them), offering them in id order with their deliveries counted.
async fn recover_page(
    state: &Arc<SubState>,
    conn: &mut ConnectionManager,
    partition: u32,
    stream: &str,
    after: Option<&str>,
    free: usize,
    types: &HashSet<&'static str>,
) -> Result<Page, redis::RedisError> {
    let group = state.group;
    // Taken before XPENDING: an entry settled meanwhile is then either still known here
    // or no longer pending there.
    let known = state.flow().known(stream);
    let start = after.map_or_else(|| "-".to_owned(), |id| format!("({id}"));
    let rows: Vec<(String, String, u64, usize)> = redis::cmd("XPENDING")
        .arg(stream)
        .arg(group)
        .arg(&start)
        .arg("+")
        .arg(PAGE)
        .query_async(conn)
        .await?;
    let mut take: Vec<(String, usize)> = Vec::new();
    let mut cursor = after.map(str::to_owned);
    let mut full = false;
    for (id, _consumer, _idle, count) in &rows {
        if !known.contains(id) {
            if take.len() == free {
                full = true;
                break;
            }
            take.push((id.clone(), *count));
        }
        cursor = Some(id.clone());
    }
    if !take.is_empty() {
        let ids: Vec<&str> = take.iter().map(|(id, _)| id.as_str()).collect();
        let reply: redis::streams::StreamClaimReply = redis::cmd("XCLAIM")
            .arg(stream)
            .arg(group)
            .arg(&state.inner.config.instance)
            .arg(0)
            .arg(&ids)
            .query_async(conn)
            .await?;
        let returned: HashSet<&str> = reply.ids.iter().map(|s| s.id.as_str()).collect();
        let missing: Vec<&str> = ids
            .iter()
            .filter(|id| !returned.contains(**id))
            .copied()
            .collect();
        // Not claimed: acknowledged meanwhile (by an earlier owner finishing late), or its
        // data was trimmed away, which XCLAIM answers alike; only the latter is an error.
        let mut gone = Vec::new();
        if !missing.is_empty() {
            let mut pipe = redis::pipe();
            for id in &missing {
                pipe.cmd("XRANGE").arg(stream).arg(*id).arg(*id);
            }
            let found: Vec<redis::streams::StreamRangeReply> = pipe.query_async(conn).await?;
            gone = missing
                .iter()
                .zip(found)
                .filter(|(_, f)| f.ids.is_empty())
                .map(|(id, _)| (*id).to_owned())
                .collect();
        }
        if !gone.is_empty() {
            tracing::error!(
                module = group,
                stream,
                entries = gone.len(),
                "pending entries were trimmed before being handled; acknowledging them"
            );
            ack_ids(conn, stream, group, &gone).await?;
        }
        // XCLAIM counted one more delivery.
        let counts: HashMap<&str, usize> = take.iter().map(|(id, n)| (id.as_str(), *n)).collect();
        let claimed: Vec<StreamId> = reply
            .ids
            .into_iter()
            .map(|mut c| {
                c.delivered_count = counts.get(c.id.as_str()).map(|n| n + 1);
                c
            })
            .collect();
        let (keep, skip) = entries(stream, partition, claimed, types);
        state.ack_foreign(conn, stream, skip).await;
        for entry in keep {
            state.offer(entry);
        }
    }
    Ok(if full {
        Page::Full(cursor)
    } else if rows.len() < PAGE {
        Page::Done
    } else {
        Page::More(cursor.unwrap_or_default())
    })
}

/// Turns stream entries into [`Entry`]s; entries of types this group does not take are
/// returned apart, to be acknowledged at once.
fn entries(
    stream: &str,
    partition: u32,
    ids: Vec<StreamId>,
    types: &HashSet<&'static str>,
) -> (Vec<Entry>, Vec<String>) {
    let stream: Arc<str> = Arc::from(stream);
    let mut keep = Vec::new();
    let mut skip = Vec::new();
    for item in ids {
        let field = |name: &str| -> Option<Vec<u8>> {
            item.map
                .get(name)
                .and_then(|v| redis::from_redis_value::<Vec<u8>>(v.clone()).ok())
        };
        let event_type = field("type").map(|t| String::from_utf8_lossy(&t).into_owned());
        if let Some(t) = &event_type
            && !types.contains(t.as_str())
        {
            skip.push(item.id);
            continue;
        }
        // Missing fields still travel: the consumer parks what it cannot read.
        let raw = field("env").unwrap_or_default();
        let key = field("key")
            .map(|k| String::from_utf8_lossy(&k).into_owned())
            .unwrap_or_default();
        keep.push(Entry {
            stream: stream.clone(),
            partition,
            id: Arc::from(item.id.as_str()),
            key: format!("{stream}/{key}"),
            raw: Arc::from(raw),
            attempt: item.delivered_count.map_or(1, |c| c.max(1) as u32),
        });
    }
    (keep, skip)
}
