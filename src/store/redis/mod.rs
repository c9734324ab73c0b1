//! The Redis store.
//!
//! # One round trip per call
//! deadpool-redis's own manager runs `UNWATCH` + `PING` every time a connection is checked out,
//! which doubles the round trips of every RPC (DESIGN.md section 9). This store keeps
//! deadpool-redis for creating connections but pools them with a [`Manager`] whose recycle is a
//! memory read: a connection is replaced when a call saw it break, or when the background health
//! task saw Redis fail (a generation bump). Connections are multiplexed: a call checks one out,
//! clones the handle and returns it at once, so many calls pipeline over the same socket and the
//! pool lock is held only for the checkout.
//!
//! # Atomicity
//! Every multi-step change is one Lua script (`lua/*.lua`, run with EVALSHA and reloaded on
//! NOSCRIPT). All keys a script touches share the user's hash tag, so the scripts run unchanged on
//! Redis Cluster.
//!
//! # Failures
//! Every call is bounded by `redis.command_timeout` and fails with [`StoreError`]; idempotent
//! reads are retried once after a short pause when the connection dropped, never after a timeout
//! (that would double the wait), never for writes, and never for deletes (a retry's "already
//! gone" would misreport the first attempt).

use std::{
    collections::HashMap,
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use deadpool::managed::{self, Metrics, RecycleError, RecycleResult};
use redis::{
    AsyncConnectionConfig, IntoConnectionInfo, RedisError, Script, ScriptInvocation, Value,
    aio::MultiplexedConnection,
};

mod cache;

use super::{StoreError, keys::Keys};
use crate::{
    config::{RedisConfig, redact_url},
    ratelimit::{Counter, CounterId, Decision},
    session::{
        DataLimits, LimitExceeded, SessionKey, SessionRecord, SessionUpdate, UpdateOutcome,
        UpdateRefused, UserTag, data_size,
    },
    tenant::Tenant,
    time::Millis,
};

/// A session script: the shared prelude followed by the script's own file.
macro_rules! session_lua {
    ($file:literal) => {
        concat!(
            include_str!("../lua/session_prelude.lua"),
            include_str!(concat!("../lua/", $file))
        )
    };
}

/// The Lua scripts, hashed once at start-up.
struct Scripts {
    create: Script,
    get: Script,
    update: Script,
    rotate: Script,
    delete: Script,
    list: Script,
    delete_user: Script,
    ratelimit: Script,
    cache_get: Script,
    cache_set: Script,
    cache_tag: Script,
    cache_delete: Script,
    cache_tag_take: Script,
    cache_invalidate_namespace: Script,
    /// Every script's source, for SCRIPT LOAD.
    sources: [&'static str; 14],
}

impl Scripts {
    fn load() -> Self {
        let sources = [
            session_lua!("session_create.lua"),
            session_lua!("session_get.lua"),
            session_lua!("session_update.lua"),
            session_lua!("session_rotate.lua"),
            session_lua!("session_delete.lua"),
            session_lua!("session_list.lua"),
            session_lua!("session_delete_user.lua"),
            include_str!("../lua/ratelimit_check.lua"),
            include_str!("../lua/cache_get.lua"),
            include_str!("../lua/cache_set.lua"),
            include_str!("../lua/cache_tag.lua"),
            include_str!("../lua/cache_delete.lua"),
            include_str!("../lua/cache_tag_take.lua"),
            include_str!("../lua/cache_invalidate_namespace.lua"),
        ];
        let [
            create,
            get,
            update,
            rotate,
            delete,
            list,
            delete_user,
            ratelimit,
            cache_get,
            cache_set,
            cache_tag,
            cache_delete,
            cache_tag_take,
            cache_invalidate_namespace,
        ] = sources.map(Script::new);
        Self {
            create,
            get,
            update,
            rotate,
            delete,
            list,
            delete_user,
            ratelimit,
            cache_get,
            cache_set,
            cache_tag,
            cache_delete,
            cache_tag_take,
            cache_invalidate_namespace,
            sources,
        }
    }

    /// Loads every script (one pipelined round trip), so EVALSHA finds them on this server.
    async fn load_all(&self, conn: &mut MultiplexedConnection) -> redis::RedisResult<()> {
        let mut pipe = redis::pipe();
        for source in self.sources {
            pipe.cmd("SCRIPT").arg("LOAD").arg(source).ignore();
        }
        pipe.query_async::<()>(conn).await
    }
}

/// A pooled multiplexed connection with the flags that decide whether it is reused.
pub struct PooledConnection {
    conn: MultiplexedConnection,
    generation: u64,
    broken: Arc<AtomicBool>,
}

/// deadpool manager: creates connections through deadpool-redis, recycles them without I/O.
pub struct Manager {
    inner: deadpool_redis::Manager,
    generation: Arc<AtomicU64>,
    scripts: Arc<Scripts>,
}

impl managed::Manager for Manager {
    type Type = PooledConnection;
    type Error = RedisError;

    async fn create(&self) -> Result<PooledConnection, RedisError> {
        let generation = self.generation.load(Ordering::Acquire);
        let mut conn = managed::Manager::create(&self.inner).await?;
        // Scripts are loaded with every new connection (a new connection often means a
        // restarted Redis), so pipelined EVALSHA rarely meets NOSCRIPT.
        self.scripts.load_all(&mut conn).await?;
        Ok(PooledConnection {
            conn,
            generation,
            broken: Arc::new(AtomicBool::new(false)),
        })
    }

    async fn recycle(&self, c: &mut PooledConnection, _: &Metrics) -> RecycleResult<RedisError> {
        if c.broken.load(Ordering::Acquire) {
            return Err(RecycleError::message("connection broke during a call"));
        }
        if c.generation != self.generation.load(Ordering::Acquire) {
            return Err(RecycleError::message("connection predates a store failure"));
        }
        Ok(())
    }
}

type Pool = managed::Pool<Manager>;

/// The Redis store. Cheap to clone.
#[derive(Clone)]
pub struct RedisStore {
    pool: Pool,
    keys: Keys,
    scripts: Arc<Scripts>,
    generation: Arc<AtomicU64>,
    /// Cache namespace generations last seen (see `cache.rs`).
    generations: Arc<RwLock<HashMap<String, u64>>>,
    command_timeout: Duration,
    /// The URL with its password hidden, for log lines.
    display_url: Arc<str>,
}

impl RedisStore {
    /// Builds the store. Connects lazily: an unreachable Redis does not stop start-up, it makes
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
        let scripts = Arc::new(Scripts::load());
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
            generations: Arc::new(RwLock::new(HashMap::new())),
            command_timeout: config.command_timeout,
            display_url: redact_url(url).into(),
        })
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
            // Failing to open a connection (refused, TLS, AUTH) means the store is unusable
            // right now, whatever the reason: UNAVAILABLE, with the cause in the logs.
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
    /// broken when the error says it cannot be reused.
    /// `op` names the operation in the store metrics.
    async fn with_connection<T, F, Fut>(&self, op: &'static str, f: F) -> Result<T, StoreError>
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
                classify(&e, self.command_timeout)
            })
        }
        .await;
        metrics::histogram!("flowstate_store_duration_seconds", "op" => op)
            .record(start.elapsed().as_secs_f64());
        if let Err(e) = &result {
            let kind = match e {
                StoreError::Timeout(_) => "timeout",
                StoreError::Unavailable(_) => "unavailable",
                StoreError::Protocol(_) => "protocol",
            };
            metrics::counter!("flowstate_store_errors_total", "op" => op, "kind" => kind)
                .increment(1);
        }
        result
    }

    /// Runs one script invocation: one round trip (EVALSHA; EVAL once after a NOSCRIPT).
    async fn invoke<T: redis::FromRedisValue>(
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
    async fn invoke_idempotent<T: redis::FromRedisValue>(
        &self,
        op: &'static str,
        call: &ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        match self.invoke(op, call).await {
            Err(StoreError::Unavailable(reason)) => {
                tracing::debug!(%reason, op, "retrying an idempotent store call once");
                tokio::time::sleep(Duration::from_millis(20)).await;
                self.invoke(op, call).await
            }
            other => other,
        }
    }

    pub(crate) async fn ping(&self) -> Result<(), StoreError> {
        let result = self
            .with_connection("ping", |mut conn| async move {
                redis::cmd("PING").query_async::<()>(&mut conn).await
            })
            .await;
        if result.is_err() {
            self.invalidate_connections();
        }
        result
    }

    pub(crate) async fn session_create(
        &self,
        tenant: &Tenant,
        key: &SessionKey,
        record: &SessionRecord,
        max_per_user: u32,
    ) -> Result<u32, StoreError> {
        let mut call = self.scripts.create.prepare_invoke();
        call.key(self.keys.session(tenant, key))
            .key(self.keys.user_index(tenant, key.tag()))
            .arg(record.created_at)
            .arg(max_per_user)
            .arg(self.keys.session_base(tenant, key.tag()))
            .arg(key.member())
            .arg(record.created_at)
            .arg(record.expires_at);
        encode_record(&mut call, record);
        self.invoke("session_create", &call).await
    }

    pub(crate) async fn session_get(
        &self,
        tenant: &Tenant,
        key: &SessionKey,
        now: Millis,
        touch: bool,
    ) -> Result<Option<SessionRecord>, StoreError> {
        let mut call = self.scripts.get.prepare_invoke();
        call.key(self.keys.session(tenant, key))
            .key(self.keys.user_index(tenant, key.tag()))
            .arg(now)
            .arg(if touch { "1" } else { "0" });
        let reply: Value = if touch {
            self.invoke("session_get", &call).await?
        } else {
            self.invoke_idempotent("session_get", &call).await?
        };
        match reply {
            Value::Nil => Ok(None),
            other => decode_record(other).map(Some),
        }
    }

    pub(crate) async fn session_update(
        &self,
        tenant: &Tenant,
        key: &SessionKey,
        now: Millis,
        update: &SessionUpdate,
        limits: DataLimits,
    ) -> Result<UpdateOutcome, StoreError> {
        let mut call = self.scripts.update.prepare_invoke();
        call.key(self.keys.session(tenant, key))
            .key(self.keys.user_index(tenant, key.tag()))
            .arg(now)
            .arg(update.expected_version)
            .arg(limits.max_fields)
            .arg(limits.max_bytes)
            .arg(update.set.len());
        for (name, value) in &update.set {
            call.arg(name.as_str()).arg(value.as_ref());
        }
        let mut removed: Vec<&str> = update.remove.iter().map(String::as_str).collect();
        removed.sort_unstable();
        removed.dedup();
        for name in removed {
            call.arg(name);
        }
        let reply: Vec<Value> = self.invoke("session_update", &call).await?;
        let mut reply = reply.into_iter();
        let status = reply.next().map(|v| int(&v)).transpose()?;
        match (status, reply.next()) {
            (Some(1), Some(hash)) => decode_record(hash).map(UpdateOutcome::Updated),
            (Some(0), None) => Ok(UpdateOutcome::NotFound),
            (Some(-1), Some(v)) => Ok(UpdateOutcome::Refused(UpdateRefused::Conflict {
                current: u64::try_from(int(&v)?).unwrap_or(0),
            })),
            (Some(-2), Some(Value::BulkString(which))) => Ok(UpdateOutcome::Refused(
                UpdateRefused::TooLarge(if which == b"fields" {
                    LimitExceeded::Fields
                } else {
                    LimitExceeded::Bytes
                }),
            )),
            other => Err(StoreError::Protocol(format!(
                "session_update returned {other:?}"
            ))),
        }
    }

    pub(crate) async fn session_rotate(
        &self,
        tenant: &Tenant,
        old: &SessionKey,
        new: &SessionKey,
        now: Millis,
    ) -> Result<Option<SessionRecord>, StoreError> {
        let mut call = self.scripts.rotate.prepare_invoke();
        call.key(self.keys.session(tenant, old))
            .key(self.keys.session(tenant, new))
            .key(self.keys.user_index(tenant, old.tag()))
            .arg(now)
            .arg(old.member())
            .arg(new.member());
        match self.invoke::<Value>("session_rotate", &call).await? {
            Value::Nil => Ok(None),
            other => decode_record(other).map(Some),
        }
    }

    pub(crate) async fn session_delete(
        &self,
        tenant: &Tenant,
        key: &SessionKey,
        now: Millis,
    ) -> Result<bool, StoreError> {
        let mut call = self.scripts.delete.prepare_invoke();
        call.key(self.keys.session(tenant, key))
            .key(self.keys.user_index(tenant, key.tag()))
            .arg(now)
            .arg(key.member());
        // Not retried: deleting twice ends in the same state, but the second answer ("already
        // gone") would hide that the first attempt deleted it.
        Ok(self.invoke::<i64>("session_delete", &call).await? == 1)
    }

    pub(crate) async fn session_list(
        &self,
        tenant: &Tenant,
        tag: UserTag,
        user_id: &str,
        now: Millis,
    ) -> Result<Vec<(SessionKey, SessionRecord)>, StoreError> {
        let mut call = self.scripts.list.prepare_invoke();
        call.key(self.keys.user_index(tenant, tag))
            .arg(now)
            .arg(self.keys.session_base(tenant, tag));
        let reply: Vec<Value> = self.invoke_idempotent("session_list", &call).await?;
        let mut out = Vec::with_capacity(reply.len() / 2);
        let mut it = reply.into_iter();
        while let (Some(member), Some(hash)) = (it.next(), it.next()) {
            let member = string(member)?;
            let record = decode_record(hash)?;
            if record.user_id != user_id {
                continue;
            }
            let key = SessionKey::from_member(tag, &member)
                .ok_or_else(|| StoreError::Protocol(format!("bad index member {member:?}")))?;
            out.push((key, record));
        }
        Ok(out)
    }

    pub(crate) async fn session_delete_user(
        &self,
        tenant: &Tenant,
        tag: UserTag,
        user_id: &str,
        keep: Option<&SessionKey>,
        now: Millis,
    ) -> Result<u64, StoreError> {
        let mut call = self.scripts.delete_user.prepare_invoke();
        call.key(self.keys.user_index(tenant, tag))
            .arg(now)
            .arg(self.keys.session_base(tenant, tag))
            .arg(user_id)
            .arg(keep.map(SessionKey::member).unwrap_or_default());
        // Not retried, for the same reason as session_delete: the count would be wrong.
        self.invoke("session_delete_user", &call).await
    }
}

