//! The connection pool: deadpool with a manager whose recycle costs no round trip, over the
//! three ways of reaching Redis.
//!
//! deadpool-redis's own manager runs `UNWATCH` + `PING` every time a connection is checked out,
//! which doubles the round trips of every RPC. This manager recycles with a memory read: a
//! connection is replaced when a call saw it break, or when the background health task saw
//! Redis fail (a generation bump).
//!
//! Connections are multiplexed: a call checks one out, clones the handle and returns it at
//! once, so many calls pipeline over the same socket and the pool lock is held only for the
//! checkout. A [`Conn`] is one of:
//! - standalone: one multiplexed connection to `redis.url`;
//! - sentinel: one multiplexed connection to the master the sentinels name when it is made
//!   (after a failover the old master refuses writes or drops the connection, the connection
//!   is replaced, and the new one asks the sentinels again);
//! - cluster: a redis-rs cluster connection (one multiplexed connection per node, the slot map,
//!   redirections). It is built with no retries of its own: a command that may have run is never
//!   sent twice by the client (a rate-limit consume must not count twice); flowstate retries only
//!   what Redis refused without running (see `super::not_executed`).

use std::sync::{
    Arc,
    atomic::{AtomicBool, AtomicU64, Ordering},
};

use deadpool::managed::{self, Metrics, RecycleError, RecycleResult};
use redis::{
    AsyncConnectionConfig, Cmd, Pipeline, RedisError, RedisFuture, Value,
    aio::{ConnectionLike, MultiplexedConnection},
    cluster::ClusterClient,
    cluster_async::ClusterConnection,
    sentinel::SentinelClient,
};

use super::scripts::Scripts;

/// A connection of any mode; cheap to clone (the handle is shared).
#[derive(Clone)]
pub enum Conn {
    /// Standalone or sentinel: one server.
    Single(MultiplexedConnection),
    /// Redis Cluster.
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// A pooled connection with the flags that decide whether it is reused.
pub struct PooledConnection {
    pub(super) conn: Conn,
    generation: u64,
    pub(super) broken: Arc<AtomicBool>,
}

/// How new connections are made.
pub enum Connector {
    /// One server.
    Standalone(deadpool_redis::Manager),
    /// The master the sentinels name (asking needs `&mut`, hence the lock; it is taken only
    /// while a connection is being made).
    Sentinel {
        client: tokio::sync::Mutex<SentinelClient>,
        config: AsyncConnectionConfig,
    },
    /// Redis Cluster.
    Cluster(ClusterClient),
}

/// deadpool manager: creates connections through the [`Connector`], recycles them without I/O.
pub struct Manager {
    pub(super) connector: Connector,
    pub(super) generation: Arc<AtomicU64>,
    pub(super) scripts: Arc<Scripts>,
}

impl managed::Manager for Manager {
    type Type = PooledConnection;
    type Error = RedisError;

    async fn create(&self) -> Result<PooledConnection, RedisError> {
        let generation = self.generation.load(Ordering::Acquire);
        let mut conn = match &self.connector {
            Connector::Standalone(manager) => {
                Conn::Single(managed::Manager::create(manager).await?)
            }
            Connector::Sentinel { client, config } => Conn::Single(
                client
                    .lock()
                    .await
                    .get_async_connection_with_config(config)
                    .await?,
            ),
            Connector::Cluster(client) => Conn::Cluster(client.get_async_connection().await?),
        };
        // Scripts are loaded with every new connection (a new connection often means a
        // restarted Redis or a new master), so EVALSHA rarely meets NOSCRIPT.
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

/// The pool type.
pub type Pool = managed::Pool<Manager>;
