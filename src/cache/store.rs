//! The cache store contract. Each write is atomic per entry (one script on Redis, one compute
//! in memory); both implementations run the same contract suite (`tests/it/cache_contract.rs`).
//!
//! No operation takes a time: TTLs are durations the store starts on its own clock, and
//! freshness is decided by that clock, so replicas whose clocks disagree agree on every entry.
//!
//! Guarantees every implementation keeps:
//! - a value written with tags is listed under each of them before it can be read, at every
//!   failure point: an entry is either listed or gone, never served and unlisted;
//! - a Set with a lease token is refused unless the lease is alive, is its own, and none of the
//!   tags it writes was invalidated at or after the lease was granted;
//! - a namespace whose generation is lost (evicted, flushed) serves misses, never older entries.

use super::model::{Lookup, Write};
use crate::{store::StoreError, tenant::Tenant, time::Millis};

/// How long the store keeps its bookkeeping, from configuration.
#[derive(Debug, Clone, Copy)]
pub struct CacheStoreSettings {
    /// Lease TTL (`cache.lease_ttl`) in ms.
    pub lease_ttl_ms: Millis,
    /// How long a namespace generation lives after its last write, in ms: longer than any
    /// entry of it can live.
    pub generation_keep_ms: Millis,
}

/// What a cache store does.
#[tonic::async_trait]
pub trait CacheStore: Send + Sync + 'static {
    /// Looks a key up; with `lease_token`, a miss or stale hit grants it the key's lease when no
    /// other caller holds it.
    async fn get(
        &self,
        tenant: &Tenant,
        namespace: &str,
        key: &str,
        lease_token: Option<&str>,
    ) -> Result<Lookup, StoreError>;

    /// Looks several keys up, in order.
    async fn get_many(
        &self,
        tenant: &Tenant,
        namespace: &str,
        keys: &[String],
    ) -> Result<Vec<Lookup>, StoreError>;

    /// Writes entries (each atomically, with its condition and lease check); `stored` per write.
    async fn set(
        &self,
        tenant: &Tenant,
        namespace: &str,
        writes: &[Write],
    ) -> Result<Vec<bool>, StoreError>;

    /// Deletes keys and their leases; how many held a value.
    async fn delete(
        &self,
        tenant: &Tenant,
        namespace: &str,
        keys: &[String],
    ) -> Result<u64, StoreError>;

    /// Deletes every key carrying any of the tags, and refuses leased Sets of values carrying
    /// them whose lease predates this call; how many keys held a value. Safe to repeat: a call
    /// that failed half-way leaves every entry findable by the next.
    async fn invalidate_tags(
        &self,
        tenant: &Tenant,
        namespace: &str,
        tags: &[String],
    ) -> Result<u64, StoreError>;

    /// Starts a new generation of the namespace: no older entry is ever served again.
    async fn invalidate_namespace(
        &self,
        tenant: &Tenant,
        namespace: &str,
    ) -> Result<(), StoreError>;

    /// Entries evicted for space so far, by namespace (stores that never evict: none).
    fn evictions(&self) -> Vec<(String, u64)> {
        Vec::new()
    }

    /// Entries and bytes of this replica's near tier, if it has one.
    fn near_size(&self) -> Option<(u64, u64)> {
        None
    }
}
