//! The cache store contract. Each write is atomic per entry (one script on Redis, one compute
//! in memory); both implementations run the same contract suite (`tests/cache_contract.rs`).

use super::model::{Lookup, Write};
use crate::{store::StoreError, tenant::Tenant, time::Millis};

/// What a cache store does.
#[tonic::async_trait]
pub trait CacheStore: Send + Sync + 'static {
    /// Looks a key up; `lease` = (token to grant, lease TTL ms) when the caller wants one.
    async fn get(
        &self,
        tenant: &Tenant,
        namespace: &str,
        key: &str,
        now: Millis,
        lease: Option<(&str, Millis)>,
    ) -> Result<Lookup, StoreError>;

    /// Looks several keys up, in order.
    async fn get_many(
        &self,
        tenant: &Tenant,
        namespace: &str,
        keys: &[String],
        now: Millis,
    ) -> Result<Vec<Lookup>, StoreError>;

    /// Writes entries (each atomically, with its condition and lease check).
    async fn set(
        &self,
        tenant: &Tenant,
        namespace: &str,
        writes: &[Write],
        now: Millis,
    ) -> Result<Vec<bool>, StoreError>;

    /// Deletes keys and their leases; how many held a value.
    async fn delete(
        &self,
        tenant: &Tenant,
        namespace: &str,
        keys: &[String],
    ) -> Result<u64, StoreError>;

    /// Deletes every key carrying any of the tags; how many held a value.
    async fn invalidate_tags(
        &self,
        tenant: &Tenant,
        namespace: &str,
        tags: &[String],
    ) -> Result<u64, StoreError>;

    /// Starts a new generation of the namespace; `keep_ms` bounds how long the counter lives.
    async fn invalidate_namespace(
        &self,
        tenant: &Tenant,
        namespace: &str,
        keep_ms: Millis,
    ) -> Result<(), StoreError>;

    /// Entries evicted for space so far, by namespace (stores that never evict: none).
    fn evictions(&self) -> Vec<(String, u64)> {
        Vec::new()
    }
}
