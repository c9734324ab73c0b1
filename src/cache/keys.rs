//! Cache key formats.
//!
//! A namespace's keys are spread over [`GENERATION_BUCKETS`] buckets (by a hash of the cache
//! key), and each bucket is one Redis Cluster hash tag, `{tenant/namespace/bucket}`:
//! - `{prefix}:{tenant}:cg:{T}` is the bucket's generation (Redis; the memory store keeps one
//!   per namespace, `…:cg:{namespace}`);
//! - `{prefix}:{tenant}:c:{T}:{generation}:{KEY}` is an entry (a hash) and `…:cl:{T}:…` (same
//!   suffix, same slot) its lease;
//! - `…:ct:{namespace}:{TAG}` is a tag's index and `…:ci:{namespace}:{TAG}` (same slot) the time
//!   the tag was last invalidated.
//!
//! Why buckets: every cache call reads its generation, so one generation per namespace would
//! be one hot key, on one shard, for all of a namespace's traffic. One generation per bucket,
//! in the bucket's own slot, spreads a namespace over 64 slots (so over every shard of any
//! realistic cluster) and lets a call read its generation and its entry in one slot, in one
//! round trip. The price is paid by InvalidateNamespace, which starts a new generation in each
//! of the 64 buckets (64 small scripts, one round trip per node). The count is fixed: it is part
//! of the key scheme, and replicas that disagreed on it would not see each other's invalidations.

use crate::{store::keys::Keys, tenant::Tenant};

/// Buckets per cache namespace (see the module docs).
pub const GENERATION_BUCKETS: u16 = 64;

/// The bucket of a cache key: CRC16 of the key, modulo [`GENERATION_BUCKETS`]. Stable across
/// versions and replicas (it is part of every key).
pub fn bucket(key: &str) -> u16 {
    crate::store::keys::crc16(key.as_bytes()) % GENERATION_BUCKETS
}

impl Keys {
    /// A cache namespace's generation in the memory store (one per namespace).
    pub fn cache_generation(&self, tenant: &Tenant, namespace: &str) -> String {
        let mut k = self.scope(tenant, "cg");
        k.push('{');
        k.push_str(namespace);
        k.push('}');
        k
    }

    /// A bucket's generation counter in Redis (InvalidateNamespace starts a new one in every
    /// bucket).
    pub fn cache_bucket_generation(&self, tenant: &Tenant, namespace: &str, bucket: u16) -> String {
        let mut k = self.scope(tenant, "cg");
        push_bucket_tag(&mut k, tenant, namespace, bucket);
        k
    }

    /// A cache entry (a hash) in a generation of its bucket.
    pub fn cache_entry(
        &self,
        tenant: &Tenant,
        namespace: &str,
        generation: u64,
        key: &str,
    ) -> String {
        self.bucket_key("c", tenant, namespace, generation, key)
    }

    /// The lease of a cache entry (same hash tag as the entry).
    pub fn cache_lease(
        &self,
        tenant: &Tenant,
        namespace: &str,
        generation: u64,
        key: &str,
    ) -> String {
        self.bucket_key("cl", tenant, namespace, generation, key)
    }

    fn bucket_key(
        &self,
        kind: &str,
        tenant: &Tenant,
        namespace: &str,
        generation: u64,
        key: &str,
    ) -> String {
        let mut k = self.scope(tenant, kind);
        push_bucket_tag(&mut k, tenant, namespace, bucket(key));
        k.push(':');
        k.push_str(&generation.to_string());
        k.push(':');
        k.push_str(key);
        k
    }

    /// The lease key of the entry key `entry` (as listed in a tag index); `None` for a key
    /// that is not one of this tenant's cache entries.
    pub fn cache_lease_of(&self, tenant: &Tenant, entry: &[u8]) -> Option<Vec<u8>> {
        let scope = self.scope(tenant, "c");
        let rest = entry.strip_prefix(scope.as_bytes())?;
        let mut k = self.scope(tenant, "cl").into_bytes();
        k.extend_from_slice(rest);
        Some(k)
    }