impl RedisStore {
    /// One script for every counter of the request: all-or-nothing on standalone Redis. On Redis
    /// Cluster the counters' different hash tags would need reserve-then-commit per slot instead.
    pub(crate) async fn ratelimit_check(
        &self,
        tenant: &Tenant,
        counters: &[Counter],
        now: Millis,
        cost: u64,
        commit: bool,
    ) -> Result<Vec<Decision>, StoreError> {
        let mut call = self.scripts.ratelimit.prepare_invoke();
        call.arg(now).arg(cost).arg(if commit { "1" } else { "0" });
        for c in counters {
            call.key(self.keys.counter(tenant, &c.id))
                .arg(c.policy.algorithm.code())
                .arg(c.policy.limit)
                .arg(c.policy.period_ms)
                .arg(c.policy.capacity());
        }
        // A consuming check is never retried: the first attempt may have counted.
        let reply: Vec<i64> = if commit {
            self.invoke("ratelimit_check", &call).await?
        } else {
            self.invoke_idempotent("ratelimit_check", &call).await?
        };
        if reply.len() != counters.len() * 4 {
            return Err(StoreError::Protocol(format!(
                "ratelimit_check returned {} values for {} counters",
                reply.len(),
                counters.len()
            )));
        }
        Ok(reply
            .chunks_exact(4)
            .map(|r| Decision {
                allowed: r[0] == 1,
                remaining: u64::try_from(r[1]).unwrap_or(0),
                reset_after_ms: r[2],
                retry_after_ms: r[3],
            })
            .collect())
    }

