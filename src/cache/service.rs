//! The cache: namespace policies, validation, leases and hit/miss accounting, over a store.
//!
//! TTLs leave here as durations: the store starts them on its own clock.

use std::sync::{Arc, atomic::Ordering};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use rand::RngCore;

use super::{
    config::{CacheConfig, NamespacePolicy},
    model::{Freshness, Lease, Lookup, SetInput, Write},
    stats::{CacheStats, NamespaceStats},
    store::{CacheStore, CacheStoreSettings},
};
use crate::events::{Events, service::CACHE_TOPIC};
use crate::{
    error::{Error, Violation},
    tenant::Tenant,
    time::duration_ms,
};

/// Cache operations over a store.
#[derive(Clone)]
pub struct Caches {
    store: Arc<dyn CacheStore>,
    config: Arc<CacheConfig>,
    stats: Arc<CacheStats>,
    /// Where invalidations are announced (`flowstate.cache`), when events are on.
    events: Option<Events>,
}

impl Caches {
    /// The cache over `store` with `config`.
    pub fn new(store: Arc<dyn CacheStore>, config: CacheConfig) -> Self {
        let stats = Arc::new(CacheStats::default());
        for name in config.namespaces.keys() {
            stats.for_namespace(name, true);
        }
        Self {
            store,
            config: Arc::new(config),
            stats,
            events: None,
        }
    }

    /// The hit/miss counters.
    pub fn stats(&self) -> Arc<CacheStats> {
        self.stats.clone()
    }

    /// Entries the store evicted for space, by namespace.
    pub fn evictions(&self) -> Vec<(String, u64)> {
        self.store.evictions()
    }

    /// Entries and bytes of this replica's near tier, if it has one.
    pub fn near_size(&self) -> Option<(u64, u64)> {
        self.store.near_size()
    }

    /// Publishes the figures kept in memory (hit/miss/stale, leases, sets and evictions per
    /// namespace; the near tier's size) as metrics: the metrics collector's hook.
    pub fn publish_metrics(&self) {
        for (namespace, [hits, misses, stale, leases, sets]) in self.stats.snapshot() {
            for (result, value) in [("hit", hits), ("miss", misses), ("stale", stale)] {
                metrics::counter!(
                    "flowstate_cache_requests_total",
                    "namespace" => namespace.clone(),
                    "result" => result
                )
                .absolute(value);
            }
            metrics::counter!("flowstate_cache_leases_total", "namespace" => namespace.clone())
                .absolute(leases);
            metrics::counter!("flowstate_cache_sets_total", "namespace" => namespace)
                .absolute(sets);
        }
        if let Some((entries, bytes)) = self.near_size() {
            metrics::gauge!("flowstate_cache_near_entries").set(entries as f64);
            metrics::gauge!("flowstate_cache_near_bytes").set(bytes as f64);
        }
        for (namespace, evicted) in self.evictions() {
            metrics::counter!("flowstate_cache_evictions_total", "namespace" => namespace)
                .absolute(evicted);
        }
    }

    fn namespace(&self, name: &str) -> Result<(&NamespacePolicy, Arc<NamespaceStats>), Error> {
        if !crate::tenant::is_key_safe_name(name) {
            return Err(Error::invalid(
                "namespace",
                "1-64 characters of A-Z a-z 0-9 _ . -",
            ));
        }
        match self.config.namespaces.get(name) {
            Some(policy) => Ok((policy, self.stats.for_namespace(name, true))),
            None if self.config.allow_unknown_namespaces => Ok((
                &self.config.default_policy,
                self.stats.for_namespace(name, false),
            )),
            // The caller's string is not echoed (as for limit names): the field says which.
            None => Err(Error::NotFound(
                "the cache namespace in `namespace` (cache.allow_unknown_namespaces is off)".into(),
            )),
        }
    }

    fn check_key(&self, field: &str, key: &str) -> Result<(), Error> {
        if key.is_empty() {
            return Err(Error::invalid(field, "must not be empty"));
        }
        if key.len() > self.config.max_key_bytes {
            return Err(Error::invalid(
                field,
                format!("longer than {} bytes", self.config.max_key_bytes),
            ));
        }
        Ok(())
    }

    fn check_batch(&self, field: &str, len: usize) -> Result<(), Error> {
        if len == 0 || len > self.config.max_batch {
            return Err(Error::invalid(
                field,
                format!("give between 1 and {} items", self.config.max_batch),
            ));
        }
        Ok(())
    }

