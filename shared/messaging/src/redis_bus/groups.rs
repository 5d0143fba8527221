//! The consumer groups and the trimming of streams: every subscriber's group exists on
//! a producer's streams before anything is published, and a stream is trimmed only below
//! the oldest entry some group still needs.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::Value as RedisValue;
use redis::aio::ConnectionManager;

use super::connection::{Inner, count_error};

const TRIM_EVERY: Duration = Duration::from_secs(10);

impl Inner {
    /// Creates the group of every subscriber that reads `producer` over Redis on every
    /// stream of `producer`: the publisher does it before its first publish.
    pub(super) async fn ensure_groups(&self, producer: &str) -> Result<(), redis::RedisError> {
        if self
            .grouped
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(producer)
        {
            return Ok(());
        }
        let mut conn = self.conn.clone();
        for partition in 0..self.config.partitions {
            let stream = self.stream(producer, partition);
            for group in self.groups_of(producer) {
                create_group(&mut conn, &stream, group).await?;
            }
        }
        self.grouped
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(producer.to_owned());
        Ok(())
    }

    /// Trims `producer`'s streams below the oldest entry some group still needs. A stream
    /// missing one of its groups is left alone; the group of a route that travels
    /// in-process now (a version that still read it over Redis made it) is not waited for.
    pub(super) async fn trim(&self, producer: &str) -> Result<(), redis::RedisError> {
        let expected = self.groups_of(producer);
        let mut conn = self.conn.clone();
        for partition in 0..self.config.partitions {
            let stream = self.stream(producer, partition);
            // Trimming is best effort: it comes again within seconds.
            let Ok(Some(groups)) = groups_on(&mut conn, &stream).await else {
                continue;
            };
            let names: BTreeSet<String> = groups.iter().filter_map(|g| field(g, "name")).collect();
            if !expected.iter().all(|e| names.contains(*e)) {
                // A group is missing (Redis lost it?): create it and trim nothing now.
                self.grouped
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(producer);
                continue;
            }
            let mut floor: Option<(u64, u64)> = None;
            for group in &groups {
                let name: String = field(group, "name").unwrap_or_default();
                if !self.over_redis(producer, &name) {
                    // A route that travels in-process now: nobody reads this group (one
                    // that still held events kept the hybrid bus from starting), so it
                    // holds nothing back. A group this process does not know of does.
                    continue;
                }
                let pending: u64 = field(group, "pending").unwrap_or(0);
                let needed = if pending > 0 {
                    let summary: Vec<RedisValue> = redis::cmd("XPENDING")
                        .arg(&stream)
                        .arg(&name)
                        .query_async(&mut conn)
                        .await?;
                    summary
                        .get(1)
                        .and_then(|v| redis::from_redis_value::<String>(v.clone()).ok())
                        .and_then(|id| parse_id(&id))
                } else {
                    field::<String>(group, "last-delivered-id")
                        .and_then(|id| parse_id(&id))
                        .map(|(ms, seq)| (ms, seq.saturating_add(1)))
                };
                let needed = needed.unwrap_or((0, 0));
                floor = Some(floor.map_or(needed, |f| f.min(needed)));
            }
            if let Some((ms, seq)) = floor
                && (ms, seq) > (0, 0)
            {
                let _: i64 = redis::cmd("XTRIM")
                    .arg(&stream)
                    .arg("MINID")
                    .arg(format!("{ms}-{seq}"))
                    .query_async(&mut conn)
                    .await?;
            }
        }
        Ok(())
    }

    /// Creates `group` on every stream of `producer`: a subscriber does it for its own
    /// group only, since where the producer's other consumers run is the publisher's to
    /// know (a group nobody reads would hold trimming back for ever).
    pub(super) async fn ensure_group(
        &self,
        producer: &str,
        group: &str,
    ) -> Result<(), redis::RedisError> {
        let mut conn = self.conn.clone();
        for partition in 0..self.config.partitions {
            create_group(&mut conn, &self.stream(producer, partition), group).await?;
        }
        Ok(())
    }