    pub(crate) async fn ratelimit_reset(
        &self,
        tenant: &Tenant,
        id: &CounterId,
    ) -> Result<(), StoreError> {
        let key = self.keys.counter(tenant, id);
        // Deleting twice ends in the same state: safe to retry.
        let del = || {
            self.with_connection("ratelimit_reset", |mut conn| {
                let key = key.clone();
                async move {
                    redis::cmd("DEL")
                        .arg(key)
                        .query_async::<()>(&mut conn)
                        .await
                }
            })
        };
        match del().await {
            Err(StoreError::Unavailable(_)) => del().await,
            other => other,
        }
    }
}

/// Sorts a Redis error into the store's failure kinds.
fn classify(e: &RedisError, timeout: Duration) -> StoreError {
    if e.is_timeout() {
        return StoreError::Timeout(timeout);
    }
    if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() {
        return StoreError::Unavailable(e.to_string());
    }
    // Server states that pass: loading a dataset, a busy script, a failover in progress.
    match e.code() {
        // …and a server that cannot take writes or no longer accepts our password.
        Some(
            "LOADING" | "BUSY" | "TRYAGAIN" | "MASTERDOWN" | "READONLY" | "CLUSTERDOWN" | "OOM"
            | "NOAUTH" | "WRONGPASS",
        ) => StoreError::Unavailable(e.to_string()),
        _ => StoreError::Protocol(e.to_string()),
    }
}

