//! The store contract and its two implementations.
//!
//! [`Store`] is an enum rather than a trait object: two backends, static dispatch, no boxing of
//! futures on the hot path. Both implement the same operations with the same semantics and run
//! the same contract suite (`tests/session_contract.rs`).
//!
//! Each operation is one atomic step in the store: one Lua script (one round trip) on Redis,
//! one critical section in memory.

pub mod keys;
pub mod memory;
mod memory_cache;
pub mod redis;

use std::time::Duration;

use crate::{
    cache::{Lookup, Write},
    ratelimit::{Counter, CounterId, Decision},
    session::{DataLimits, SessionKey, SessionRecord, SessionUpdate, UpdateOutcome, UserTag},
    tenant::Tenant,
    time::Millis,
};

pub use self::{memory::MemoryStore, redis::RedisStore};

/// A store failure. Never carries request data, so it is safe to log.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The call did not finish within `redis.command_timeout`.
    #[error("store call timed out after {0:?}")]
    Timeout(Duration),
    /// The store could not be reached or dropped the connection.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The store answered something this version does not understand (a bug or a foreign key).
    #[error("unexpected store reply: {0}")]
    Protocol(String),
}

impl StoreError {
    /// Whether the same call may succeed if tried again (timeouts and dropped connections).
    /// Only idempotent operations are ever retried.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Timeout(_) | StoreError::Unavailable(_) => true,
            StoreError::Protocol(_) => false,
        }
    }
}

/// Which backend a [`Store`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    /// Embedded, process-local.
    Memory,
    /// Redis.
    Redis,
}

impl StoreKind {
    /// Lower-case name for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            StoreKind::Memory => "memory",
            StoreKind::Redis => "redis",
        }
    }
}

/// The configured store.
#[derive(Clone)]
pub enum Store {
    /// Embedded in-memory store.
    Memory(MemoryStore),
    /// Redis.
    Redis(RedisStore),
}

macro_rules! dispatch {
    ($self:ident . $method:ident ( $($arg:expr),* )) => {
        match $self {
            Store::Memory(s) => s.$method($($arg),*).await,
            Store::Redis(s) => s.$method($($arg),*).await,
        }
    };
}

impl Store {
    /// Which backend this is.
    pub fn kind(&self) -> StoreKind {
        match self {
            Store::Memory(_) => StoreKind::Memory,
            Store::Redis(_) => StoreKind::Redis,
        }
    }

    /// Checks the store answers (used by the health task).
    pub async fn ping(&self) -> Result<(), StoreError> {
        dispatch!(self.ping())
    }

    /// Stores a new session and indexes it under its user, evicting the user's oldest sessions
    /// beyond `max_per_user` and pruning dead index entries. Returns how many were evicted.
    pub async fn session_create(
        &self,
        tenant: &Tenant,
        key: &SessionKey,
        record: &SessionRecord,
        max_per_user: u32,
    ) -> Result<u32, StoreError> {
        dispatch!(self.session_create(tenant, key, record, max_per_user))
    }

    /// Reads a live session; with `touch`, slides its expiry first.
    pub async fn session_get(
        &self,
        tenant: &Tenant,
        key: &SessionKey,
        now: Millis,
        touch: bool,
    ) -> Result<Option<SessionRecord>, StoreError> {
        dispatch!(self.session_get(tenant, key, now, touch))
    }

    /// Applies a field-level update atomically (see [`SessionRecord::apply`]).
    pub async fn session_update(
        &self,
        tenant: &Tenant,
        key: &SessionKey,
        now: Millis,
        update: &SessionUpdate,
        limits: DataLimits,
    ) -> Result<UpdateOutcome, StoreError> {
        dispatch!(self.session_update(tenant, key, now, update, limits))
    }

    /// Moves a live session from `old` to `new` in one step; `None` when `old` is not live.
    pub async fn session_rotate(
        &self,
        tenant: &Tenant,
        old: &SessionKey,
        new: &SessionKey,
        now: Millis,
    ) -> Result<Option<SessionRecord>, StoreError> {
        dispatch!(self.session_rotate(tenant, old, new, now))
    }