    fn check_tags(&self, field: &str, tags: &[String]) -> Result<(), Error> {
        if tags.len() > self.config.max_tags {
            return Err(Error::invalid(
                field,
                format!("more than {} tags", self.config.max_tags),
            ));
        }
        // The message names the tag by position: request content is never echoed.
        if let Some(i) = tags
            .iter()
            .position(|t| t.is_empty() || t.len() > self.config.max_tag_bytes)
        {
            return Err(Error::invalid(
                format!("{field}[{i}]"),
                format!("a tag is 1 to {} bytes", self.config.max_tag_bytes),
            ));
        }
        Ok(())
    }

    fn count(stats: &NamespaceStats, lookup: &Lookup) {
        let counter = match lookup.freshness {
            Freshness::Fresh => &stats.hits,
            Freshness::Stale => &stats.stale,
            Freshness::Miss => &stats.misses,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if matches!(lookup.lease, Lease::Granted(_)) {
            stats.leases.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Reads a key; with `lease`, a miss or stale hit grants one caller a lease.
    pub async fn get(
        &self,
        tenant: &Tenant,
        namespace: &str,
        key: &str,
        lease: bool,
    ) -> Result<Lookup, Error> {
        let (_, stats) = self.namespace(namespace)?;
        self.check_key("key", key)?;
        let token = lease.then(new_lease_token);
        let lookup = self
            .store
            .get(tenant, namespace, key, token.as_deref())
            .await?;
        Self::count(&stats, &lookup);
        Ok(lookup)
    }

    /// Reads several keys, in request order.
    pub async fn get_many(
        &self,
        tenant: &Tenant,
        namespace: &str,
        keys: &[String],
    ) -> Result<Vec<Lookup>, Error> {
        let (_, stats) = self.namespace(namespace)?;
        self.check_batch("keys", keys.len())?;
        for (i, key) in keys.iter().enumerate() {
            self.check_key(&format!("keys[{i}]"), key)?;
        }
        let lookups = self.store.get_many(tenant, namespace, keys).await?;
        for l in &lookups {
            Self::count(&stats, l);
        }
        Ok(lookups)
    }

    /// Writes entries; `stored` per entry.
    pub async fn set(
        &self,
        tenant: &Tenant,
        namespace: &str,
        inputs: Vec<SetInput>,
        batch: bool,
    ) -> Result<Vec<bool>, Error> {
        let (policy, stats) = self.namespace(namespace)?;
        if batch {
            self.check_batch("entries", inputs.len())?;
        }
        let max_ttl = duration_ms(self.config.max_ttl);
        let stale = duration_ms(policy.stale);
        let mut writes = Vec::with_capacity(inputs.len());
        for (i, input) in inputs.into_iter().enumerate() {
            let field = |name: &str| {
                if batch {
                    format!("entries[{i}].{name}")
                } else {
                    name.to_owned()
                }
            };
            self.check_key(&field("key"), &input.key)?;
            if input.value.len() > policy.max_value_bytes {
                return Err(Error::InvalidArgument(vec![Violation::new(
                    field("value"),
                    format!(
                        "{} bytes, more than the namespace's limit of {}",
                        input.value.len(),
                        policy.max_value_bytes
                    ),
                )]));
            }
            let ttl = input.ttl_ms.unwrap_or_else(|| duration_ms(policy.ttl));
            if ttl <= 0 || ttl > max_ttl {
                return Err(Error::invalid(
                    field("ttl"),
                    format!("must be between 1 ms and cache.max_ttl ({max_ttl} ms)"),
                ));
            }
            self.check_tags(&field("tags"), &input.tags)?;
            let mut tags = input.tags;
            tags.sort_unstable();
            tags.dedup();
            writes.push(Write {
                key: input.key,
                value: input.value,
                ttl_ms: ttl,
                stale_ms: stale,
                tags,
                condition: input.condition,
                lease_token: input.lease_token.filter(|t| !t.is_empty()),
            });
        }
        let stored = self.store.set(tenant, namespace, &writes).await?;
        let n = stored.iter().filter(|s| **s).count() as u64;
        stats.sets.fetch_add(n, Ordering::Relaxed);
        Ok(stored)
    }

    /// Deletes keys (and their leases); how many existed.
    pub async fn delete(
        &self,
        tenant: &Tenant,
        namespace: &str,
        keys: &[String],
    ) -> Result<u64, Error> {
        self.namespace(namespace)?;
        self.check_batch("keys", keys.len())?;
        for (i, key) in keys.iter().enumerate() {
            self.check_key(&format!("keys[{i}]"), key)?;
        }
        Ok(self.store.delete(tenant, namespace, keys).await?)
    }

    /// Deletes every key carrying any of `tags`; how many were deleted.
    pub async fn invalidate_tags(
        &self,
        tenant: &Tenant,
        namespace: &str,
        tags: &[String],
    ) -> Result<u64, Error> {
        self.namespace(namespace)?;
        if tags.is_empty() {
            return Err(Error::invalid("tags", "name at least one tag"));
        }
        self.check_tags("tags", tags)?;
        let deleted = self.store.invalidate_tags(tenant, namespace, tags).await?;
        self.announce(
            tenant,
            serde_json::json!({
                "type": "cache.tags_invalidated",
                "namespace": namespace,
                "tags": tags,
            }),
        )
        .await;
        Ok(deleted)
    }

    /// Invalidates the whole namespace in O(1).
    pub async fn invalidate_namespace(
        &self,
        tenant: &Tenant,
        namespace: &str,
    ) -> Result<(), Error> {
        self.namespace(namespace)?;
        self.store.invalidate_namespace(tenant, namespace).await?;
        self.announce(
            tenant,
            serde_json::json!({
                "type": "cache.namespace_invalidated",
                "namespace": namespace,
            }),
        )
        .await;
        Ok(())
    }

    /// The same cache, announcing invalidations (tags, namespaces) on `flowstate.cache`.
    pub fn with_events(mut self, events: Events) -> Self {
        self.events = Some(events);
        self
    }

    async fn announce(&self, tenant: &Tenant, event: serde_json::Value) {
        if let Some(events) = &self.events {
            events
                .publish_own(tenant, CACHE_TOPIC, event.to_string())
                .await;
        }
    }
}

/// What a cache store must keep, and for how long, under `config`.
pub fn store_settings(config: &CacheConfig) -> CacheStoreSettings {
    let longest_stale = config
        .namespaces
        .values()
        .map(|p| p.stale)
        .chain(std::iter::once(config.default_policy.stale))
        .max()
        .unwrap_or_default();
    // A generation must outlive every entry written under it (refreshed on every write).
    let generation_keep_ms = duration_ms(config.max_ttl)
        .saturating_add(duration_ms(longest_stale))
        .saturating_add(duration_ms(config.lease_ttl))
        .saturating_mul(2);
    CacheStoreSettings {
        lease_ttl_ms: duration_ms(config.lease_ttl),
        generation_keep_ms,
    }
}

/// A lease token: 128 random bits, URL-safe.
fn new_lease_token() -> String {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;

    use super::*;
    use crate::cache::{model::Condition, stats::MAX_TRACKED_UNKNOWN};
    use crate::{cache::memory::MemoryCacheStore, store::memory::MemoryBackend};

    #[tokio::test]
    async fn hits_misses_and_stale_reads_are_counted_per_namespace() {
        let backend = MemoryBackend::new("t", Duration::from_secs(60), 1 << 20);
        let mut config = CacheConfig::default();
        config.namespaces.insert(
            "known".into(),
            NamespacePolicy {
                ttl: Duration::from_millis(100),
                stale: Duration::from_secs(60),
                max_value_bytes: 100,
                near: false,
            },
        );
        let store = Arc::new(MemoryCacheStore::new(
            &backend,
            1 << 20,
            store_settings(&config),
        ));
        let caches = Caches::new(store, config);
        let t = Tenant::default_tenant();
        let set = |key: &str| SetInput {
            key: key.into(),
            value: Bytes::from_static(b"v"),
            ttl_ms: None,
            tags: vec![],
            condition: Condition::Always,
            lease_token: None,
        };
        caches.get(&t, "known", "a", false).await.expect("miss");
        caches
            .set(&t, "known", vec![set("a")], false)
            .await
            .expect("set");
        caches
            .get(&t, "known", "a", false)
            .await
            .expect("fresh hit");
        // Past the 100 ms TTL, inside the stale window.
        backend.clock().advance(200);
        let stale = caches.get(&t, "known", "a", true).await.expect("stale hit");
        assert_eq!(stale.freshness, Freshness::Stale);
        assert!(matches!(stale.lease, Lease::Granted(_)));
        let snapshot = caches.stats().snapshot();
        assert_eq!(snapshot, vec![("known".to_owned(), [1, 1, 1, 1, 1])]);

        for i in 0..(MAX_TRACKED_UNKNOWN + 10) {
            caches
                .get(&t, &format!("ns{i}"), "k", false)
                .await
                .expect("miss");
        }
        let snapshot = caches.stats().snapshot();
        assert!(
            snapshot.len() <= MAX_TRACKED_UNKNOWN + 2,
            "cardinality is bounded"
        );
        let other = snapshot
            .iter()
            .find(|(n, _)| n == "_other")
            .expect("_other");
        assert_eq!(other.1[1], 10);
    }
}
