//! What every domain's store builds on: the store error, the key scheme, and the two backends
//! (a Redis connection pool with its Lua script registry, and the embedded in-memory backend).
//!
//! Each domain (`session`, `cache`, `ratelimit`, …) owns its store contract (a trait in its
//! `store.rs`) and both implementations of it (`redis.rs`, `memory.rs`), built on a
//! [`Backend`]. Adding a service adds a folder; nothing here changes.

pub mod keys;
pub mod memory;
pub mod redis;
pub mod signal;

use std::time::Duration;

use self::{memory::MemoryBackend, redis::RedisBackend};
use crate::config::Config;

/// A store failure. Never carries request data or store replies, so it is safe to log.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The call did not finish within `redis.command_timeout`.
    #[error("store call timed out after {0:?}")]
    Timeout(Duration),
    /// The store could not be reached or dropped the connection.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The store answered something this version does not understand (a bug, a foreign key of
    /// the wrong type, a script error).
    #[error("unexpected store reply: {0}")]
    Protocol(String),
    /// The store refused flowstate's credentials or permissions (a wrong password, an ACL that
    /// denies a command or key): a configuration fault, not a passing state.
    #[error("store refused the call: {0}")]
    Refused(String),
    /// The store is out of memory: Redis at `maxmemory` refusing writes, or the memory store's
    /// `memory.max_bytes` spent.
    #[error("store full: {0}")]
    Full(&'static str),
    /// A write made on the master that fewer replicas than its write concern confirmed in
    /// time: it may or may not survive a failover.
    #[error("write acknowledged by {acked} of {wanted} replicas in time")]
    NotReplicated {
        /// Replicas that confirmed it.
        acked: u32,
        /// Replicas the write concern asks for.
        wanted: u32,
    },
}

impl StoreError {
    /// Whether the same call may succeed if tried again soon (timeouts, dropped connections,
    /// a failover in progress): only these are retried (for idempotent operations) and only
    /// these let a rate limit with `failure_mode = open` admit.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Timeout(_)
            | StoreError::Unavailable(_)
            | StoreError::NotReplicated { .. } => true,
            StoreError::Protocol(_) | StoreError::Refused(_) | StoreError::Full(_) => false,
        }
    }

    /// A short name of the kind, for metric labels.
    pub fn kind(&self) -> &'static str {
        match self {
            StoreError::Timeout(_) => "timeout",
            StoreError::Unavailable(_) => "unavailable",
            StoreError::Protocol(_) => "protocol",
            StoreError::Refused(_) => "refused",
            StoreError::Full(_) => "full",
            StoreError::NotReplicated { .. } => "not_replicated",
        }
    }
}

/// Which backend a store is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    /// Embedded, process-local.
    Memory,
    /// Redis.
    Redis,
}

impl StoreKind {
    /// Lower-case name for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            StoreKind::Memory => "memory",
            StoreKind::Redis => "redis",
        }
    }
}

/// The configured backend, shared by every domain's store.
#[derive(Clone)]
pub enum Backend {
    /// Embedded in-memory backend.
    Memory(MemoryBackend),
    /// Redis.
    Redis(RedisBackend),
}

impl Backend {
    /// The backend `config` asks for: Redis when one is configured (`redis.url`, or
    /// `redis.mode` cluster or sentinel), the memory backend otherwise. Connects lazily (an
    /// unreachable Redis shows in health, not here).
    pub fn open(config: &Config) -> Result<Self, StoreError> {
        Ok(match config.redis.is_configured() {
            true => Backend::Redis(RedisBackend::new(&config.redis)?),
            false => Backend::Memory(
                MemoryBackend::new(
                    &config.redis.key_prefix,
                    config.memory.sweep_interval.get(),
                    config.memory.max_bytes.get(),
                )
                .with_quotas(config.quota.clone()),
            ),
        })
    }

    /// Which backend this is.
    pub fn kind(&self) -> StoreKind {
        match self {
            Backend::Memory(_) => StoreKind::Memory,
            Backend::Redis(_) => StoreKind::Redis,
        }
    }

    /// Checks the store answers (used by the health task).
    pub async fn ping(&self) -> Result<(), StoreError> {
        match self {
            Backend::Memory(_) => Ok(()),
            Backend::Redis(r) => r.ping().await,
        }
    }
}