    /// Makes `group` on the streams of `producers` again: Redis lost it (a restart without
    /// persistence). Each publisher makes the groups it needs again when it publishes next
    /// (its trim notices a missing one).
    pub(super) async fn recreate_group(&self, producers: &[String], group: &str) {
        self.grouped
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        for producer in producers {
            let _ = self.ensure_group(producer, group).await;
        }
    }

    /// Trims `producer`'s streams in the background, at most every [`TRIM_EVERY`].
    pub(super) fn trim_if_due(self: &Arc<Self>, producer: &str) {
        let due = {
            let mut last = self.last_trim.lock().unwrap_or_else(|e| e.into_inner());
            let due = last.get(producer).is_none_or(|t| t.elapsed() >= TRIM_EVERY);
            if due {
                last.insert(producer.to_owned(), Instant::now());
            }
            due
        };
        if due {
            // Off the relay's path: trimming costs a few round trips per stream.
            let inner = self.clone();
            let producer = producer.to_owned();
            tokio::spawn(async move {
                if let Err(e) = inner.trim(&producer).await {
                    count_error("trim");
                    tracing::warn!(producer, error = %e, "trimming streams failed");
                }
            });
        }
    }

    /// Removes the groups of routes that now travel in-process (a consumer whose producer
    /// runs in this process under the hybrid bus), left by a time when they travelled over
    /// Redis, once nothing waits in them: a group nobody reads would hold trimming back for
    /// ever. Returns the groups still holding events their consumer takes; those are left
    /// as they are.
    pub(super) async fn retire_in_process_groups(&self) -> Result<Vec<Waiting>, redis::RedisError> {
        let mut conn = self.conn.clone();
        let mut waiting = Vec::new();
        for producer in &self.in_process {
            for consumer in contracts::subscribers_of(producer) {
                if self.over_redis(producer, consumer) {
                    continue;
                }
                for group in self.groups_between(producer, consumer).await? {
                    if group.holds_events() {
                        waiting.push(group);
                        continue;
                    }
                    let _: i64 = redis::cmd("XGROUP")
                        .arg("DESTROY")
                        .arg(&group.stream)
                        .arg(consumer)
                        .query_async(&mut conn)
                        .await?;
                    tracing::info!(
                        module = consumer,
                        stream = group.stream,
                        "removed a drained consumer group: these events travel in-process now"
                    );
                }
            }
        }
        Ok(waiting)
    }

    /// `consumer`'s group on each stream of `producer` that has one, with how many events
    /// of the types `consumer` takes from `producer` it holds.
    pub(super) async fn groups_between(
        &self,
        producer: &str,
        consumer: &str,
    ) -> Result<Vec<Waiting>, redis::RedisError> {
        let mut conn = self.conn.clone();
        let types: BTreeSet<&str> = contracts::subscriptions_of(consumer)
            .into_iter()
            .filter(|t| contracts::source_of(t) == producer)
            .collect();
        let mut found = Vec::new();
        for partition in 0..self.config.partitions {
            let stream = self.stream(producer, partition);
            let Some(groups) = groups_on(&mut conn, &stream).await? else {
                continue;
            };
            let Some(group) = groups
                .iter()
                .find(|g| field::<String>(g, "name").as_deref() == Some(consumer))
            else {
                continue;
            };
            let last: String =
                field(group, "last-delivered-id").unwrap_or_else(|| "0-0".to_owned());
            let pending = pending_of(&mut conn, &stream, consumer, &types).await?;
            let unread = unread_of(&mut conn, &stream, &last, &types).await?;
            found.push(Waiting {
                consumer: consumer.to_owned(),
                stream,
                pending,
                unread,
            });
        }
        Ok(found)
    }
}

/// A consumer group and the events of its consumer's types it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    /// The group: the consuming module.
    pub consumer: String,
    pub stream: String,
    /// Delivered to the group and not acknowledged.
    pub pending: u64,
    /// Not yet read by the group.
    pub unread: u64,
}

impl Waiting {
    pub fn holds_events(&self) -> bool {
        self.pending + self.unread > 0
    }
}

