//! The rate-limit store contract: every counter of a request decided, and consumed only if all
//! allow, in one atomic step (one Lua script on Redis, one critical section in memory). Both
//! implementations run the same contract suite and decide identically (`tests/ratelimit_*`).

use super::{
    algorithm::Decision,
    model::{Counter, CounterId},
};
use crate::{store::StoreError, tenant::Tenant};

/// What a rate-limit store does.
#[tonic::async_trait]
pub trait RateLimitStore: Send + Sync + 'static {
    /// Decides every counter for `cost` at the store's now; when all allow and `commit`,
    /// consumes from all in the same atomic step. Denied requests consume nothing.
    async fn check(
        &self,
        tenant: &Tenant,
        counters: &[Counter],
        cost: u64,
        commit: bool,
    ) -> Result<Vec<Decision>, StoreError>;

    /// Deletes a counter.
    async fn reset(&self, tenant: &Tenant, id: &CounterId) -> Result<(), StoreError>;
}
