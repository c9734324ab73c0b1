//! The Redis backend: a pool of multiplexed connections (see [`pool`]), the Lua script
//! registry (see [`scripts`]), and the call helpers every domain's Redis store uses.
//!
//! # One round trip per call
//! A call checks a connection out without I/O, sends one script invocation or one pipeline,
//! and gives the connection back at once; many calls share each socket.
//!
//! # Failures
//! Every call is bounded by `redis.command_timeout` and fails with [`StoreError`]; idempotent
//! calls may be retried once after a dropped connection ([`RedisBackend::invoke_idempotent`]),
//! never after a timeout (that would double the wait).

pub mod pool;
pub mod reply;
pub mod scripts;

/// A script's source: `src/store/redis/lua/clock.lua` (the store's clock, `store_now()`, and
/// `int()`) followed by the given files, named from the crate root.
macro_rules! lua {
    ($($file:literal),+ $(,)?) => {
        concat!(
            include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/src/store/redis/lua/clock.lua")),
            $(include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/", $file))),+
        )
    };
}
pub(crate) use lua;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use deadpool::managed;
use redis::{
    AsyncConnectionConfig, ErrorKind, IntoConnectionInfo, Pipeline, RedisError, ScriptInvocation,
    ServerErrorKind, Value, aio::MultiplexedConnection,
};

use self::{
    pool::{Manager, Pool},
    scripts::{LuaScript, Scripts},
};
use super::{StoreError, keys::Keys};
use crate::config::{RedisConfig, redact_url};

/// The Redis backend. Cheap to clone.
#[derive(Clone)]
pub struct RedisBackend {
    pool: Pool,
    keys: Keys,
    scripts: Arc<Scripts>,
    generation: Arc<AtomicU64>,
    command_timeout: Duration,
    /// The URL with its password hidden, for log lines.
    display_url: Arc<str>,
}

impl RedisBackend {
    /// Builds the backend. Connects lazily: an unreachable Redis does not stop start-up, it makes
    /// calls fail with UNAVAILABLE and the health task report NOT_SERVING until it answers.
    pub fn new(config: &RedisConfig) -> Result<Self, StoreError> {
        // rediss:// needs a process-wide rustls crypto provider; installing twice is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let url = config
            .url
            .as_deref()
            .ok_or_else(|| StoreError::Protocol("redis.url is not set".into()))?;
        let mut info = url
            .into_connection_info()
            .map_err(|e| StoreError::Protocol(format!("redis.url: {e}")))?;
        // Nagle's algorithm against Redis's delayed ACKs adds ~40 ms to pipelined replies.
        info = info.set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
        if let Some(password) = &config.password {
            let settings = info.redis_settings().clone().set_password(password);
            info = info.set_redis_settings(settings);
        }
        let connection_config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(config.connect_timeout))
            .set_response_timeout(Some(config.command_timeout));
        let inner = deadpool_redis::Manager::new_with_config(info, connection_config)
            .map_err(|e| StoreError::Protocol(format!("redis.url: {e}")))?;
        let generation = Arc::new(AtomicU64::new(0));
        let scripts = Arc::new(Scripts::default());
        let manager = Manager {
            inner,
            generation: generation.clone(),
            scripts: scripts.clone(),
        };
        let pool = Pool::builder(manager)
            .max_size(config.pool_size)
            .runtime(deadpool::Runtime::Tokio1)
            .wait_timeout(Some(config.command_timeout))
            .create_timeout(Some(config.connect_timeout))
            .recycle_timeout(Some(config.command_timeout))
            .build()
            .map_err(|e| StoreError::Protocol(format!("redis pool: {e}")))?;
        Ok(Self {
            pool,
            keys: Keys::new(&config.key_prefix),
            scripts,
            generation,
            command_timeout: config.command_timeout,
            display_url: redact_url(url).into(),
        })
    }

    /// The key scheme.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Registers a Lua script under `name` (see [`Scripts::register`]).
    pub fn register(
        &self,
        name: &'static str,
        source: &'static str,
    ) -> Result<LuaScript, StoreError> {
        self.scripts.register(name, source)
    }

    /// Every registered script as (name, SHA1), sorted by name.
    pub fn scripts(&self) -> Vec<(&'static str, String)> {
        self.scripts.list()
    }

    /// The Redis URL with any password replaced by `***`.
    pub fn display_url(&self) -> &str {
        &self.display_url
    }

    /// Pool figures: (connections open, connections idle, callers waiting).
    pub fn pool_status(&self) -> (usize, usize, usize) {
        let s = self.pool.status();
        (s.size, s.available, s.waiting)
    }

    /// Makes every pooled connection be replaced on its next checkout (called by the health task
    /// when Redis fails, so no call reuses a connection to a dead or replaced server).
    pub fn invalidate_connections(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    async fn connection(&self) -> Result<(MultiplexedConnection, Arc<AtomicBool>), StoreError> {
        let pooled = self.pool.get().await.map_err(|e| match e {
            // Failing to open a connection (refused, TLS) makes the store unreachable right now;
            // a wrong password or an ACL that forbids SCRIPT LOAD is a configuration fault
            // (Refused), never transient.
            managed::PoolError::Backend(e) => match classify(&e, self.command_timeout) {
                StoreError::Protocol(reason) => StoreError::Unavailable(reason),
                other => other,
            },
            managed::PoolError::Timeout(_) => StoreError::Timeout(self.command_timeout),
            other => StoreError::Unavailable(other.to_string()),
        })?;
        // Clone the multiplexed handle and let the pool object go back at once.
        Ok((pooled.conn.clone(), pooled.broken.clone()))
    }

    /// Runs `f` on a pooled connection within the command timeout, marking the connection
    /// broken when the error says it cannot be reused. `op` names the operation in the store
    /// metrics.
    pub async fn with_connection<T, F, Fut>(&self, op: &'static str, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let start = std::time::Instant::now();
        // No timer of our own here: the pool's wait/create timeouts bound the checkout and
        // redis-rs's response timeout (`redis.command_timeout`) bounds the round trip, so a
        // second timer per call would only cost time-wheel work on the hot path.
        let result = async {
            let (conn, broken) = self.connection().await?;
            f(conn).await.map_err(|e| {
                if e.is_unrecoverable_error() || e.is_connection_dropped() {
                    broken.store(true, Ordering::Release);
                }
                if server_changed_role(&e) {
                    // The server behind this address is not (or no longer) the writable master:
                    // a failover demoted it, or it is still loading. No connection to it is
                    // reused; new ones go wherever the address (DNS, Service) points now.
                    broken.store(true, Ordering::Release);
                    self.invalidate_connections();
                }
                classify(&e, self.command_timeout)
            })
        }
        .await;
        metrics::histogram!("flowstate_store_duration_seconds", "op" => op)
            .record(start.elapsed().as_secs_f64());
        if let Err(e) = &result {
            metrics::counter!("flowstate_store_errors_total", "op" => op, "kind" => e.kind())
                .increment(1);
        }
        result
    }

    /// Runs one script invocation: one round trip (EVALSHA; EVAL once after a NOSCRIPT).
    pub async fn invoke<T: redis::FromRedisValue>(
        &self,
        op: &'static str,
        call: &ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        self.with_connection(
            op,
            |mut conn| async move { call.invoke_async(&mut conn).await },
        )
        .await
    }

    /// [`invoke`](Self::invoke) for idempotent calls: one retry after a dropped connection.
    pub async fn invoke_idempotent<T: redis::FromRedisValue>(
        &self,
        op: &'static str,
        call: &ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        self.retry_once(op, || self.invoke(op, call)).await
    }

    /// Runs `attempt` and, if the connection dropped or Redis was unreachable, once more after
    /// a short pause. Only for idempotent calls whose answer a repeat cannot falsify; never
    /// after a timeout (that would double the wait).
    pub async fn retry_once<T, Fut>(
        &self,
        op: &'static str,
        attempt: impl Fn() -> Fut,
    ) -> Result<T, StoreError>
    where
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        match attempt().await {
            Err(StoreError::Unavailable(reason)) => {
                tracing::debug!(%reason, op, "retrying an idempotent store call once");
                tokio::time::sleep(Duration::from_millis(20)).await;
                attempt().await
            }
            other => other,
        }
    }

    /// Sends a pipeline in one round trip; reloads the scripts and resends once on NOSCRIPT
    /// (a Redis restarted or flushed under a live connection).
    pub async fn pipeline(
        &self,
        op: &'static str,
        pipe: &Pipeline,
    ) -> Result<Vec<Value>, StoreError> {
        let scripts = self.scripts.clone();
        self.with_connection(op, |mut conn| async move {
            match pipe.query_async::<Vec<Value>>(&mut conn).await {
                Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                    scripts.load_all(&mut conn).await?;
                    pipe.query_async(&mut conn).await
                }
                other => other,
            }
        })
        .await
    }

    /// Checks Redis answers and takes writes (a replica answers PING but refuses writes: not
    /// ready), with a write of flowstate's own health key; on failure, every pooled connection
    /// is replaced.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let key = self.keys.system("health");
        let result = self
            .with_connection("ping", |mut conn| async move {
                redis::cmd("SET")
                    .arg(key)
                    .arg("1")
                    .arg("PX")
                    .arg(60_000)
                    .query_async::<()>(&mut conn)
                    .await
            })
            .await;
        if result.is_err() {
            self.invalidate_connections();
        }
        result
    }
}