    /// Deletes a session and its index entry; whether it existed.
    pub async fn session_delete(
        &self,
        tenant: &Tenant,
        key: &SessionKey,
        now: Millis,
    ) -> Result<bool, StoreError> {
        dispatch!(self.session_delete(tenant, key, now))
    }

    /// The user's live sessions (any order), pruning dead index entries.
    pub async fn session_list(
        &self,
        tenant: &Tenant,
        tag: UserTag,
        user_id: &str,
        now: Millis,
    ) -> Result<Vec<(SessionKey, SessionRecord)>, StoreError> {
        dispatch!(self.session_list(tenant, tag, user_id, now))
    }

    /// Deletes the user's sessions except `keep`; how many live ones were deleted.
    pub async fn session_delete_user(
        &self,
        tenant: &Tenant,
        tag: UserTag,
        user_id: &str,
        keep: Option<&SessionKey>,
        now: Millis,
    ) -> Result<u64, StoreError> {
        dispatch!(self.session_delete_user(tenant, tag, user_id, keep, now))
    }

    /// Decides every counter at `now` for `cost`; when all allow and `commit`, consumes from all
    /// in the same atomic step. Denied requests consume nothing.
    pub async fn ratelimit_check(
        &self,
        tenant: &Tenant,
        counters: &[Counter],
        now: Millis,
        cost: u64,
        commit: bool,
    ) -> Result<Vec<Decision>, StoreError> {
        dispatch!(self.ratelimit_check(tenant, counters, now, cost, commit))
    }

    /// Deletes a counter.
    pub async fn ratelimit_reset(&self, tenant: &Tenant, id: &CounterId) -> Result<(), StoreError> {
        dispatch!(self.ratelimit_reset(tenant, id))
    }

    /// Looks a cache key up; `lease` = (token to grant, lease TTL ms) when the caller wants one.
    pub async fn cache_get(
        &self,
        tenant: &Tenant,
        namespace: &str,
        key: &str,
        now: Millis,
        lease: Option<(&str, Millis)>,
    ) -> Result<Lookup, StoreError> {
        dispatch!(self.cache_get(tenant, namespace, key, now, lease))
    }

    /// Looks several cache keys up, in order.
    pub async fn cache_get_many(
        &self,
        tenant: &Tenant,
        namespace: &str,
        keys: &[String],
        now: Millis,
    ) -> Result<Vec<Lookup>, StoreError> {
        dispatch!(self.cache_get_many(tenant, namespace, keys, now))
    }

    /// Writes cache entries (each atomically, with its condition and lease check).
    pub async fn cache_set(
        &self,
        tenant: &Tenant,
        namespace: &str,
        writes: &[Write],
        now: Millis,
    ) -> Result<Vec<bool>, StoreError> {
        dispatch!(self.cache_set(tenant, namespace, writes, now))
    }

    /// Deletes cache keys and their leases; how many held a value.
    pub async fn cache_delete(
        &self,
        tenant: &Tenant,
        namespace: &str,
        keys: &[String],
    ) -> Result<u64, StoreError> {
        dispatch!(self.cache_delete(tenant, namespace, keys))
    }

    /// Deletes every cache key carrying any of the tags; how many held a value.
    pub async fn cache_invalidate_tags(
        &self,
        tenant: &Tenant,
        namespace: &str,
        tags: &[String],
    ) -> Result<u64, StoreError> {
        dispatch!(self.cache_invalidate_tags(tenant, namespace, tags))
    }

    /// Starts a new generation of the namespace; `keep_ms` bounds how long the counter lives.
    pub async fn cache_invalidate_namespace(
        &self,
        tenant: &Tenant,
        namespace: &str,
        keep_ms: Millis,
    ) -> Result<(), StoreError> {
        dispatch!(self.cache_invalidate_namespace(tenant, namespace, keep_ms))
    }
}
