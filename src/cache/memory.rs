//! The in-memory cache store: a size-bounded moka cache (least recently used entries are
//! evicted past `cache.memory_max_bytes`), with per-key atomic compute for leases and conditions.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use bytes::Bytes;
use moka::{Expiry, notification::RemovalCause, ops::compute::Op, sync::Cache};

use super::{
    model::{Condition, Freshness, Lease, Lookup, Write},
    store::CacheStore,
};
use crate::{
    store::{StoreError, keys::Keys, memory::MemoryBackend},
    tenant::Tenant,
    time::{Millis, now_ms},
};

/// One cached key: a value (absent while only a lease exists) and an optional lease.
#[derive(Debug, Clone)]
struct Entry {
    value: Option<Bytes>,
    fresh_until: Millis,
    stale_until: Millis,
    lease: Option<(String, Millis)>,
    /// Tag-index keys this entry is listed under, so eviction can unlist it.
    tags: Arc<[String]>,
    namespace: Arc<str>,
}

impl Entry {
    fn expires_at(&self) -> Millis {
        self.stale_until
            .max(self.lease.as_ref().map_or(0, |(_, until)| *until))
    }

    fn fresh(&self, now: Millis) -> bool {
        self.value.is_some() && now < self.fresh_until
    }

    fn stale(&self, now: Millis) -> bool {
        self.value.is_some() && self.fresh_until <= now && now < self.stale_until
    }
}

/// Entries expire at their own deadline (end of stale window or lease), not a global TTL.
struct ByDeadline;

impl Expiry<String, Arc<Entry>> for ByDeadline {
    fn expire_after_create(&self, _: &String, v: &Arc<Entry>, _: Instant) -> Option<Duration> {
        Some(remaining(v))
    }

    fn expire_after_update(
        &self,
        _: &String,
        v: &Arc<Entry>,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(remaining(v))
    }
}

fn remaining(e: &Entry) -> Duration {
    Duration::from_millis(u64::try_from(e.expires_at() - now_ms()).unwrap_or(0))
}

#[derive(Default)]
struct Shared {
    /// Tag-index key → entry keys.
    tags: HashMap<String, HashSet<String>>,
    /// Namespace generation key → generation.
    generations: HashMap<String, u64>,
    /// Namespace → entries evicted for space.
    evictions: HashMap<Arc<str>, u64>,
}

/// The moka-backed entries, tag lists and generations.
struct MemoryCache {
    entries: Cache<String, Arc<Entry>>,
    shared: Arc<Mutex<Shared>>,
}

fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    // Every update to Shared is a single map operation; a poisoned lock holds consistent data.
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

