//! The Redis backend: a pool of multiplexed connections (see [`pool`]), the Lua script
//! registry (see [`scripts`]), and the call helpers every domain's Redis store uses.
//!
//! # Modes
//! `redis.mode` is standalone (one server), sentinel (the master the sentinels name) or
//! cluster (redis-rs's cluster client: slot map, MOVED/ASK). Every domain store is written
//! once against this backend: scripts declare their keys and keep them in one hash slot, and
//! [`RedisBackend::pipeline`] splits a pipeline by slot on a cluster.
//!
//! # One round trip per call
//! A call checks a connection out without I/O, sends one script invocation or one pipeline,
//! and gives the connection back at once; many calls share each socket.
//!
//! # Failures
//! Every call is bounded by `redis.command_timeout` and fails with [`StoreError`]. What Redis
//! refused without running it (a failover or resharding in progress, see [`not_executed`]) is
//! sent again with a growing pause for up to `redis.failover_wait`, within the RPC's deadline.
//! Idempotent calls may also be retried once after a dropped connection
//! ([`RedisBackend::invoke_idempotent`]); nothing else is resent, and never after a timeout
//! (that would double the wait).

pub mod notify;
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
    time::{Duration, Instant},
};
use tracing::Instrument;

use deadpool::managed;
use redis::{
    Arg, AsyncConnectionConfig, Client, Cmd, ConnectionInfo, ErrorKind, IntoConnectionInfo,
    Pipeline, RedisError, ServerErrorKind, Value,
    cluster::{ClusterClient, ClusterClientBuilder},
    cluster_async::ClusterConnection,
    sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType},
};

use self::{
    notify::{Notifier, Opener},
    pool::{Conn, Connector, Manager, Pool},
    scripts::{LuaScript, ScriptCall, Scripts},
};
use super::{StoreError, keys::Keys, signal::Signal};
use crate::config::{RedisConfig, RedisMode, redact_url};

/// First pause between retries of a call Redis refused without running; it doubles up to
/// [`MAX_RETRY_PAUSE`].
const FIRST_RETRY_PAUSE: Duration = Duration::from_millis(5);
const MAX_RETRY_PAUSE: Duration = Duration::from_millis(200);

/// The Redis backend. Cheap to clone.
#[derive(Clone)]
pub struct RedisBackend {
    pool: Pool,
    /// Connections held by one call for its whole length: `WAIT` blocks the connection it is
    /// sent on, so it never goes over the shared multiplexed ones.
    exclusive: Pool,
    mode: RedisMode,
    keys: Keys,
    scripts: Arc<Scripts>,
    generation: Arc<AtomicU64>,
    command_timeout: Duration,
    failover_wait: Duration,
    /// Where Redis is, passwords hidden, for log lines.
    display_url: Arc<str>,
    /// Cluster: the health task's own connection, replaced whenever a check fails so the next
    /// one learns the topology afresh (the pool's connections are left alone: they heal one by
    /// one when a call finds their map stale).
    health: Option<Arc<ClusterHealth>>,
    /// Signals from scripts to this replica's waiters (one Pub/Sub connection, opened when the
    /// first signal is asked for).
    notifier: Arc<Notifier>,
}

/// The health task's connection to a cluster.
struct ClusterHealth {
    client: ClusterClient,
    conn: tokio::sync::Mutex<Option<ClusterConnection>>,
}

/// A call's failure, and whether Redis refused it without running it (so it may be sent
/// again whatever it does).
struct Failure {
    error: StoreError,
    not_executed: bool,
}

/// A failed attempt at a call: the Redis error, and whether the call may be sent again
/// whatever it does (Redis refused all of it without running it, or ran only reads).
pub struct Attempt {
    error: RedisError,
    resendable: bool,
}

impl From<RedisError> for Attempt {
    /// A single command (or a connection failure): resendable when Redis refused it unrun.
    fn from(error: RedisError) -> Self {
        Self {
            resendable: not_executed(&error),
            error,
        }
    }
}

/// Marks a connection held for one call broken unless the call finished: a call dropped
/// mid-flight (its RPC cancelled) may leave a reply, or a blocking WAIT, behind on it.
struct HeldGuard {
    broken: Arc<AtomicBool>,
    finished: bool,
}

impl Drop for HeldGuard {
    fn drop(&mut self) {
        if !self.finished {
            self.broken.store(true, Ordering::Release);
        }
    }
}

impl RedisBackend {
    /// Builds the backend. Connects lazily: an unreachable Redis does not stop start-up, it makes
    /// calls fail with UNAVAILABLE and the health task report NOT_SERVING until it answers.
    pub fn new(config: &RedisConfig) -> Result<Self, StoreError> {
        // rediss:// needs a process-wide rustls crypto provider; installing twice is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let generation = Arc::new(AtomicU64::new(0));
        let scripts = Arc::new(Scripts::default());
        let pool = |connector: Connector, size: usize| {
            let manager = Manager {
                connector,
                generation: generation.clone(),
                scripts: scripts.clone(),
            };
            Pool::builder(manager)
                .max_size(size)
                .runtime(deadpool::Runtime::Tokio1)
                .wait_timeout(Some(config.command_timeout))
                .create_timeout(Some(config.connect_timeout))
                .recycle_timeout(Some(config.command_timeout))
                .build()
                .map_err(|e| StoreError::Protocol(format!("redis pool: {e}")))
        };
        let (shared, display_url) = connector(config, Some(config.command_timeout))?;
        let health = match &shared {
            Connector::Cluster(client) => Some(Arc::new(ClusterHealth {
                client: client.clone(),
                conn: tokio::sync::Mutex::new(None),
            })),
            _ => None,
        };
        // No reply timeout of the connection's own: a WAIT's round trip is bounded per call
        // (`pipeline_wait`), by the command timeout plus the WAIT's own.
        let (exclusive, _) = connector(config, None)?;
        Ok(Self {
            pool: pool(shared, config.pool_size)?,
            // Opened only when a call needs one (a write concern); as many as the pool.
            exclusive: pool(exclusive, config.pool_size.max(4))?,
            mode: config.mode,
            keys: Keys::new(&config.key_prefix),
            scripts,
            generation,
            command_timeout: config.command_timeout,
            failover_wait: config.failover_wait,
            display_url: display_url.into(),
            health,
            notifier: Arc::new(Notifier::new(opener(config)?, config.connect_timeout)),
        })
    }

