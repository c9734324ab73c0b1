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

mod classify;
mod cluster;
mod connect;
pub mod notify;
pub mod pool;
pub mod reply;
mod retry;
pub mod scripts;
pub mod supervisor;

pub use self::{
    classify::{classify, not_executed},
    retry::Attempt,
};

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
use redis::{ErrorKind, Pipeline, RedisError, ServerErrorKind, Value};

use self::{
    cluster::{ClusterHealth, by_slot},
    connect::{connector, opener},
    notify::Notifier,
    pool::{Conn, Connector, Manager, Pool},
    retry::{Failure, is_write, send_on},
    scripts::{LuaScript, ScriptCall, Scripts},
};
use super::{StoreError, keys::Keys, signal::Signal};
use crate::config::{RedisConfig, RedisMode};

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
                .wait_timeout(Some(config.command_timeout.get()))
                .create_timeout(Some(config.connect_timeout.get()))
                .recycle_timeout(Some(config.command_timeout.get()))
                .build()
                .map_err(|e| StoreError::Protocol(format!("redis pool: {e}")))
        };
        let (shared, display_url) = connector(config, Some(config.command_timeout.get()))?;
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
            pool: pool(shared, config.pool_size.get())?,
            // Opened only when a call needs one (a write concern); as many as the pool.
            exclusive: pool(exclusive, config.pool_size.get().max(4))?,
            mode: config.mode,
            keys: Keys::new(&config.key_prefix),
            scripts,
            generation,
            command_timeout: config.command_timeout.get(),
            failover_wait: config.failover_wait,
            display_url: display_url.into(),
            health,
            notifier: Arc::new(Notifier::new(opener(config)?, config.connect_timeout.get())),
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
}