impl MemoryCache {
    /// A cache holding at most `max_bytes` of keys and values.
    fn new(max_bytes: u64) -> Self {
        let shared = Arc::new(Mutex::new(Shared::default()));
        let listener_shared = Arc::downgrade(&shared);
        let entries = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|k: &String, v: &Arc<Entry>| {
                let bytes = k.len() + v.value.as_ref().map_or(0, Bytes::len) + 96;
                u32::try_from(bytes).unwrap_or(u32::MAX)
            })
            .expire_after(ByDeadline)
            .eviction_listener(move |key: Arc<String>, entry: Arc<Entry>, cause| {
                let Some(shared) = listener_shared.upgrade() else {
                    return;
                };
                let mut shared = lock(&shared);
                if cause != RemovalCause::Replaced {
                    for tag in entry.tags.iter() {
                        if let Some(keys) = shared.tags.get_mut(tag) {
                            keys.remove(key.as_str());
                            if keys.is_empty() {
                                shared.tags.remove(tag);
                            }
                        }
                    }
                }
                if cause == RemovalCause::Size {
                    *shared.evictions.entry(entry.namespace.clone()).or_default() += 1;
                }
            })
            .build();
        Self { entries, shared }
    }

    /// The current generation of a namespace.
    fn generation(&self, generation_key: &str) -> u64 {
        lock(&self.shared)
            .generations
            .get(generation_key)
            .copied()
            .unwrap_or(0)
    }

    /// Entries evicted for space, by namespace.
    fn evictions(&self) -> Vec<(String, u64)> {
        lock(&self.shared)
            .evictions
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect()
    }

    /// Looks a key up; with `lease`, grants it to this caller when free.
    fn get(&self, key: &str, now: Millis, lease: Option<(&str, Millis)>) -> Lookup {
        let mut out = Lookup::miss();
        self.entries.entry_by_ref(key).and_compute_with(|current| {
            let current = current.map(|e| e.into_value());
            if let Some(e) = &current {
                if e.fresh(now) {
                    out = Lookup {
                        freshness: Freshness::Fresh,
                        value: e.value.clone().unwrap_or_default(),
                        fresh_until: e.fresh_until,
                        lease: Lease::None,
                    };
                    return Op::Nop;
                }
                if e.stale(now) {
                    out.freshness = Freshness::Stale;
                    out.value = e.value.clone().unwrap_or_default();
                    out.fresh_until = e.fresh_until;
                }
            }
            let Some((token, ttl)) = lease else {
                return Op::Nop;
            };
            if let Some((_, until)) = current.as_ref().and_then(|e| e.lease.as_ref())
                && *until > now
            {
                out.lease = Lease::Wait;
                return Op::Nop;
            }
            out.lease = Lease::Granted(token.to_owned());
            let mut next = current.map_or_else(
                || Entry {
                    value: None,
                    fresh_until: 0,
                    stale_until: 0,
                    lease: None,
                    tags: Arc::from([]),
                    namespace: Arc::from(""),
                },
                |e| (*e).clone(),
            );
            next.lease = Some((token.to_owned(), now.saturating_add(ttl)));
            Op::Put(Arc::new(next))
        });
        out
    }

    /// Writes one entry under `key` (already including the generation); whether it was stored.
    fn set(
        &self,
        key: &str,
        namespace: &str,
        write: &Write,
        tag_keys: Vec<String>,
        now: Millis,
    ) -> bool {
        let mut stored = false;
        let mut old_tags: Arc<[String]> = Arc::from([]);
        let tag_keys: Arc<[String]> = tag_keys.into();
        self.entries.entry_by_ref(key).and_compute_with(|current| {
            let current = current.map(|e| e.into_value());
            if let Some(e) = &current {
                old_tags = e.tags.clone();
            }
            if let Some(token) = &write.lease_token {
                let holds = current
                    .as_ref()
                    .and_then(|e| e.lease.as_ref())
                    .is_some_and(|(t, until)| t == token && *until > now);
                if !holds {
                    return Op::Nop;
                }
            }
            let present = current.as_ref().is_some_and(|e| e.fresh(now));
            match write.condition {
                Condition::IfAbsent if present => return Op::Nop,
                Condition::IfPresent if !present => return Op::Nop,
                _ => {}
            }
            stored = true;
            Op::Put(Arc::new(Entry {
                value: Some(write.value.clone()),
                fresh_until: write.fresh_until,
                stale_until: write.stale_until,
                lease: None,
                tags: tag_keys.clone(),
                namespace: Arc::from(namespace),
            }))
        });
        if stored && !(tag_keys.is_empty() && old_tags.is_empty()) {
            let mut shared = lock(&self.shared);
            // The value replaced carried these tags; the new one is listed only under its own.
            for tag in old_tags.iter().filter(|t| !tag_keys.contains(t)) {
                if let Some(keys) = shared.tags.get_mut(tag) {
                    keys.remove(key);
                    if keys.is_empty() {
                        shared.tags.remove(tag);
                    }
                }
            }
            for tag in tag_keys.iter() {
                shared
                    .tags
                    .entry(tag.clone())
                    .or_default()
                    .insert(key.to_owned());
            }
        }
        stored
    }

    /// Removes a key; whether it held a value that was still servable.
    fn remove(&self, key: &str, now: Millis) -> bool {
        self.entries
            .remove(key)
            .is_some_and(|e| e.value.is_some() && now < e.stale_until)
    }

    /// Removes every key listed under the tag-index keys; how many held a servable value.
    fn invalidate_tags(&self, tag_keys: &[String], now: Millis) -> u64 {
        let keys: HashSet<String> = {
            let mut shared = lock(&self.shared);
            tag_keys
                .iter()
                .filter_map(|t| shared.tags.remove(t))
                .flatten()
                .collect()
        };
        keys.iter().filter(|k| self.remove(k, now)).count() as u64
    }

    /// Starts a new generation of a namespace: its old entries are never seen again.
    fn invalidate_namespace(&self, generation_key: &str) {
        *lock(&self.shared)
            .generations
            .entry(generation_key.to_owned())
            .or_default() += 1;
    }
}

