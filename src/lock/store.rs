//! The lock store contract: each operation one atomic step on the store's clock (one script on
//! Redis, one critical section in memory). Both implementations run the same contract suite
//! (`tests/it/lock_contract.rs`).

use super::model::{AcquireArgs, Attempt, Grant, LockState};
use crate::{
    store::{StoreError, signal::Signal},
    tenant::Tenant,
};

/// What a lock store does.
#[tonic::async_trait]
pub trait LockStore: Send + Sync + 'static {
    /// One attempt: grants when fewer than `limit` hold the lock and no earlier waiter is in
    /// line for the free slots; otherwise queues the caller (with a ticket) and says when to try
    /// again. An attempt by a holder that already holds it (a resend) returns its grant.
    async fn acquire(&self, tenant: &Tenant, args: &AcquireArgs<'_>)
    -> Result<Attempt, StoreError>;

    /// A new TTL for a live holding; `None` when `holder_id` does not hold it (any more).
    async fn extend(
        &self,
        tenant: &Tenant,
        name: &str,
        holder_id: &str,
        ttl_ms: u64,
    ) -> Result<Option<Grant>, StoreError>;

    /// Ends a live holding and wakes the waiters; false when it was not held (any more).
    async fn release(
        &self,
        tenant: &Tenant,
        name: &str,
        holder_id: &str,
    ) -> Result<bool, StoreError>;

    /// Live holdings, waiters, last fencing token.
    async fn inspect(&self, tenant: &Tenant, name: &str) -> Result<LockState, StoreError>;

    /// Gives up a waiter's place in the queue.
    async fn leave(&self, tenant: &Tenant, name: &str, ticket: &str) -> Result<(), StoreError>;

    /// A signal fired when the lock is released, or a waiter's turn may have come.
    async fn signal(&self, tenant: &Tenant, name: &str) -> Signal;
}
