//! The rate-limit store contract: every counter of a request decided, and consumed only if the
//! request is admitted ([`super::model::admits`]), in one atomic step (one Lua script on Redis, one critical section in memory). Both
//! implementations run the same contract suite and decide identically (`tests/ratelimit_*`).

use super::{
    algorithm::Decision,
    model::{Counter, CounterId},
};
use crate::{store::StoreError, tenant::Tenant};

/// What a rate-limit store does.
#[tonic::async_trait]
pub trait RateLimitStore: Send + Sync + 'static {
    /// Decides every counter for its cost at the store's now; when the request is admitted
    /// ([`super::model::admits`]) and `commit`, every counter that allows consumes its cost in
    /// the same atomic step. Denied requests consume nothing.
    async fn check(
        &self,
        tenant: &Tenant,
        counters: &[Counter],
        commit: bool,
    ) -> Result<Vec<Decision>, StoreError>;

    /// Deletes a counter.
    async fn reset(&self, tenant: &Tenant, id: &CounterId) -> Result<(), StoreError>;
}
