//! The session store contract. Each operation is one atomic step in the store: one Lua script
//! (one round trip) on Redis, one critical section in memory. Both implementations run the same
//! contract suite (`tests/it/session_contract.rs`).
//!
//! No operation takes a time: every timestamp and expiry is decided by the store's own clock,
//! so replicas whose clocks disagree still agree on when a session dies.

use super::{
    id::{SessionKey, UserTag},
    model::{DataLimits, NewSession, SessionRecord, SessionUpdate, UpdateOutcome},
};
use crate::{store::StoreError, tenant::Tenant};

/// What a session store does.
#[tonic::async_trait]
pub trait SessionStore: Send + Sync + 'static {
    /// Stores a new session (created now, by the store's clock) and indexes it under its user,
    /// evicting the user's oldest sessions beyond `max_per_user` (never the new one) and pruning
    /// dead index entries. Returns the session as stored and how many were evicted.
    async fn create(
        &self,
        tenant: &Tenant,
        key: &SessionKey,
        new: NewSession,
        max_per_user: u32,
    ) -> Result<(SessionRecord, u32), StoreError>;

    /// Reads a live session; with `touch`, slides its expiry first.
    async fn get(
        &self,
        tenant: &Tenant,
        key: &SessionKey,
        touch: bool,
    ) -> Result<Option<SessionRecord>, StoreError>;

    /// Applies a field-level update atomically (see [`SessionRecord::apply`]).
    async fn update(
        &self,
        tenant: &Tenant,
        key: &SessionKey,
        update: &SessionUpdate,
        limits: DataLimits,
    ) -> Result<UpdateOutcome, StoreError>;

    /// Moves a live session from `old` to `new` in one step; `None` when `old` is not live.
    async fn rotate(
        &self,
        tenant: &Tenant,
        old: &SessionKey,
        new: &SessionKey,
    ) -> Result<Option<SessionRecord>, StoreError>;

    /// Deletes a session and its index entry; the user id of the live session deleted (`None`
    /// when it was already gone).
    async fn delete(&self, tenant: &Tenant, key: &SessionKey)
    -> Result<Option<String>, StoreError>;

    /// The user's live sessions (any order), pruning dead index entries. Without their data:
    /// a listing shows handles, timestamps and metadata only (data only through the id).
    async fn list(
        &self,
        tenant: &Tenant,
        tag: UserTag,
        user_id: &str,
    ) -> Result<Vec<(SessionKey, SessionRecord)>, StoreError>;

    /// Deletes the user's sessions except `keep`; how many live ones were deleted.
    async fn delete_user(
        &self,
        tenant: &Tenant,
        tag: UserTag,
        user_id: &str,
        keep: Option<&SessionKey>,
    ) -> Result<u64, StoreError>;
}