    /// A signal fired by scripts that `PUBLISH` on `channel` (see [`notify`]).
    pub async fn signal(&self, channel: &str) -> Signal {
        self.notifier.subscribe(channel).await
    }

    /// How Redis is reached.
    pub fn mode(&self) -> RedisMode {
        self.mode
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

    /// A connection of its own with server-assisted client-side caching: RESP3, `CLIENT
    /// TRACKING ON`, so Redis remembers the keys read over it and sends `invalidate` pushes
    /// (to `push`, in order with the replies) when any client changes, expires or evicts them;
    /// a lost connection is a `Disconnection` push. Standalone and sentinel (the master the
    /// sentinels name now); a cluster has no one server to track on. `name` is its CLIENT
    /// SETNAME, so an operator (or a test) can find it in CLIENT LIST.
    pub async fn tracked_connection(
        &self,
        name: &str,
        push: impl redis::aio::AsyncPushSender,
    ) -> Result<redis::aio::MultiplexedConnection, StoreError> {
        let timeout = self.command_timeout;
        let opened = async {
            let Some(client) = self.notifier.opener().server().await? else {
                return Err(RedisError::from((
                    ErrorKind::Client,
                    "client tracking needs one server (standalone or sentinel), not a cluster",
                )));
            };
            let info = client.get_connection_info().clone();
            let settings = info
                .redis_settings()
                .clone()
                .set_protocol(redis::ProtocolVersion::RESP3);
            let client = redis::Client::open(info.set_redis_settings(settings))?;
            let config = redis::AsyncConnectionConfig::new()
                .set_push_sender(push)
                .set_connection_timeout(Some(timeout))
                .set_response_timeout(Some(timeout));
            let mut conn = client
                .get_multiplexed_async_connection_with_config(&config)
                .await?;
            redis::pipe()
                .cmd("CLIENT")
                .arg("SETNAME")
                .arg(name)
                .ignore()
                .cmd("CLIENT")
                .arg("TRACKING")
                .arg("ON")
                .ignore()
                .exec_async(&mut conn)
                .await?;
            Ok(conn)
        };
        opened.await.map_err(|e| classify(&e, timeout))
    }

    /// The deadline of one round trip (`redis.command_timeout`).
    pub fn command_timeout(&self) -> Duration {
        self.command_timeout
    }

    /// Where Redis is (URL, seed nodes or sentinels and master name), passwords as `***`.
    pub fn display_url(&self) -> &str {
        &self.display_url
    }

    /// Pool figures: (connections open, connections idle, callers waiting).
    pub fn pool_status(&self) -> (usize, usize, usize) {
        let s = self.pool.status();
        (s.size, s.available, s.waiting)
    }

    /// Makes every pooled connection be replaced on its next checkout (called by the health task
    /// when Redis fails, so no call reuses a connection to a dead or replaced server, and a
    /// cluster connection relearns the slot map from the seeds).
    pub fn invalidate_connections(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Checks a connection out of `pool`: the shared one hands back a clone of the handle at
    /// once; `hold` keeps the pooled object (returned when it drops).
    async fn checkout(
        &self,
        pool: &Pool,
    ) -> Result<(managed::Object<Manager>, Conn, Arc<AtomicBool>), Failure> {
        let pooled = pool.get().await.map_err(|e| match e {
            // Failing to open a connection (refused, TLS) makes the store unreachable right now;
            // a wrong password or an ACL that forbids SCRIPT LOAD is a configuration fault
            // (Refused), never transient.
            managed::PoolError::Backend(e) => {
                let error = match classify(&e, self.command_timeout) {
                    StoreError::Protocol(reason) => StoreError::Unavailable(reason),
                    other => other,
                };
                // No connection, nothing sent: worth another try, unless the store refused
                // flowstate itself (a wrong password does not get righter in a second).
                Failure {
                    not_executed: error.is_transient(),
                    error,
                }
            }
            // A new connection could not be made (or an idle one checked) in time: typical
            // while a Cluster master is dead and a fresh connection's slot map still names it.
            // Nothing was sent, so it is worth another try within `retry_until`.
            managed::PoolError::Timeout(
                managed::TimeoutType::Create | managed::TimeoutType::Recycle,
            ) => Failure {
                not_executed: true,
                error: StoreError::Timeout(self.command_timeout),
            },
            // Every connection busy for the whole wait: the pool is exhausted; another try
            // would only add to the queue.
            managed::PoolError::Timeout(managed::TimeoutType::Wait) => Failure {
                not_executed: false,
                error: StoreError::Timeout(self.command_timeout),
            },
            other => Failure {
                not_executed: false,
                error: StoreError::Unavailable(other.to_string()),
            },
        })?;
        let conn = pooled.conn.clone();
        let broken = pooled.broken.clone();
        Ok((pooled, conn, broken))
    }

    /// Until when a call that began at `start` may retry what Redis refused without running:
    /// `redis.failover_wait`, and never past four fifths of the time the RPC had left, so the
    /// RPC can still answer (a fail-open rate limit says "not enforced" in time).
    fn retry_until(&self, start: Instant) -> Instant {
        let until = start + self.failover_wait;
        match crate::deadline::remaining() {
            Some(left) => until.min(start + left.mul_f32(0.8)),
            None => until,
        }
    }

    /// Runs `f` on a connection within the command timeout, marking the connection broken when
    /// the error says it cannot be reused. `op` names the operation in the store metrics.
    ///
    /// A call Redis refused without running it (a failover or resharding in progress: see
    /// [`not_executed`]) is sent again after a short, growing pause until it succeeds or
    /// [`retry_until`](Self::retry_until) passes; nothing that may have run is resent here.
    pub async fn with_connection<T, F, Fut>(&self, op: &'static str, f: F) -> Result<T, StoreError>
    where
        F: Fn(Conn) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        self.run(op, &self.pool, false, |conn| {
            let call = f(conn);
            async move { call.await.map_err(Attempt::from) }
        })
        .await
    }

    async fn run<T, F, Fut>(
        &self,
        op: &'static str,
        pool: &Pool,
        hold: bool,
        f: F,
    ) -> Result<T, StoreError>
    where
        F: Fn(Conn) -> Fut,
        Fut: std::future::Future<Output = Result<T, Attempt>>,
    {
        // The store span of a trace: one per call, retries included, and only inside a call's
        // span (the health task and other background work start no traces of their own). A
        // debug span: one atomic load when nothing records spans.
        let within_a_call =
            tracing::level_enabled!(tracing::Level::DEBUG) && !tracing::Span::current().is_none();
        let span = if within_a_call {
            tracing::debug_span!(
                "store",
                otel.name = op,
                otel.kind = "client",
                otel.status_code = tracing::field::Empty,
                db.system.name = "redis",
                db.operation.name = op,
                error.type = tracing::field::Empty,
                retries = tracing::field::Empty,
            )
        } else {
            tracing::Span::none()
        };
        let result = self
            .run_attempts(op, pool, hold, f)
            .instrument(span.clone())
            .await;
        if let Err(e) = &result {
            metrics::counter!("flowstate_store_errors_total", "op" => op, "kind" => e.kind())
                .increment(1);
            span.record("otel.status_code", "ERROR");
            span.record("error.type", e.kind());
        }
        result
    }

    async fn run_attempts<T, F, Fut>(
        &self,
        op: &'static str,
        pool: &Pool,
        hold: bool,
        f: F,
    ) -> Result<T, StoreError>
    where
        F: Fn(Conn) -> Fut,
        Fut: std::future::Future<Output = Result<T, Attempt>>,
    {
        let start = Instant::now();
        let mut until = None;
        let mut pause = FIRST_RETRY_PAUSE;
        let mut retries = 0u32;
        // No timer of our own here: the pool's wait/create timeouts bound the checkout and
        // redis-rs's response timeout (`redis.command_timeout`) bounds the round trip, so a
        // second timer per call would only cost time-wheel work on the hot path.
        let result = loop {
            let attempt = async {
                let (pooled, conn, broken) = self.checkout(pool).await?;
                // The shared pool's object goes back at once (the handle is multiplexed, and
                // holding it would cap calls in flight at the pool size); an exclusive one is
                // held until the call is over.
                let held = if hold {
                    Some((
                        pooled,
                        HeldGuard {
                            broken: broken.clone(),
                            finished: false,
                        },
                    ))
                } else {
                    drop(pooled);
                    None
                };
                let result = f(conn).await.map_err(
                    |Attempt {
                         error: e,
                         resendable,
                     }| {
                        // A connection held for one call that timed out may still get its late
                        // reply: nobody else may inherit it.
                        if e.is_unrecoverable_error()
                            || e.is_connection_dropped()
                            || (hold && e.is_timeout())
                        {
                            broken.store(true, Ordering::Release);
                        }
                        if self.mode != RedisMode::Cluster && server_changed_role(&e) {
                            // The server behind this address is not (or no longer) the writable
                            // master: a failover demoted it, or it is still loading. No connection
                            // to it is reused; new ones go wherever the address (DNS, Service) or
                            // the sentinels point now. (A cluster connection follows the slot map
                            // itself.)
                            broken.store(true, Ordering::Release);
                            self.invalidate_connections();
                        }
                        if self.mode == RedisMode::Cluster
                            && (e.is_connection_refusal()
                                || e.kind() == ErrorKind::ClusterConnectionNotFound
                                || e.code() == Some("MOVED"))
                        {
                            // A node is gone or a slot moved: this connection's slot map is stale.
                            // The client refreshes it in the background, but a refresh during a
                            // failover can fail; a new connection learns the map afresh.
                            broken.store(true, Ordering::Release);
                        }
                        Failure {
                            not_executed: resendable,
                            error: classify(&e, self.command_timeout),
                        }
                    },
                );
                if let Some((pooled, mut guard)) = held {
                    guard.finished = true;
                    drop(pooled);
                }
                result
            }
            .await;
            match attempt {
                Ok(value) => break Ok(value),
                Err(failure) if failure.not_executed => {
                    let until = *until.get_or_insert_with(|| self.retry_until(start));
                    if Instant::now() + pause >= until {
                        break Err(failure.error);
                    }
                    metrics::counter!("flowstate_store_retries_total", "op" => op).increment(1);
                    retries += 1;
                    tracing::Span::current().record("retries", i64::from(retries));
                    tracing::debug!(op, error = %failure.error, "store refused a call without running it; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(MAX_RETRY_PAUSE);
                }
                Err(failure) => break Err(failure.error),
            }
        };
        metrics::histogram!("flowstate_store_duration_seconds", "op" => op)
            .record(start.elapsed().as_secs_f64());
        result
    }

    /// Runs one script call: one round trip (EVALSHA; the scripts are loaded and it is sent
    /// once more after a NOSCRIPT, which proves it did not run).
    pub async fn invoke<T: redis::FromRedisValue>(
        &self,
        op: &'static str,
        call: &ScriptCall,
    ) -> Result<T, StoreError> {
        let cmd = call.cmd();
        let slot = call.slot();
        let scripts = self.scripts.clone();
        self.with_connection(op, |mut conn| {
            let (cmd, scripts) = (&cmd, &scripts);
            async move {
                match cmd.query_async::<T>(&mut conn).await {
                    Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                        scripts.reload(&mut conn, slot).await?;
                        cmd.query_async(&mut conn).await
                    }
                    other => other,
                }
            }
        })
        .await
    }

    /// [`invoke`](Self::invoke) for idempotent calls: one retry after a dropped connection.
    pub async fn invoke_idempotent<T: redis::FromRedisValue>(
        &self,
        op: &'static str,
        call: &ScriptCall,
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

    /// Sends a pipeline and returns one reply per command, in order; reloads the scripts and
    /// resends on NOSCRIPT (a Redis restarted or flushed under a live connection).
    ///
    /// On one server that is one round trip. On a cluster the commands are grouped by hash
    /// slot (a keyless command such as `TIME` goes with the command before it, so it reads the
    /// clock of the node that holds those keys) and all groups are sent at once: one round trip
    /// of latency. A group that only reads is one request; a group with writes sends each
    /// command as a request of its own (still pipelined on the node's multiplexed connection),
    /// because a cluster connection reports only a pipeline's first error: during a resharding
    /// some of a slot's keys answer ASK while the others run, and only a command's own answer
    /// says whether it may be sent again. Commands of one slot keep their order on the wire;
    /// commands of different slots have no order between them, so callers put what must
    /// happen together in one slot (or one script).
    pub async fn pipeline(
        &self,
        op: &'static str,
        pipe: &Pipeline,
    ) -> Result<Vec<Value>, StoreError> {
        if self.mode != RedisMode::Cluster {
            return self.send(op, pipe).await;
        }
        let groups = by_slot(pipe)?;
        let sent = groups.iter().map(|(slot, group, _)| async move {
            if group.cmd_iter().any(is_write) {
                self.send_each(op, *slot, group).await
            } else {
                self.send(op, group).await
            }
        });
        let replies = futures_util::future::try_join_all(sent).await?;
        let mut out = vec![Value::Nil; pipe.len()];
        for ((_, _, positions), replies) in groups.iter().zip(replies) {
            if replies.len() != positions.len() {
                return Err(StoreError::Protocol(format!(
                    "{op}: {} replies for {} commands",
                    replies.len(),
                    positions.len()
                )));
            }
            for (&i, reply) in positions.iter().zip(replies) {
                out[i] = reply;
            }
        }
        Ok(out)
    }

    /// Every command of `group` (one cluster slot) as a request of its own, at once, each sent
    /// again on its own if Redis refused it unrun.
    async fn send_each(
        &self,
        op: &'static str,
        slot: u16,
        group: &Pipeline,
    ) -> Result<Vec<Value>, StoreError> {
        use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
        let scripts = &self.scripts;
        let sent = group.cmd_iter().map(|cmd| {
            self.with_connection(op, move |conn| async move {
                let Conn::Cluster(mut conn) = conn else {
                    return Err(RedisError::from((
                        ErrorKind::Client,
                        "a cluster request on a connection that is not a cluster's",
                    )));
                };
                // Keyless commands go to the slot's master; keyed ones are routed by their key.
                let route = || {
                    RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(Route::new(
                        slot,
                        SlotAddr::Master,
                    )))
                };
                // A routed command hands a server error back as a value: make it an error.
                let attempt = conn
                    .route_command(cmd.clone(), route())
                    .await
                    .and_then(Value::extract_error);
                match attempt {
                    Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                        scripts
                            .reload(&mut Conn::Cluster(conn.clone()), Some(slot))
                            .await?;
                        conn.route_command(cmd.clone(), route())
                            .await
                            .and_then(Value::extract_error)
                    }
                    other => other,
                }
            })
        });
        futures_util::future::try_join_all(sent).await
    }

    /// One pipeline to one server (or one slot's node).
    async fn send(&self, op: &'static str, pipe: &Pipeline) -> Result<Vec<Value>, StoreError> {
        let scripts = self.scripts.clone();
        self.run(op, &self.pool, false, |conn| send_on(conn, pipe, &scripts))
            .await
    }

    /// Sends `pipe` (one slot) followed by `WAIT replicas timeout` on a connection of its own,
    /// and returns the replies to `pipe` and how many replicas acknowledged its writes within
    /// `timeout`. Used for a write concern: the write happened on the master either way; the
    /// count says whether it would survive the master's loss.
    pub async fn pipeline_wait(
        &self,
        op: &'static str,
        pipe: &Pipeline,
        replicas: u32,
        timeout: Duration,
    ) -> Result<(Vec<Value>, u32), StoreError> {
        let mut waited = pipe.clone();
        waited
            .cmd("WAIT")
            .arg(replicas)
            .arg(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX));
        let scripts = self.scripts.clone();
        let limit = self.command_timeout + timeout;
        let mut replies = self
            .run(op, &self.exclusive, true, |conn| {
                let (waited, scripts) = (&waited, &scripts);
                async move {
                    tokio::time::timeout(limit, send_on(conn, waited, scripts))
                        .await
                        .unwrap_or_else(|_| {
                            Err(Attempt {
                                error: std::io::Error::from(std::io::ErrorKind::TimedOut).into(),
                                resendable: false,
                            })
                        })
                }
            })
            .await?;
        let acked = match replies.pop() {
            Some(Value::Int(n)) => u32::try_from(n).unwrap_or(0),
            Some(other) => return Err(reply::unexpected("WAIT", "an integer", &other)),
            None => return Err(StoreError::Protocol(format!("{op}: no WAIT reply"))),
        };
        Ok((replies, acked))
    }

