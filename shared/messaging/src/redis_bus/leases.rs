//! The instance name, membership and partition leases of a subscription: the name one
//! process holds per instance and module, the members alive, the fair share each takes,
//! and each partition's lease, taken (TAKE), renewed (RENEW), confirmed by this process's
//! clock, and released or handed back.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;

use super::acker::resend_unacked;
use super::connection::partition_of;
use super::subscription::SubState;

/// A partition this instance holds the lease of.
pub(super) struct Owned {
    /// Until when the lease is known to hold, by this process's clock: counted from the
    /// moment the renewal was sent, less a margin, so this instance stops using the
    /// partition before Redis can give it to another one.
    pub(super) confirmed_until: Instant,
    /// The partition's streams (one per producer).
    pub(super) streams: Vec<Arc<str>>,
    /// Streams whose pending entries are still being claimed, with the last id looked at
    /// (`None`: from the start). Such a stream is not read for new entries: they would
    /// overtake the pending ones of their key.
    pub(super) recovering: BTreeMap<Arc<str>, Option<String>>,
    /// Above this instance's share: nothing new is read from it, and its lease is handed
    /// back once nothing of it is in flight.
    pub(super) draining: bool,
    /// The lease ran out by this process's clock and no renewal has answered since.
    pub(super) paused: bool,
}

/// What a lease is counted on for after its renewal was sent.
fn confirmed_for(lease: Duration) -> Duration {
    lease - lease / 10
}

/// Takes a key for ARGV[1] if it is free or already ARGV[1]'s; otherwise answers how long
/// the other holder still has.
const TAKE: &str = "local v = redis.call('GET', KEYS[1]) \
    if v == false or v == ARGV[1] then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return {1, 0} end \
    return {0, redis.call('PTTL', KEYS[1])}";
const RENEW: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end";
const RELEASE: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end";

async fn release(
    conn: &mut ConnectionManager,
    state: &SubState,
    name: &str,
) -> Result<i64, redis::RedisError> {
    redis::Script::new(RELEASE)
        .key(state.inner.key(name))
        .arg(&state.token)
        .invoke_async(conn)
        .await
}

/// What the reader saw of another process holding this instance's name.
#[derive(Default)]
pub(super) struct Watch {
    /// Time left on the other holder's key when last looked at.
    left_ms: Option<i64>,
    reported: Option<Instant>,
}

