//! How the Redis bus reaches Redis and names what it keeps there: the configuration, the
//! connection every part shares and the one a subscription's blocking reads use, the
//! names of keys and streams, the partition of an ordering key, and the count of failed
//! round trips.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context;
use redis::AsyncConnectionConfig;
use redis::aio::{ConnectionManager, MultiplexedConnection};

use crate::bus::BusError;
use crate::settings::MessagingSettings;

/// How to reach Redis and lay out keys.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    pub url: String,
    /// A Redis ACL user; `None`: the default user.
    pub username: Option<String>,
    pub password: Option<String>,
    pub namespace: String,
    /// Partitions per producer stream; every process must use the same number.
    pub partitions: u32,
    /// This process's stable consumer name.
    pub instance: String,
}

/// What every part of the bus shares: the settings, the connections, what it knows of
/// the groups and of the last trims.
pub(super) struct Inner {
    pub(super) config: RedisConfig,
    client: redis::Client,
    pub(super) conn: ConnectionManager,
    pub(super) settings: MessagingSettings,
    /// Producers whose streams have every subscriber's group.
    pub(super) grouped: Mutex<HashSet<String>>,
    pub(super) last_trim: Mutex<HashMap<String, Instant>>,
    /// The modules of this process whose events to one another travel in-process (the
    /// hybrid bus); empty when every event travels over Redis.
    pub(super) in_process: Vec<&'static str>,
}

impl Inner {
    /// Connects, and refuses a partition count other than the one the namespace uses.
    pub(super) async fn connect(
        config: RedisConfig,
        settings: MessagingSettings,
        in_process: Vec<&'static str>,
    ) -> anyhow::Result<Self> {
        // Present at zero from the start, so an increase over it reads 0 rather than
        // nothing, and the first failure shows as one.
        for op in ERROR_OPS {
            metrics::counter!("redis_errors_total", "op" => *op).increment(0);
        }
        let client = client(&config)?;
        let conn = tokio::time::timeout(Duration::from_secs(10), client.get_connection_manager())
            .await
            .context("Redis did not answer within 10 s")?
            .with_context(|| format!("failed to connect to Redis at {}", config.url))?;
        let inner = Self {
            config,
            client,
            conn,
            settings,
            grouped: Mutex::new(HashSet::new()),
            last_trim: Mutex::new(HashMap::new()),
            in_process,
        };
        inner.check_partitions().await?;
        Ok(inner)
    }

    /// Whether events of `producer` reach `consumer` over Redis: not when both run in this
    /// process under the hybrid bus.
    pub(super) fn over_redis(&self, producer: &str, consumer: &str) -> bool {
        !(self.in_process.contains(&producer) && self.in_process.contains(&consumer))
    }

    /// The consumer groups `producer`'s streams need: every subscriber that reads them over
    /// Redis.
    pub(super) fn groups_of(&self, producer: &str) -> Vec<&'static str> {
        contracts::subscribers_of(producer)
            .into_iter()
            .filter(|consumer| self.over_redis(producer, consumer))
            .collect()
    }

    pub(super) fn key(&self, rest: &str) -> String {
        format!("{}:{rest}", self.config.namespace)
    }

    pub(super) fn stream(&self, producer: &str, partition: u32) -> String {
        self.key(&format!("stream:{producer}:{partition}"))
    }

    /// Refuses to run with a partition count other than the one already in use: keys
    /// would land in other streams and lose their order.
    async fn check_partitions(&self) -> anyhow::Result<()> {
        let mut conn = self.conn.clone();
        let key = self.key("meta:partitions");
        let _: () = redis::cmd("SET")
            .arg(&key)
            .arg(self.config.partitions)
            .arg("NX")
            .query_async(&mut conn)
            .await?;
        let stored: u32 = redis::cmd("GET").arg(&key).query_async(&mut conn).await?;
        anyhow::ensure!(
            stored == self.config.partitions,
            "Redis namespace {} uses {stored} partitions, this process {}: set bus.redis.partitions = {stored}",
            self.config.namespace,
            self.config.partitions
        );
        Ok(())
    }
}

fn client(config: &RedisConfig) -> anyhow::Result<redis::Client> {
    use redis::IntoConnectionInfo;
    let mut info = config
        .url
        .as_str()
        .into_connection_info()
        .with_context(|| format!("{} is not a Redis URL", config.url))?;
    let mut settings = info.redis_settings().clone();
    if let Some(username) = &config.username {
        settings = settings.set_username(username.clone());
    }
    if let Some(password) = &config.password {
        settings = settings.set_password(password.clone());
    }
    info = info.set_redis_settings(settings);
    redis::Client::open(info).context("invalid Redis settings")
}

