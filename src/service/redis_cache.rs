//! The Redis connection the service's shared caches use (the CMAB prediction cache and the ODP
//! segment cache): one multiplexed connection opened on first use, commands whose errors are
//! logged and answered as `None` (a cache miss or a lost save, never a failed request), and the
//! SCAN + DEL walk that empties a key prefix.

/// A lazily connected Redis for a cache named `what` in logs.
pub struct CacheRedis {
    client: redis::Client,
    conn: tokio::sync::OnceCell<redis::aio::MultiplexedConnection>,
    what: &'static str,
}

impl CacheRedis {
    /// A client for `url` (nothing is connected yet).
    pub fn open(url: &str, what: &'static str) -> Result<Self, redis::RedisError> {
        Ok(Self {
            client: redis::Client::open(url)?,
            conn: tokio::sync::OnceCell::new(),
            what,
        })
    }

    /// Runs `cmd`; a connection or command error is logged and answered as `None`.
    pub async fn run<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Option<T> {
        let conn = self
            .conn
            .get_or_try_init(|| self.client.get_multiplexed_async_connection())
            .await;
        let mut conn = match conn {
            Ok(c) => c.clone(),
            Err(e) => {
                tracing::warn!(error = %e, cache = self.what, "cache: Redis unreachable");
                return None;
            }
        };
        match cmd.query_async(&mut conn).await {
            Ok(v) => Some(v),
            Err(e) => {
                tracing::warn!(error = %e, cache = self.what, "cache: Redis command failed");
                None
            }
        }
    }

    /// Deletes every key matching the glob `pattern` (SCAN in pages, so Redis is never blocked).
    pub async fn delete_matching(&self, pattern: &str) {
        let mut cursor: u64 = 0;
        loop {
            let cmd = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(500)
                .to_owned();
            let Some((next, keys)): Option<(u64, Vec<String>)> = self.run(&cmd).await else {
                return;
            };
            if !keys.is_empty() {
                let _: Option<i64> = self.run(redis::cmd("DEL").arg(keys)).await;
            }
            if next == 0 {
                return;
            }
            cursor = next;
        }
    }
}