/// HSET arguments for a new session (see the field list in `lua/session_prelude.lua`).
fn encode_record(call: &mut ScriptInvocation<'_>, r: &SessionRecord) {
    call.arg("_u")
        .arg(r.user_id.as_str())
        .arg("_c")
        .arg(r.created_at)
        .arg("_l")
        .arg(r.last_seen_at)
        .arg("_e")
        .arg(r.expires_at)
        .arg("_a")
        .arg(r.absolute_expires_at)
        .arg("_i")
        .arg(r.idle_timeout)
        .arg("_v")
        .arg(r.version)
        .arg("_n")
        .arg(r.data.len())
        .arg("_z")
        .arg(data_size(&r.data));
    let mut name = String::new();
    for (k, v) in &r.data {
        name.clear();
        name.push_str("d:");
        name.push_str(k);
        call.arg(name.as_str()).arg(v.as_ref());
    }
    for (k, v) in &r.metadata {
        name.clear();
        name.push_str("m:");
        name.push_str(k);
        call.arg(name.as_str()).arg(v.as_str());
    }
}

/// Rebuilds a record from an HGETALL reply.
fn decode_record(hash: Value) -> Result<SessionRecord, StoreError> {
    let Value::Array(items) = hash else {
        return Err(StoreError::Protocol(format!(
            "expected a hash, got {hash:?}"
        )));
    };
    let mut r = SessionRecord {
        user_id: String::new(),
        data: HashMap::new(),
        metadata: HashMap::new(),
        created_at: 0,
        last_seen_at: 0,
        expires_at: 0,
        absolute_expires_at: 0,
        idle_timeout: 0,
        version: 0,
    };
    let mut it = items.into_iter();
    while let (Some(Value::BulkString(field)), Some(Value::BulkString(value))) =
        (it.next(), it.next())
    {
        let num = || -> Result<i64, StoreError> {
            std::str::from_utf8(&value)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| StoreError::Protocol("non-numeric session field".into()))
        };
        match field.as_slice() {
            b"_u" => r.user_id = utf8(value)?,
            b"_c" => r.created_at = num()?,
            b"_l" => r.last_seen_at = num()?,
            b"_e" => r.expires_at = num()?,
            b"_a" => r.absolute_expires_at = num()?,
            b"_i" => r.idle_timeout = num()?,
            b"_v" => r.version = u64::try_from(num()?).unwrap_or(0),
            [b'd', b':', name @ ..] => {
                r.data.insert(utf8(name.to_vec())?, Bytes::from(value));
            }
            [b'm', b':', name @ ..] => {
                r.metadata.insert(utf8(name.to_vec())?, utf8(value)?);
            }
            _ => {}
        }
    }
    if r.user_id.is_empty() || r.version == 0 {
        return Err(StoreError::Protocol("incomplete session hash".into()));
    }
    Ok(r)
}

fn utf8(bytes: Vec<u8>) -> Result<String, StoreError> {
    String::from_utf8(bytes).map_err(|_| StoreError::Protocol("non-UTF-8 session field".into()))
}

fn string(v: Value) -> Result<String, StoreError> {
    match v {
        Value::BulkString(b) => utf8(b),
        other => Err(StoreError::Protocol(format!(
            "expected a string, got {other:?}"
        ))),
    }
}

fn int(v: &Value) -> Result<i64, StoreError> {
    match v {
        Value::Int(i) => Ok(*i),
        other => Err(StoreError::Protocol(format!(
            "expected an integer, got {other:?}"
        ))),
    }
}