/// A connection for blocking reads only: no response timeout of its own (the reader puts
/// one above BLOCK around each read), and nothing else waits behind it.
pub(super) async fn reader_connection(
    inner: &Inner,
) -> Result<MultiplexedConnection, redis::RedisError> {
    inner
        .client
        .get_multiplexed_async_connection_with_config(
            &AsyncConnectionConfig::new().set_response_timeout(None),
        )
        .await
}

/// FNV-1a: stable across releases and platforms, so a key always maps to one partition.
pub fn partition_of(key: &str, partitions: u32) -> u32 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (hash % u64::from(partitions.max(1))) as u32
}

/// The partition a stream name (`<ns>:stream:<producer>:<p>`) ends with.
pub(super) fn partition_of_stream(stream: &str) -> Option<u32> {
    stream.rsplit(':').next()?.parse().ok()
}

/// Counts a failed Redis round trip, then says the bus is away.
pub(super) fn unavailable(op: &'static str) -> impl Fn(redis::RedisError) -> BusError {
    move |e| {
        count_error(op);
        BusError::Unavailable(format!("Redis: {e}"))
    }
}

/// Every `op` of `redis_errors_total`: what a failed round trip was for.
const ERROR_OPS: &[&str] = &[
    "publish", "ack", "read", "claim", "retry", "leases", "groups", "trim", "check", "backlog",
    "connect",
];

/// `redis_errors_total{op}`: failed round trips to Redis, by what they were for.
pub(super) fn count_error(op: &'static str) {
    debug_assert!(ERROR_OPS.contains(&op), "{op} is missing from ERROR_OPS");
    metrics::counter!("redis_errors_total", "op" => op).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Redis ACL user (made here on the local Redis with `ACL SETUSER`, deleted after)
    /// logs in with its name and password; a wrong password is refused, and the error
    /// shows neither password.
    #[tokio::test]
    async fn an_acl_user_logs_in_with_its_name_and_password() {
        let url = "redis://127.0.0.1:6379/0";
        let user = format!("shop_acl_{}", uuid::Uuid::new_v4().simple());
        let password = format!("pw-{}", uuid::Uuid::new_v4().simple());
        let admin = redis::Client::open(url).expect("client");
        let mut admin = admin
            .get_multiplexed_async_connection()
            .await
            .expect("the local Redis answers");
        let _: () = redis::cmd("ACL")
            .arg("SETUSER")
            .arg(&user)
            .arg("on")
            .arg(format!(">{password}"))
            .arg("~*")
            .arg("+@all")
            .query_async(&mut admin)
            .await
            .expect("ACL SETUSER");
        let config = |password: &str| RedisConfig {
            url: url.into(),
            username: Some(user.clone()),
            password: Some(password.to_owned()),
            namespace: "acl-test".into(),
            partitions: 1,
            instance: "acl-test".into(),
        };
        let whoami = async |config: RedisConfig| -> anyhow::Result<String> {
            let mut conn = client(&config)?.get_multiplexed_async_connection().await?;
            Ok(redis::cmd("ACL")
                .arg("WHOAMI")
                .query_async(&mut conn)
                .await?)
        };
        let right = whoami(config(&password)).await;
        let wrong = whoami(config("not-the-password")).await;
        let _: () = redis::cmd("ACL")
            .arg("DELUSER")
            .arg(&user)
            .query_async(&mut admin)
            .await
            .expect("ACL DELUSER");
        assert_eq!(right.expect("the ACL user logs in"), user);
        let wrong = format!("{:#}", wrong.expect_err("a wrong password is refused"));
        assert!(
            !wrong.contains("not-the-password") && !wrong.contains(&password),
            "{wrong}"
        );
    }

    #[test]
    fn partitions_are_stable_and_spread() {
        assert_eq!(partition_of("order-1", 8), partition_of("order-1", 8));
        let used: HashSet<u32> = (0..200)
            .map(|i| partition_of(&format!("k{i}"), 8))
            .collect();
        assert_eq!(used.len(), 8);
        // Known values: changing the hash would move keys between streams.
        assert_eq!(partition_of("", 8), (0xcbf2_9ce4_8422_2325_u64 % 8) as u32);
        assert_eq!(partition_of("a", 1), 0);
    }
}