    /// Checks Redis answers and takes writes (a replica answers PING but refuses writes: not
    /// ready), with a write of flowstate's own health key; on a cluster, also that every slot
    /// is served ([`cluster_state`](Self::cluster_state)). On failure, on one server or behind
    /// Sentinel, every pooled connection is replaced (a new one asks the sentinels for the
    /// master again); a cluster's pooled connections are left to heal call by call (a refused
    /// connection or a MOVED replaces the one that met it), so one failed master does not cost
    /// the calls to every other master their connections.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let key = self.keys.system("health");
        let write = self
            .with_connection("ping", |mut conn| {
                let key = &key;
                async move {
                    redis::cmd("SET")
                        .arg(key)
                        .arg("1")
                        .arg("PX")
                        .arg(60_000)
                        .query_async::<()>(&mut conn)
                        .await
                }
            })
            .await;
        match (&self.health, write) {
            (Some(health), Ok(())) => self.cluster_state(health).await,
            (Some(_), Err(e)) => Err(e),
            (None, result) => {
                if result.is_err() {
                    self.invalidate_connections();
                }
                result
            }
        }
    }

    /// Every slot is served: `CLUSTER SLOTS` (from any node) covers all 16384 slots, and every
    /// master it names answers `CLUSTER INFO` with `cluster_state:ok`. A master that is gone is
    /// noticed at once (it does not answer), before the cluster itself marks it failed. Asked
    /// on the health task's own connection, made anew after any failed check.
    async fn cluster_state(&self, health: &ClusterHealth) -> Result<(), StoreError> {
        use redis::cluster_routing::{MultipleNodeRoutingInfo, RoutingInfo, SingleNodeRoutingInfo};
        let mut slot = health.conn.lock().await;
        let start = std::time::Instant::now();
        let checked = async {
            let conn = match slot.as_mut() {
                Some(conn) => conn,
                None => slot.insert(health.client.get_async_connection().await?),
            };
            let slots = conn
                .route_command(
                    redis::cmd("CLUSTER").arg("SLOTS").clone(),
                    RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
                )
                .await?;
            let infos = conn
                .route_command(
                    redis::cmd("CLUSTER").arg("INFO").clone(),
                    RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None)),
                )
                .await?;
            Ok::<_, RedisError>((slot_masters(&slots), cluster_infos(infos)))
        }
        .await;
        metrics::histogram!("flowstate_store_duration_seconds", "op" => "ping")
            .record(start.elapsed().as_secs_f64());
        let verdict = match checked {
            Err(e) => Err(classify(&e, self.command_timeout)),
            Ok((masters, infos)) => match std::num::NonZeroUsize::new(masters) {
                None => Err(StoreError::Unavailable(
                    "the cluster does not serve every slot".into(),
                )),
                Some(masters) if infos.len() < masters.get() => Err(StoreError::Unavailable(
                    format!("{} of {masters} cluster masters answered", infos.len()),
                )),
                Some(_)
                    if infos
                        .iter()
                        .any(|info| !info.lines().any(|l| l.trim() == "cluster_state:ok")) =>
                {
                    Err(StoreError::Unavailable(
                        "a cluster master reports cluster_state other than ok (slots not served)"
                            .into(),
                    ))
                }
                Some(_) => Ok(()),
            },
        };
        if verdict.is_err() {
            // The next check learns the topology afresh.
            *slot = None;
        }
        verdict
    }
}