    /// The bucket generation key and the generation of the entry key `entry` of `namespace`
    /// (as listed in a tag index); `None` for a key that is not one of its entries.
    pub fn cache_entry_generation(
        &self,
        tenant: &Tenant,
        namespace: &str,
        entry: &[u8],
    ) -> Option<(String, u64)> {
        let scope = self.scope(tenant, "c");
        let rest = entry.strip_prefix(scope.as_bytes())?.strip_prefix(b"{")?;
        let close = rest.iter().position(|b| *b == b'}')?;
        let tag = std::str::from_utf8(&rest[..close]).ok()?;
        let (owner, bucket) = tag.rsplit_once('/')?;
        if owner.strip_prefix(tenant.as_str())?.strip_prefix('/')? != namespace {
            return None;
        }
        let bucket: u16 = bucket.parse().ok()?;
        let rest = rest[close + 1..].strip_prefix(b":")?;
        let end = rest.iter().position(|b| *b == b':')?;
        let generation = std::str::from_utf8(&rest[..end]).ok()?.parse().ok()?;
        Some((
            self.cache_bucket_generation(tenant, namespace, bucket),
            generation,
        ))
    }

    /// A cache tag's index: a sorted set of entry keys scored by when each stops mattering.
    pub fn cache_tag(&self, tenant: &Tenant, namespace: &str, tag: &str) -> String {
        self.tag_key(tenant, "ct", namespace, tag)
    }

    /// When a cache tag was last invalidated (same hash tag as its index).
    pub fn cache_tag_mark(&self, tenant: &Tenant, namespace: &str, tag: &str) -> String {
        self.tag_key(tenant, "ci", namespace, tag)
    }

    fn tag_key(&self, tenant: &Tenant, kind: &str, namespace: &str, tag: &str) -> String {
        let mut k = self.scope(tenant, kind);
        k.push_str(namespace);
        k.push_str(":{");
        k.push_str(tag);
        k.push('}');
        k
    }
}

/// `{tenant/namespace/bucket}`: the hash tag of a bucket (names cannot hold `/` or braces).
fn push_bucket_tag(k: &mut String, tenant: &Tenant, namespace: &str, bucket: u16) {
    k.push('{');
    k.push_str(tenant.as_str());
    k.push('/');
    k.push_str(namespace);
    k.push('/');
    k.push_str(&bucket.to_string());
    k.push('}');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::keys::slot;

    #[test]
    fn what_one_script_touches_shares_a_slot() {
        let keys = Keys::new("fs");
        let t = Tenant::default_tenant();
        let entry = keys.cache_entry(&t, "ns", 7, "user:42");
        let lease = keys.cache_lease(&t, "ns", 7, "user:42");
        let generation = keys.cache_bucket_generation(&t, "ns", bucket("user:42"));
        assert_eq!(slot(entry.as_bytes()), slot(lease.as_bytes()));
        assert_eq!(slot(entry.as_bytes()), slot(generation.as_bytes()));
        assert_eq!(
            keys.cache_lease_of(&t, entry.as_bytes()).as_deref(),
            Some(lease.as_bytes())
        );
        assert_eq!(keys.cache_lease_of(&t, b"other:key"), None);
        assert_eq!(
            keys.cache_entry_generation(&t, "ns", entry.as_bytes()),
            Some((generation, 7))
        );
        assert_eq!(keys.cache_entry_generation(&t, "n", entry.as_bytes()), None);
        // A cache key holding braces, colons and slashes does not change the tag.
        let odd = keys.cache_entry(&t, "ns", 9, "a}{b:/c");
        assert_eq!(
            keys.cache_entry_generation(&t, "ns", odd.as_bytes())
                .map(|(_, g)| g),
            Some(9)
        );
        let index = keys.cache_tag(&t, "ns", "team:7");
        let mark = keys.cache_tag_mark(&t, "ns", "team:7");
        assert_eq!(slot(index.as_bytes()), slot(mark.as_bytes()));
    }

    #[test]
    fn a_namespace_spreads_over_its_buckets_and_every_shard() {
        let keys = Keys::new("fs");
        let t = Tenant::default_tenant();
        let buckets: std::collections::HashSet<u16> =
            (0..10_000).map(|i| bucket(&format!("user:{i}"))).collect();
        assert_eq!(buckets.len(), usize::from(GENERATION_BUCKETS));
        // Three shards of a default `redis-cli --cluster create` hold slots 0-5460, 5461-10922,
        // 10923-16383: each gets a fair share of one namespace's buckets.
        let mut shards = [0u32; 3];
        for b in 0..GENERATION_BUCKETS {
            let s = slot(
                keys.cache_bucket_generation(&t, "user_profile", b)
                    .as_bytes(),
            );
            shards[usize::from(s / 5461).min(2)] += 1;
        }
        assert!(shards.iter().all(|n| *n >= 10), "{shards:?}");
    }
}
