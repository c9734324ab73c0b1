//! The connection pool: deadpool with a manager whose recycle costs no round trip.
//!
//! deadpool-redis's own manager runs `UNWATCH` + `PING` every time a connection is checked out,
//! which doubles the round trips of every RPC. This manager keeps deadpool-redis for creating
//! connections but recycles with a memory read: a connection is replaced when a call saw it
//! break, or when the background health task saw Redis fail (a generation bump).
//! Connections are multiplexed: a call checks one out, clones the handle and returns it at
//! once, so many calls pipeline over the same socket and the pool lock is held only for the
//! checkout.

use std::sync::{
    Arc,
    atomic::{AtomicBool, AtomicU64, Ordering},
};

use deadpool::managed::{self, Metrics, RecycleError, RecycleResult};
use redis::{RedisError, aio::MultiplexedConnection};

use super::scripts::Scripts;

/// A pooled multiplexed connection with the flags that decide whether it is reused.
pub struct PooledConnection {
    pub(super) conn: MultiplexedConnection,
    generation: u64,
    pub(super) broken: Arc<AtomicBool>,
}

/// deadpool manager: creates connections through deadpool-redis, recycles them without I/O.
pub struct Manager {
    pub(super) inner: deadpool_redis::Manager,
    pub(super) generation: Arc<AtomicU64>,
    pub(super) scripts: Arc<Scripts>,
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

/// The pool type.
pub type Pool = managed::Pool<Manager>;