/// How many masters a `CLUSTER SLOTS` reply names, when its ranges cover every slot; 0 when
/// some slot has no master.
fn slot_masters(reply: &Value) -> usize {
    let Value::Array(ranges) = reply else {
        return 0;
    };
    let mut covered = 0i64;
    let mut masters = std::collections::HashSet::new();
    for range in ranges {
        let Value::Array(parts) = range else {
            return 0;
        };
        let (Some(Value::Int(start)), Some(Value::Int(end)), Some(Value::Array(master))) =
            (parts.first(), parts.get(1), parts.get(2))
        else {
            return 0;
        };
        covered += end - start + 1;
        let host = match master.first() {
            Some(Value::BulkString(h)) => h.clone(),
            _ => Vec::new(),
        };
        let port = match master.get(1) {
            Some(Value::Int(p)) => *p,
            _ => 0,
        };
        masters.insert((host, port));
    }
    if covered == 16384 { masters.len() } else { 0 }
}

/// The texts of a fanned-out `CLUSTER INFO` (a map of node to text, or a list of texts).
fn cluster_infos(reply: Value) -> Vec<String> {
    let text = |v: Value| match v {
        Value::BulkString(b) => String::from_utf8(b).ok(),
        Value::VerbatimString { text, .. } => Some(text),
        Value::SimpleString(s) => Some(s),
        _ => None,
    };
    match reply {
        Value::Map(pairs) => pairs.into_iter().filter_map(|(_, v)| text(v)).collect(),
        Value::Array(items) => items.into_iter().filter_map(text).collect(),
        other => text(other).into_iter().collect(),
    }
}