impl std::fmt::Display for Waiting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} on {}: {} delivered and not acknowledged, {} not read",
            self.consumer, self.stream, self.pending, self.unread
        )
    }
}

/// The consumer groups of `stream` (`XINFO GROUPS`); `None` when there is no such stream
/// (nothing was ever published on it).
async fn groups_on(
    conn: &mut ConnectionManager,
    stream: &str,
) -> Result<Option<Vec<HashMap<String, RedisValue>>>, redis::RedisError> {
    match redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(stream)
        .query_async(conn)
        .await
    {
        Ok(groups) => Ok(Some(groups)),
        Err(e) if e.to_string().contains("no such key") => Ok(None),
        Err(e) => Err(e),
    }
}

/// How many entries of `stream` delivered to `group` and not acknowledged have one of
/// `types` (a reader stopped before it acknowledged one it skips leaves it pending too).
async fn pending_of(
    conn: &mut ConnectionManager,
    stream: &str,
    group: &str,
    types: &BTreeSet<&str>,
) -> Result<u64, redis::RedisError> {
    const MOST: usize = 1000;
    let pending: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
        .arg(stream)
        .arg(group)
        .arg("-")
        .arg("+")
        .arg(MOST)
        .query_async(conn)
        .await?;
    if pending.len() == MOST {
        // Too many to look at one by one: they all count.
        return Ok(MOST as u64);
    }
    let mut taken = 0;
    for (id, ..) in pending {
        let entries: Vec<(String, HashMap<String, RedisValue>)> = redis::cmd("XRANGE")
            .arg(stream)
            .arg(&id)
            .arg(&id)
            .query_async(conn)
            .await?;
        // An entry trimmed away is nothing to deliver any more.
        taken += of_types(&entries, types);
    }
    Ok(taken)
}

/// How many entries of `stream` after `last` have one of `types`.
async fn unread_of(
    conn: &mut ConnectionManager,
    stream: &str,
    last: &str,
    types: &BTreeSet<&str>,
) -> Result<u64, redis::RedisError> {
    const PAGE: usize = 1000;
    let mut after = last.to_owned();
    let mut unread = 0;
    loop {
        let entries: Vec<(String, HashMap<String, RedisValue>)> = redis::cmd("XRANGE")
            .arg(stream)
            .arg(format!("({after}"))
            .arg("+")
            .arg("COUNT")
            .arg(PAGE)
            .query_async(conn)
            .await?;
        unread += of_types(&entries, types);
        match entries.last() {
            Some((id, _)) if entries.len() == PAGE => after.clone_from(id),
            _ => return Ok(unread),
        }
    }
}

/// How many of `entries` (an XRANGE reply) have one of `types`.
fn of_types(entries: &[(String, HashMap<String, RedisValue>)], types: &BTreeSet<&str>) -> u64 {
    entries
        .iter()
        .filter(|(_, fields)| {
            field::<String>(fields, "type").is_some_and(|t| types.contains(t.as_str()))
        })
        .count() as u64
}

async fn create_group(
    conn: &mut ConnectionManager,
    stream: &str,
    group: &str,
) -> Result<(), redis::RedisError> {
    let created: Result<(), redis::RedisError> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg(group)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(conn)
        .await;
    match created {
        Err(e) if !is_busy_group(&e) => Err(e),
        _ => Ok(()),
    }
}

/// One field of an XINFO reply.
fn field<T: redis::FromRedisValue>(reply: &HashMap<String, RedisValue>, name: &str) -> Option<T> {
    reply
        .get(name)
        .and_then(|v| redis::from_redis_value(v.clone()).ok())
}

fn parse_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

fn is_busy_group(e: &redis::RedisError) -> bool {
    e.code() == Some("BUSYGROUP")
}

pub(super) fn is_no_group(e: &redis::RedisError) -> bool {
    e.code() == Some("NOGROUP")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ids_parse() {
        assert_eq!(parse_id("1700000000000-3"), Some((1_700_000_000_000, 3)));
        assert_eq!(parse_id("nope"), None);
    }
}
