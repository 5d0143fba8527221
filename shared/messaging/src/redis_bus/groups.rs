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
    /// Creates the group of every subscriber on every stream of `producer`.
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
            for group in contracts::subscribers_of(producer) {
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
    /// missing one of its groups is left alone.
    pub(super) async fn trim(&self, producer: &str) -> Result<(), redis::RedisError> {
        let expected = contracts::subscribers_of(producer);
        let mut conn = self.conn.clone();
        for partition in 0..self.config.partitions {
            let stream = self.stream(producer, partition);
            let groups: Vec<HashMap<String, RedisValue>> = match redis::cmd("XINFO")
                .arg("GROUPS")
                .arg(&stream)
                .query_async(&mut conn)
                .await
            {
                Ok(g) => g,
                Err(_) => continue,
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

    /// Makes the groups of `producers` again: Redis lost them (a restart without
    /// persistence).
    pub(super) async fn recreate_groups(&self, producers: &[String]) {
        self.grouped
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        for producer in producers {
            let _ = self.ensure_groups(producer).await;
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