/// Sends `pipe` on `conn`, loading the scripts and resending once after a NOSCRIPT. A failure
/// is resendable only if nothing in the pipeline that changes data may have run (see
/// [`resendable`]).
async fn send_on(
    mut conn: Conn,
    pipe: &Pipeline,
    scripts: &Scripts,
) -> Result<Vec<Value>, Attempt> {
    let first = match pipe.query_async::<Vec<Value>>(&mut conn).await {
        Ok(replies) => return Ok(replies),
        Err(e) => e,
    };
    if first.kind() != ErrorKind::Server(ServerErrorKind::NoScript) {
        return Err(Attempt {
            resendable: resendable(pipe, &first),
            error: first,
        });
    }
    // The node lacks the scripts: load them (a pipeline sent to a cluster is one slot's, see
    // `pipeline`), then send the pipeline again if none of it can have run.
    let slot = pipe.cmd_iter().find_map(|c| command_slot(c).ok().flatten());
    scripts.reload(&mut conn, slot).await?;
    if !resendable(pipe, &first) {
        return Err(Attempt {
            error: first,
            resendable: false,
        });
    }
    match pipe.query_async(&mut conn).await {
        Ok(replies) => Ok(replies),
        Err(e) => Err(Attempt {
            resendable: resendable(pipe, &e),
            error: e,
        }),
    }
}