/// Holds the instance name, heartbeat, renews owned leases, takes free partitions up to a
/// fair share, and hands back partitions above it once nothing of them is in flight.
pub(super) async fn maintain(
    state: &Arc<SubState>,
    producers: &[String],
    watch: &mut Watch,
) -> anyhow::Result<()> {
    let inner = &state.inner;
    let group = state.group;
    let me = &inner.config.instance;
    let lease_ms = inner.settings.lease_ms;
    let lease = Duration::from_millis(lease_ms);
    let mut conn = inner.conn.clone();

    // One process per instance name and module: two under one consumer name would read
    // each other's pending entries. A name whose holder crashed frees up within a lease;
    // one whose holder keeps renewing it belongs to a live duplicate.
    let (held, left_ms): (i64, i64) = redis::Script::new(TAKE)
        .key(inner.key(&format!("instance:{group}:{me}")))
        .arg(&state.token)
        .arg(lease_ms)
        .invoke_async(&mut conn)
        .await?;
    if held == 0 {
        let was_active = {
            let mut flow = state.flow();
            let was_active = flow.active;
            flow.active = false;
            let owned: Vec<u32> = flow.owned.keys().copied().collect();
            for partition in owned {
                flow.lose(partition);
            }
            was_active
        };
        let renewed = watch.left_ms.is_some_and(|before| left_ms > before);
        watch.left_ms = Some(left_ms);
        metrics::gauge!("bus_partitions_held", "module" => group).set(0.0);
        if renewed {
            metrics::gauge!("bus_duplicate_instance", "module" => group).set(1.0);
        }
        if (was_active || renewed)
            && watch
                .reported
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(60))
        {
            tracing::error!(
                module = group,
                instance = %me,
                "another live process consumes this module under the same bus.instance; this one takes no work while it lives (give every process its own bus.instance)"
            );
            watch.reported = Some(Instant::now());
        }
        return Ok(());
    }
    *watch = Watch::default();
    state.flow().active = true;
    metrics::gauge!("bus_duplicate_instance", "module" => group).set(0.0);

    let members = inner.key(&format!("members:{group}"));
    let now_ms = store::now_ms();
    let _: i64 = redis::cmd("ZADD")
        .arg(&members)
        .arg(now_ms + lease_ms as i64)
        .arg(me)
        .query_async(&mut conn)
        .await?;
    let _: i64 = redis::cmd("ZREMRANGEBYSCORE")
        .arg(&members)
        .arg("-inf")
        .arg(now_ms)
        .query_async(&mut conn)
        .await?;
    let live: u32 = redis::cmd("ZCOUNT")
        .arg(&members)
        .arg(now_ms)
        .arg("+inf")
        .query_async(&mut conn)
        .await?;
    let partitions = inner.config.partitions;
    let share = partitions.div_ceil(live.max(1)) as usize;

    // Acknowledgements that failed earlier; what fails again is kept for the next pass,
    // and does not hold up the renewals below.
    resend_unacked(state, &mut conn).await;

    // Renew what we hold; stop using what we lost.
    let owned: Vec<u32> = state.flow().owned.keys().copied().collect();
    for partition in owned {
        let sent = Instant::now();
        let renewed: i64 = redis::Script::new(RENEW)
            .key(inner.key(&format!("lease:{group}:{partition}")))
            .arg(&state.token)
            .arg(lease_ms)
            .invoke_async(&mut conn)
            .await?;
        let mut flow = state.flow();
        if renewed == 1 {
            if let Some(owned) = flow.owned.get_mut(&partition) {
                owned.confirmed_until = sent + confirmed_for(lease);
                owned.paused = false;
            }
        } else {
            tracing::warn!(
                module = group,
                partition,
                "lost a partition lease; another instance owns it now"
            );
            flow.lose(partition);
        }
    }

    // Entries that waited while a lease was unconfirmed may go now.
    state.ready.notify_one();

    // Take free partitions, starting at a place of our own so instances spread out.
    let start = partition_of(me, partitions);
    for offset in 0..partitions {
        if state.flow().owned.len() >= share {
            break;
        }
        let partition = (start + offset) % partitions;
        if state.flow().owned.contains_key(&partition) {
            continue;
        }
        let sent = Instant::now();
        let (taken, _): (i64, i64) = redis::Script::new(TAKE)
            .key(inner.key(&format!("lease:{group}:{partition}")))
            .arg(&state.token)
            .arg(lease_ms)
            .invoke_async(&mut conn)
            .await?;
        if taken == 0 {
            continue;
        }
        let streams: Vec<Arc<str>> = producers
            .iter()
            .map(|p| Arc::from(inner.stream(p, partition)))
            .collect();
        // Its pending entries (a dead owner's, or ours from before a restart) are claimed
        // before anything new is read from it.
        let recovering = streams.iter().map(|s| (s.clone(), None)).collect();
        state.flow().owned.insert(
            partition,
            Owned {
                confirmed_until: sent + confirmed_for(lease),
                streams,
                recovering,
                draining: false,
                paused: false,
            },
        );
        tracing::info!(module = group, partition, "partition taken");
    }

    // Above our share (another instance joined): stop reading the least busy surplus
    // partitions, and hand each back once nothing of it is in flight, so its next owner
    // starts after everything handed out here. Under load this still happens: in-flight
    // entries settle, and nothing new is read meanwhile.
    let idle: Vec<u32> = {
        let mut flow = state.flow();
        let surplus = flow.owned.len().saturating_sub(share);
        let mut by_load: Vec<(bool, usize, u32)> = flow
            .owned
            .iter()
            .map(|(p, o)| (!o.draining, flow.gate.load(*p), *p))
            .collect();
        by_load.sort_unstable();
        for (rank, (_, _, partition)) in by_load.into_iter().enumerate() {
            let drain = rank < surplus;
            if let Some(owned) = flow.owned.get_mut(&partition) {
                if owned.draining && !drain {
                    // Our share grew back: read it again, from its pending entries.
                    owned.recovering = owned.streams.iter().map(|s| (s.clone(), None)).collect();
                }
                owned.draining = drain;
            }
        }
        flow.owned
            .iter()
            .filter(|(p, o)| o.draining && flow.gate.load(**p) == 0)
            .map(|(p, _)| *p)
            .collect()
    };
    for partition in idle {
        state.flow().lose(partition);
        release(&mut conn, state, &format!("lease:{group}:{partition}")).await?;
        tracing::info!(module = group, partition, "partition handed back");
    }
    let held = state.flow().owned.len();
    metrics::gauge!("bus_partitions_held", "module" => group).set(held as f64);
    Ok(())
}

impl SubState {
    /// Notes partitions whose lease was not confirmed in time by this process's clock
    /// (renewals failing or late): another instance may hold them by now, so nothing of
    /// them is read or handed out until a renewal answers. If it finds the lease still
    /// this process's, Redis never let it go and the partition resumes as it was;
    /// otherwise it is lost.
    pub(super) fn expire(&self, now: Instant) {
        let mut flow = self.flow();
        for (partition, owned) in flow.owned.iter_mut() {
            if owned.confirmed_until <= now && !owned.paused {
                owned.paused = true;
                metrics::counter!("bus_leases_unconfirmed_total", "module" => self.group)
                    .increment(1);
                tracing::warn!(
                    module = self.group,
                    partition,
                    "a partition lease was not renewed in time; this instance stops using it until a renewal answers"
                );
            }
        }
    }
}

/// Leaves: hands the partitions back so another instance takes them at once, then the
/// instance name and the membership.
pub(super) async fn leave(state: &SubState) {
    let inner = &state.inner;
    let group = state.group;
    let (owned, active): (Vec<u32>, bool) = {
        let flow = state.flow();
        (flow.owned.keys().copied().collect(), flow.active)
    };
    let mut conn = inner.conn.clone();
    for partition in owned {
        let _ = release(&mut conn, state, &format!("lease:{group}:{partition}")).await;
    }
    if active {
        let name = format!("instance:{group}:{}", inner.config.instance);
        let _ = release(&mut conn, state, &name).await;
        let _: Result<i64, _> = redis::cmd("ZREM")
            .arg(inner.key(&format!("members:{group}")))
            .arg(&inner.config.instance)
            .query_async(&mut conn)
            .await;
    }
}