/// The cache in process memory. Cheap to clone (shared state).
#[derive(Clone)]
pub struct MemoryCacheStore {
    cache: Arc<MemoryCache>,
    keys: Keys,
}

impl MemoryCacheStore {
    /// A cache holding at most `max_bytes` of keys and values.
    pub fn new(backend: &MemoryBackend, max_bytes: u64) -> Self {
        Self {
            cache: Arc::new(MemoryCache::new(max_bytes)),
            keys: backend.keys().clone(),
        }
    }

    fn cache_key(&self, tenant: &Tenant, namespace: &str, key: &str) -> String {
        let generation = self
            .cache
            .generation(&self.keys.cache_generation(tenant, namespace));
        self.keys.cache_entry(tenant, namespace, generation, key)
    }
}

#[tonic::async_trait]
impl CacheStore for MemoryCacheStore {
    async fn get(
        &self,
        tenant: &Tenant,
        namespace: &str,
        key: &str,
        now: Millis,
        lease: Option<(&str, Millis)>,
    ) -> Result<Lookup, StoreError> {
        Ok(self
            .cache
            .get(&self.cache_key(tenant, namespace, key), now, lease))
    }

    async fn get_many(
        &self,
        tenant: &Tenant,
        namespace: &str,
        keys: &[String],
        now: Millis,
    ) -> Result<Vec<Lookup>, StoreError> {
        Ok(keys
            .iter()
            .map(|k| {
                self.cache
                    .get(&self.cache_key(tenant, namespace, k), now, None)
            })
            .collect())
    }

    async fn set(
        &self,
        tenant: &Tenant,
        namespace: &str,
        writes: &[Write],
        now: Millis,
    ) -> Result<Vec<bool>, StoreError> {
        Ok(writes
            .iter()
            .map(|w| {
                let tags = w
                    .tags
                    .iter()
                    .map(|t| self.keys.cache_tag(tenant, namespace, t))
                    .collect();
                let key = self.cache_key(tenant, namespace, &w.key);
                self.cache.set(&key, namespace, w, tags, now)
            })
            .collect())
    }

    async fn delete(
        &self,
        tenant: &Tenant,
        namespace: &str,
        keys: &[String],
    ) -> Result<u64, StoreError> {
        let now = now_ms();
        Ok(keys
            .iter()
            .filter(|k| {
                self.cache
                    .remove(&self.cache_key(tenant, namespace, k), now)
            })
            .count() as u64)
    }

    async fn invalidate_tags(
        &self,
        tenant: &Tenant,
        namespace: &str,
        tags: &[String],
    ) -> Result<u64, StoreError> {
        let tag_keys: Vec<String> = tags
            .iter()
            .map(|t| self.keys.cache_tag(tenant, namespace, t))
            .collect();
        Ok(self.cache.invalidate_tags(&tag_keys, now_ms()))
    }

    async fn invalidate_namespace(
        &self,
        tenant: &Tenant,
        namespace: &str,
        _keep_ms: Millis,
    ) -> Result<(), StoreError> {
        self.cache
            .invalidate_namespace(&self.keys.cache_generation(tenant, namespace));
        Ok(())
    }

    fn evictions(&self) -> Vec<(String, u64)> {
        self.cache.evictions()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_stays_within_its_byte_budget_and_counts_evictions() {
        let cache = MemoryCache::new(64 * 1024);
        let now = now_ms();
        let write = |key: &str| Write {
            key: key.to_owned(),
            value: Bytes::from(vec![b'x'; 1000]),
            fresh_until: now + 60_000,
            stale_until: now + 60_000,
            tags: vec![],
            condition: Condition::Always,
            lease_token: None,
        };
        for i in 0..1000 {
            let key = format!("k{i}");
            assert!(cache.set(&key, "ns", &write(&key), vec![], now));
        }
        cache.entries.run_pending_tasks();
        assert!(
            cache.entries.weighted_size() <= 64 * 1024,
            "{} bytes held",
            cache.entries.weighted_size()
        );
        let evicted: u64 = cache.evictions().iter().map(|(_, n)| n).sum();
        assert!(evicted >= 900, "only {evicted} evictions counted");
        assert_eq!(cache.evictions()[0].0, "ns");
    }
}