/// Whether `pipe` may be sent again after failing with `e`, whatever its commands do: Redis
/// refused it without running anything that changes data.
/// - Refusals of a whole node or slot (MOVED, CLUSTERDOWN, LOADING, MASTERDOWN, BUSY: a
///   pipeline sent to a cluster is one slot's) and no connection at all: nothing ran.
/// - READONLY refuses the writes; the reads ran, and may run again.
/// - ASK and TRYAGAIN (a slot being migrated) and NOSCRIPT concern single commands: the others
///   may have run. Resendable when every write is known to have failed: from the per-command
///   errors of a pipeline when Redis reports them, or because the pipeline writes nothing, or
///   (NOSCRIPT) because its one script is its one write. (A cluster connection reports only the
///   first error of a pipeline.)
fn resendable(pipe: &Pipeline, e: &RedisError) -> bool {
    let per_command = matches!(e.code(), Some("ASK" | "TRYAGAIN" | "NOSCRIPT"));
    if !per_command {
        return not_executed(e);
    }
    let writes: Vec<usize> = pipe
        .cmd_iter()
        .enumerate()
        .filter(|(_, cmd)| is_write(cmd))
        .map(|(i, _)| i)
        .collect();
    if writes.is_empty() {
        return true;
    }
    if e.code() == Some("NOSCRIPT")
        && writes.len() == 1
        && pipe
            .cmd_iter()
            .filter(|c| matches!(command_name(c).as_slice(), b"EVALSHA" | b"EVAL"))
            .count()
            == 1
    {
        return true;
    }
    match e.clone().into_server_errors() {
        // A pipeline's errors, by position (a single error says position 0 whatever failed).
        Some(failed) if failed.len() > 1 => {
            let failed: std::collections::HashSet<usize> = failed.iter().map(|(i, _)| *i).collect();
            writes.iter().all(|i| failed.contains(i))
        }
        _ => false,
    }
}

/// Whether a command changes data (scripts count as writes).
fn is_write(cmd: &Cmd) -> bool {
    !matches!(
        command_name(cmd).as_slice(),
        b"GET"
            | b"HGET"
            | b"HMGET"
            | b"HGETALL"
            | b"PFCOUNT"
            | b"TIME"
            | b"ZSCAN"
            | b"ZRANGE"
            | b"PTTL"
            | b"EXISTS"
    )
}

/// A command's name, upper case.
fn command_name(cmd: &Cmd) -> Vec<u8> {
    match cmd.args_iter().next() {
        Some(Arg::Simple(name)) => name.to_ascii_uppercase(),
        _ => Vec::new(),
    }
}