/// Whether `e` says the server cannot take writes as a master right now.
fn server_changed_role(e: &RedisError) -> bool {
    matches!(e.code(), Some("READONLY" | "LOADING" | "MASTERDOWN"))
}

/// Sorts a Redis error into the store's failure kinds.
pub fn classify(e: &RedisError, timeout: Duration) -> StoreError {
    if e.is_timeout() {
        return StoreError::Timeout(timeout);
    }
    if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() {
        return StoreError::Unavailable(describe(e));
    }
    if e.kind() == ErrorKind::AuthenticationFailed {
        return StoreError::Refused(describe(e));
    }
    match e.code() {
        // Server states that pass: loading a dataset, a busy script, a failover in progress, a
        // server that cannot take writes right now.
        Some("LOADING" | "BUSY" | "TRYAGAIN" | "MASTERDOWN" | "READONLY" | "CLUSTERDOWN") => {
            StoreError::Unavailable(describe(e))
        }
        Some("OOM") => StoreError::Full("Redis is at maxmemory and refuses writes"),
        // flowstate's credentials or ACL: a fault to fix, not to wait out.
        Some("NOAUTH" | "WRONGPASS" | "NOPERM") => StoreError::Refused(describe(e)),
        _ => StoreError::Protocol(describe(e)),
    }
}

/// What `e` says, in words safe for logs: the server's own error (codes and messages never
/// carry stored data), the OS's for I/O, otherwise only the category. Never `e.to_string()` of
/// a reply that did not convert: redis-rs puts the reply's value into that text.
fn describe(e: &RedisError) -> String {
    match (e.code(), e.kind()) {
        (Some(code), _) => match e.detail() {
            Some(detail) => format!("{code} {detail}"),
            None => code.to_owned(),
        },
        (None, ErrorKind::Io) => e.to_string(),
        _ => e.category().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_that_does_not_convert_stays_out_of_the_error() {
        let e = <i64 as redis::FromRedisValue>::from_redis_value(Value::BulkString(
            b"user-secret".to_vec(),
        ))
        .expect_err("not an integer");
        let e = RedisError::from(e);
        let classified = classify(&e, Duration::from_secs(1)).to_string();
        assert!(!classified.contains("user-secret"), "{classified}");
    }
}