/// The hash slot a command is routed by: its key (for EVALSHA the first of its keys); `None`
/// for the keyless commands flowstate pipelines (`TIME`, `WAIT`), which go with the command
/// before them. A command this does not know is an error, so a new one cannot be sent to the
/// wrong node unnoticed.
fn command_slot(cmd: &Cmd) -> Result<Option<u16>, StoreError> {
    let mut args = cmd.args_iter().filter_map(|a| match a {
        Arg::Simple(bytes) => Some(bytes),
        _ => None,
    });
    let name = args.next().unwrap_or_default().to_ascii_uppercase();
    let key = match name.as_slice() {
        b"EVALSHA" | b"EVAL" => {
            let _script = args.next();
            let keys = args
                .next()
                .and_then(reply::parse_int)
                .ok_or_else(|| StoreError::Protocol("EVALSHA without a key count".into()))?;
            if keys == 0 {
                return Err(StoreError::Protocol(
                    "a script without keys cannot be routed on a cluster".into(),
                ));
            }
            args.next()
        }
        b"TIME" | b"WAIT" => return Ok(None),
        b"GET" | b"SET" | b"DEL" | b"HMGET" | b"HGETALL" | b"HSET" | b"ZSCAN" | b"ZRANGE"
        | b"PEXPIRE" | b"PTTL" | b"EXISTS" | b"HGET" | b"PFCOUNT" => args.next(),
        other => {
            return Err(StoreError::Protocol(format!(
                "{} has no known key position for cluster routing",
                String::from_utf8_lossy(other)
            )));
        }
    };
    key.map(|k| Some(super::keys::slot(k)))
        .ok_or_else(|| StoreError::Protocol("a command without its key".into()))
}

/// `pipe` split by hash slot, in order of first appearance: each group's slot, commands (in
/// their order) and their positions in `pipe`.
fn by_slot(pipe: &Pipeline) -> Result<Vec<(u16, Pipeline, Vec<usize>)>, StoreError> {
    let slots = pipe
        .cmd_iter()
        .map(command_slot)
        .collect::<Result<Vec<_>, _>>()?;
    // A keyless command takes the slot before it, or, at the start, the first one after it.
    let first = slots.iter().flatten().next().copied().unwrap_or(0);
    let mut groups: Vec<(u16, Pipeline, Vec<usize>)> = Vec::new();
    let mut last = first;
    for (i, (cmd, slot)) in pipe.cmd_iter().zip(slots).enumerate() {
        let slot = slot.unwrap_or(last);
        last = slot;
        let at = match groups.iter().position(|(s, ..)| *s == slot) {
            Some(at) => at,
            None => {
                groups.push((slot, redis::pipe(), Vec::new()));
                groups.len() - 1
            }
        };
        groups[at].1.add_command(cmd.clone());
        groups[at].2.push(i);
    }
    Ok(groups)
}

/// The connector of `config`'s mode, and how to name it in logs (passwords hidden).
fn connector(
    config: &RedisConfig,
    response_timeout: Option<Duration>,
) -> Result<(Connector, String), StoreError> {
    let bad = |key: &str, e: RedisError| StoreError::Protocol(format!("{key}: {e}"));
    let nodelay = redis::io::tcp::TcpSettings::default().set_nodelay(true);
    let connection_config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(config.connect_timeout))
        .set_response_timeout(response_timeout);
    match config.mode {
        RedisMode::Standalone => {
            let (info, url) = standalone_info(config)?;
            let manager = deadpool_redis::Manager::new_with_config(info, connection_config)
                .map_err(|e| bad("redis.url", e))?;
            Ok((Connector::Standalone(manager), redact_url(url)))
        }
        RedisMode::Cluster => {
            let seeds: Vec<&str> = if config.nodes.is_empty() {
                config.url.iter().map(String::as_str).collect()
            } else {
                config.nodes.iter().map(String::as_str).collect()
            };
            let mut infos = Vec::with_capacity(seeds.len());
            for seed in &seeds {
                infos.push(
                    seed.into_connection_info()
                        .map_err(|e| bad("redis.nodes", e))?,
                );
            }
            let mut builder = ClusterClientBuilder::new(infos)
                // See `pool`: the client never resends on its own.
                .retries(0)
                .connection_timeout(config.connect_timeout)
                .tcp_settings(nodelay);
            if let Some(timeout) = response_timeout {
                builder = builder.response_timeout(timeout);
            }
            if let Some(username) = &config.username {
                builder = builder.username(username);
            }
            if let Some(password) = &config.password {
                builder = builder.password(password);
            }
            let client = builder.build().map_err(|e| bad("redis.nodes", e))?;
            let shown: Vec<String> = seeds.iter().map(|s| redact_url(s)).collect();
            Ok((
                Connector::Cluster(client),
                format!("cluster seeds {}", shown.join(",")),
            ))
        }
        RedisMode::Sentinel => {
            let client = sentinel_client(config)?;
            let master = config.master_name.clone().unwrap_or_default();
            let shown: Vec<String> = config.sentinels.iter().map(|s| redact_url(s)).collect();
            Ok((
                Connector::Sentinel {
                    client: tokio::sync::Mutex::new(client),
                    config: connection_config,
                },
                format!("sentinels {} master {master}", shown.join(",")),
            ))
        }
    }
}

/// The connection info of `redis.url` with the username, password and TCP settings of `config`.
fn standalone_info(config: &RedisConfig) -> Result<(ConnectionInfo, &str), StoreError> {
    let url = config
        .url
        .as_deref()
        .ok_or_else(|| StoreError::Protocol("redis.url is not set".into()))?;
    let mut info = url
        .into_connection_info()
        .map_err(|e| StoreError::Protocol(format!("redis.url: {e}")))?;
    // Nagle's algorithm against Redis's delayed ACKs adds ~40 ms to pipelined replies.
    info = info.set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
    let mut settings = info.redis_settings().clone();
    if let Some(username) = &config.username {
        settings = settings.set_username(username);
    }
    if let Some(password) = &config.password {
        settings = settings.set_password(password);
    }
    Ok((info.set_redis_settings(settings), url))
}

/// A client of the sentinels that finds the master `redis.master_name`.
fn sentinel_client(config: &RedisConfig) -> Result<SentinelClient, StoreError> {
    let bad = |key: &str, e: RedisError| StoreError::Protocol(format!("{key}: {e}"));
    let nodelay = redis::io::tcp::TcpSettings::default().set_nodelay(true);
    let master = config.master_name.clone().unwrap_or_default();
    let mut addrs = Vec::with_capacity(config.sentinels.len());
    let mut url_password = None;
    let mut url_username = None;
    for url in &config.sentinels {
        let info = url
            .as_str()
            .into_connection_info()
            .map_err(|e| bad("redis.sentinels", e))?;
        url_password = url_password.or(info.redis_settings().password().map(str::to_owned));
        url_username = url_username.or(info.redis_settings().username().map(str::to_owned));
        addrs.push(info.addr().clone());
    }
    let mut builder = SentinelClientBuilder::new(addrs, master.clone(), SentinelServerType::Master)
        .map_err(|e| bad("redis.sentinels", e))?
        .set_client_to_sentinel_tcp_settings(nodelay.clone())
        .set_client_to_redis_tcp_settings(nodelay);
    if let Some(password) = config.sentinel_password.clone().or(url_password) {
        builder = builder.set_client_to_sentinel_password(password);
    }
    if let Some(username) = url_username {
        builder = builder.set_client_to_sentinel_username(username);
    }
    if let Some(username) = &config.username {
        builder = builder.set_client_to_redis_username(username);
    }
    if let Some(password) = &config.password {
        builder = builder.set_client_to_redis_password(password);
    }
    if config.master_tls {
        builder = builder.set_client_to_redis_tls_mode(redis::TlsMode::Secure);
    }
    builder.build().map_err(|e| bad("redis.sentinels", e))
}

/// How the subscriber connection of the [`Notifier`] is opened in `config`'s mode.
fn opener(config: &RedisConfig) -> Result<Opener, StoreError> {
    Ok(match config.mode {
        RedisMode::Standalone => Opener::Single(
            Client::open(standalone_info(config)?.0)
                .map_err(|e| StoreError::Protocol(format!("redis.url: {e}")))?,
        ),
        RedisMode::Sentinel => Opener::Sentinel(tokio::sync::Mutex::new(sentinel_client(config)?)),
        RedisMode::Cluster => {
            let seeds: Vec<&str> = if config.nodes.is_empty() {
                config.url.iter().map(String::as_str).collect()
            } else {
                config.nodes.iter().map(String::as_str).collect()
            };
            let mut clients = Vec::with_capacity(seeds.len());
            for seed in seeds {
                let mut info = seed
                    .into_connection_info()
                    .map_err(|e| StoreError::Protocol(format!("redis.nodes: {e}")))?;
                let mut settings = info.redis_settings().clone();
                if let Some(username) = &config.username {
                    settings = settings.set_username(username);
                }
                if let Some(password) = &config.password {
                    settings = settings.set_password(password);
                }
                info = info.set_redis_settings(settings);
                clients.push(
                    Client::open(info)
                        .map_err(|e| StoreError::Protocol(format!("redis.nodes: {e}")))?,
                );
            }
            Opener::Nodes(clients)
        }
    })
}

/// Whether Redis refused the command without running it, so sending it again cannot apply
/// it twice: a redirection (MOVED, ASK), a cluster or server state that passes (TRYAGAIN,
/// CLUSTERDOWN, LOADING, MASTERDOWN, BUSY), a write sent to a replica (READONLY), or no
/// connection to send it on (refused, no node for the slot).
pub fn not_executed(e: &RedisError) -> bool {
    matches!(
        e.code(),
        Some(
            "MOVED"
                | "ASK"
                | "TRYAGAIN"
                | "CLUSTERDOWN"
                | "LOADING"
                | "MASTERDOWN"
                | "READONLY"
                | "BUSY"
        )
    ) || e.is_connection_refusal()
        || e.kind() == ErrorKind::ClusterConnectionNotFound
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
    // The cluster client reports a refused password while connecting to its seeds as an I/O
    // error ("Failed to create initial connections") whose text names the cause: a
    // configuration fault all the same, never a passing state.
    if e.kind() == ErrorKind::Io && {
        let text = e.to_string();
        ["AuthenticationFailed", "WRONGPASS", "NOAUTH", "NOPERM"]
            .iter()
            .any(|cause| text.contains(cause))
    } {
        return StoreError::Refused(describe(e));
    }
    if e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.kind() == ErrorKind::ClusterConnectionNotFound
    {
        return StoreError::Unavailable(describe(e));
    }
    if e.kind() == ErrorKind::AuthenticationFailed {
        return StoreError::Refused(describe(e));
    }
    match e.code() {
        // Server states that pass: loading a dataset, a busy script, a failover in progress, a
        // server that cannot take writes right now.
        Some(
            "LOADING" | "BUSY" | "TRYAGAIN" | "MASTERDOWN" | "READONLY" | "CLUSTERDOWN" | "MOVED"
            | "ASK",
        ) => StoreError::Unavailable(describe(e)),
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
