//! The in-memory cache store: one size-bounded moka cache holds everything the cache keeps
//! (entries, namespace generations, tag invalidation marks), each weighed with its keys, its
//! value and its tag listings, so `cache.memory_max_bytes` bounds all of it; least recently used
//! items are evicted past it.
//!
//! Every time comes from the backend's clock (the store's clock). Writes (Set, Delete,
//! InvalidateTags, InvalidateNamespace) are serialized by one lock, so listing a value under its
//! tags and writing it, or invalidating a tag and deleting what it lists, are each atomic; reads
//! and lease grants go straight to moka's per-key atomic compute.
//!
//! Losing state to eviction is always safe: an evicted generation makes its namespace miss (a
//! new one is numbered from a process-wide counter, never reused), and an evicted invalidation
//! mark raises a watermark that refuses every lease granted before it.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicI64, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use moka::{Expiry, notification::RemovalCause, ops::compute::Op, sync::Cache};

use super::{
    model::{Condition, Freshness, Lease, Lookup, Write},
    store::{CacheStore, CacheStoreSettings},
};
use crate::{
    auth::config::QuotaConfig,
    store::{
        StoreError,
        keys::Keys,
        memory::{Clock, MemoryBackend, lock},
    },
    tenant::Tenant,
    time::Millis,
};

/// Namespaces whose evictions are counted under their own name; the rest share `_other`.
const MAX_EVICTION_LABELS: usize = 128;

/// Fixed bytes charged per item and per tag listing for the containers holding them.
const ITEM_OVERHEAD: usize = 128;
const LISTING_OVERHEAD: usize = 48;

/// A lease on a key: who holds it, since when, until when (store clock).
#[derive(Debug, Clone)]
struct LeaseHeld {
    token: String,
    granted_at: Millis,
    until: Millis,
}

/// One cached key: a value (absent while only a lease exists) and an optional lease.
#[derive(Debug, Clone)]
struct Entry {
    value: Option<Bytes>,
    fresh_until: Millis,
    stale_until: Millis,
    lease: Option<LeaseHeld>,
    /// Tag-index keys this entry is listed under, so its removal can unlist it.
    tags: Arc<[String]>,
    namespace: Arc<str>,
    /// Whose bytes it counts against (`quota.memory_cache_bytes`).
    tenant: Arc<str>,
}

impl Entry {
    fn fresh(&self, now: Millis) -> bool {
        self.value.is_some() && now < self.fresh_until
    }

    fn stale(&self, now: Millis) -> bool {
        self.value.is_some() && self.fresh_until <= now && now < self.stale_until
    }

    fn servable(&self, now: Millis) -> bool {
        self.value.is_some() && now < self.stale_until
    }
}

/// What the moka cache holds.
#[derive(Debug, Clone)]
enum Item {
    Entry(Entry),
    /// A namespace's generation.
    Generation(u64),
    /// When a tag was last invalidated, and until when that matters.
    Mark {
        at: Millis,
        until: Millis,
    },
}

impl Item {
    /// When the item may go (store clock); `None`: only for space.
    fn deadline(&self) -> Option<Millis> {
        match self {
            Item::Entry(e) => Some(e.stale_until.max(e.lease.as_ref().map_or(0, |l| l.until))),
            Item::Generation(_) => None,
            Item::Mark { until, .. } => Some(*until),
        }
    }
}

/// Items expire at their own deadline on the store clock (moka counts in `Instant`s).
struct ByDeadline {
    clock: Clock,
}

impl ByDeadline {
    fn remaining(&self, item: &Item) -> Option<Duration> {
        let deadline = item.deadline()?;
        Some(Duration::from_millis(
            u64::try_from(deadline - self.clock.now()).unwrap_or(0),
        ))
    }
}

impl Expiry<String, Arc<Item>> for ByDeadline {
    fn expire_after_create(&self, _: &String, v: &Arc<Item>, _: Instant) -> Option<Duration> {
        self.remaining(v)
    }

    fn expire_after_update(
        &self,
        _: &String,
        v: &Arc<Item>,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        self.remaining(v)
    }
}

/// Bytes an item costs: its key, its value, and for an entry each of its tag listings.
fn weight(key: &str, item: &Item) -> u32 {
    let bytes = match item {
        Item::Entry(e) => {
            key.len()
                + e.value.as_ref().map_or(0, Bytes::len)
                + e.lease.as_ref().map_or(0, |l| l.token.len())
                + e.tags
                    .iter()
                    .map(|t| t.len() + key.len() + LISTING_OVERHEAD)
                    .sum::<usize>()
        }
        Item::Generation(_) | Item::Mark { .. } => key.len() + 16,
    } + ITEM_OVERHEAD;
    u32::try_from(bytes).unwrap_or(u32::MAX)
}

/// State beside the moka cache, shared with its eviction listener.
#[derive(Default)]
struct Shared {
    /// Tag-index key → entry keys listed under it.
    tags: HashMap<String, HashSet<String>>,
    /// Namespace → entries evicted for space.
    evictions: HashMap<Arc<str>, u64>,
    /// Tenant → bytes of its entries.
    tenant_bytes: HashMap<Arc<str>, u64>,
}

impl Shared {
    /// Adds (or, negative, removes) `bytes` to `tenant`'s count.
    fn account(&mut self, tenant: &Arc<str>, bytes: i64) {
        let n = self.tenant_bytes.entry(tenant.clone()).or_default();
        *n = n.saturating_add_signed(bytes);
        if *n == 0 {
            self.tenant_bytes.remove(tenant);
        }
    }
}

/// The cache in process memory. Cheap to clone (shared state).
#[derive(Clone)]
pub struct MemoryCacheStore {
    items: Cache<String, Arc<Item>>,
    shared: Arc<Mutex<Shared>>,
    /// Serializes writes (see the module docs).
    writes: Arc<Mutex<()>>,
    /// The latest invalidation mark evicted for space: leases granted at or before it are refused.
    evicted_marks: Arc<AtomicI64>,
    /// Source of generation numbers (never reused in this process).
    generations: Arc<AtomicU64>,
    keys: Keys,
    clock: Clock,
    settings: CacheStoreSettings,
    quotas: Arc<QuotaConfig>,
}

impl MemoryCacheStore {
    /// A cache holding at most `max_bytes` (entries, generations, marks and tag listings).
    pub fn new(backend: &MemoryBackend, max_bytes: u64, settings: CacheStoreSettings) -> Self {
        let shared = Arc::new(Mutex::new(Shared::default()));
        let evicted_marks = Arc::new(AtomicI64::new(0));
        let listener_shared = Arc::downgrade(&shared);
        let listener_marks = evicted_marks.clone();
        let items = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|k: &String, v: &Arc<Item>| weight(k, v))
            .expire_after(ByDeadline {
                clock: backend.clock().clone(),
            })
            .eviction_listener(
                move |key: Arc<String>, item: Arc<Item>, cause| match &*item {
                    Item::Entry(entry) => {
                        let Some(shared) = listener_shared.upgrade() else {
                            return;
                        };
                        let mut shared = lock(&shared);
                        shared.account(&entry.tenant, -i64::from(weight(&key, &item)));
                        if cause != RemovalCause::Replaced {
                            unlist(&mut shared, &key, &entry.tags);
                        }
                        if cause == RemovalCause::Size {
                            let label = if shared.evictions.len() < MAX_EVICTION_LABELS
                                || shared.evictions.contains_key(&entry.namespace)
                            {
                                entry.namespace.clone()
                            } else {
                                Arc::from("_other")
                            };
                            *shared.evictions.entry(label).or_default() += 1;
                        }
                    }
                    Item::Mark { at, .. } if cause == RemovalCause::Size => {
                        listener_marks.fetch_max(*at, Ordering::AcqRel);
                    }
                    Item::Mark { .. } | Item::Generation(_) => {}
                },
            )
            .build();
        Self {
            items,
            shared,
            writes: Arc::new(Mutex::new(())),
            evicted_marks,
            generations: Arc::new(AtomicU64::new(0)),
            keys: backend.keys().clone(),
            clock: backend.clock().clone(),
            settings,
            quotas: Arc::new(backend.quotas().clone()),
        }
    }

    /// The namespace's generation; with `create`, one is started when there is none.
    fn generation(&self, tenant: &Tenant, namespace: &str, create: bool) -> Option<u64> {
        let key = self.keys.cache_generation(tenant, namespace);
        if !create {
            return match self.items.get(&key).as_deref() {
                Some(Item::Generation(g)) => Some(*g),
                _ => None,
            };
        }
        let entry = self.items.entry(key).or_insert_with(|| {
            Arc::new(Item::Generation(
                self.generations.fetch_add(1, Ordering::AcqRel) + 1,
            ))
        });
        match &*entry.into_value() {
            Item::Generation(g) => Some(*g),
            _ => None,
        }
    }

    fn entry_key(&self, tenant: &Tenant, namespace: &str, generation: u64, key: &str) -> String {
        self.keys.cache_entry(tenant, namespace, generation, key)
    }

    /// Looks one key up in a generation; with `lease`, grants it when free.
    fn lookup(&self, tenant: &Tenant, key: &str, now: Millis, lease: Option<&str>) -> Lookup {
        let mut out = Lookup::miss();
        let mut added = 0;
        self.items.entry_by_ref(key).and_compute_with(|current| {
            let current = current.map(|e| e.into_value());
            let entry = match current.as_deref() {
                Some(Item::Entry(e)) => Some(e),
                _ => None,
            };
            if let Some(e) = entry {
                if e.fresh(now) {
                    out = Lookup {
                        freshness: Freshness::Fresh,
                        value: e.value.clone().unwrap_or_default(),
                        fresh_ms: e.fresh_until - now,
                        lease: Lease::None,
                    };
                    return Op::Nop;
                }
                if e.stale(now) {
                    out.freshness = Freshness::Stale;
                    out.value = e.value.clone().unwrap_or_default();
                }
            }
            let Some(token) = lease else {
                return Op::Nop;
            };
            if entry
                .and_then(|e| e.lease.as_ref())
                .is_some_and(|l| l.until > now)
            {
                out.lease = Lease::Wait;
                return Op::Nop;
            }
            out.lease = Lease::Granted(token.to_owned());
            // A value past its stale window is dropped, but its tag listings are kept, so
            // whatever replaces it unlists them.
            let mut next = entry.cloned().unwrap_or(Entry {
                value: None,
                fresh_until: 0,
                stale_until: 0,
                lease: None,
                tags: Arc::from([]),
                namespace: Arc::from(""),
                tenant: Arc::from(tenant.as_str()),
            });
            if !next.servable(now) {
                next.value = None;
            }
            next.lease = Some(LeaseHeld {
                token: token.to_owned(),
                granted_at: now,
                until: now.saturating_add(self.settings.lease_ttl_ms),
            });
            let item = Item::Entry(next);
            added = weight(key, &item);
            Op::Put(Arc::new(item))
        });
        if added > 0 {
            lock(&self.shared).account(&Arc::from(tenant.as_str()), i64::from(added));
        }
        out
    }

    /// When any of `tag_keys` was last invalidated (or an eviction forgot when).
    fn latest_mark(&self, tag_keys: &[String]) -> Millis {
        let mut latest = self.evicted_marks.load(Ordering::Acquire);
        for key in tag_keys {
            if let Some(Item::Mark { at, .. }) = self.items.get(key).as_deref() {
                latest = latest.max(*at);
            }
        }
        latest
    }

    /// Writes one entry (under the writes lock); whether it was stored.
    fn write(
        &self,
        tenant: &Tenant,
        namespace: &str,
        generation: u64,
        w: &Write,
        now: Millis,
    ) -> bool {
        let key = self.entry_key(tenant, namespace, generation, &w.key);
        let mark_keys: Vec<String> = w
            .tags
            .iter()
            .map(|t| self.keys.cache_tag_mark(tenant, namespace, t))
            .collect();
        let invalidated = if w.lease_token.is_some() && !w.tags.is_empty() {
            self.latest_mark(&mark_keys)
        } else {
            0
        };
        let tag_keys: Arc<[String]> = w
            .tags
            .iter()
            .map(|t| self.keys.cache_tag(tenant, namespace, t))
            .collect();
        let mut stored = 0;
        let mut old_tags: Arc<[String]> = Arc::from([]);
        self.items.entry_by_ref(&key).and_compute_with(|current| {
            let current = current.map(|e| e.into_value());
            let entry = match current.as_deref() {
                Some(Item::Entry(e)) => Some(e),
                _ => None,
            };
            if let Some(e) = entry {
                old_tags = e.tags.clone();
            }
            if let Some(token) = &w.lease_token {
                let honoured = entry.and_then(|e| e.lease.as_ref()).is_some_and(|l| {
                    l.token == *token && l.until > now && l.granted_at > invalidated
                });
                if !honoured {
                    return Op::Nop;
                }
            }
            let present = entry.is_some_and(|e| e.fresh(now));
            match w.condition {
                Condition::IfAbsent if present => return Op::Nop,
                Condition::IfPresent if !present => return Op::Nop,
                _ => {}
            }
            let fresh_until = now.saturating_add(w.ttl_ms);
            let item = Item::Entry(Entry {
                value: Some(w.value.clone()),
                fresh_until,
                stale_until: fresh_until.saturating_add(w.stale_ms),
                lease: None,
                tags: tag_keys.clone(),
                namespace: Arc::from(namespace),
                tenant: Arc::from(tenant.as_str()),
            });
            stored = weight(&key, &item);
            Op::Put(Arc::new(item))
        });
        if stored == 0 {
            return false;
        }
        let mut shared = lock(&self.shared);
        shared.account(&Arc::from(tenant.as_str()), i64::from(stored));
        if !(tag_keys.is_empty() && old_tags.is_empty()) {
            // The value replaced carried these tags; the new one is listed only under its own.
            let dropped: Vec<String> = old_tags
                .iter()
                .filter(|t| !tag_keys.contains(t))
                .cloned()
                .collect();
            unlist(&mut shared, &key, &dropped);
            for tag in tag_keys.iter() {
                shared
                    .tags
                    .entry(tag.clone())
                    .or_default()
                    .insert(key.clone());
            }
        }
        true
    }

    /// Refuses `writes` when they would take `tenant` over its `quota.memory_cache_bytes`
    /// (before anything is written: all or nothing).
    fn check_quota(
        &self,
        tenant: &Tenant,
        keys: &[String],
        writes: &[Write],
    ) -> Result<(), StoreError> {
        let cap = self.quotas.for_tenant(tenant.as_str()).memory_cache_bytes;
        if cap == 0 {
            return Ok(());
        }
        let mut grow: i64 = 0;
        for (key, w) in keys.iter().zip(writes) {
            let listings: usize = w
                .tags
                .iter()
                .map(|t| t.len() + key.len() + LISTING_OVERHEAD)
                .sum();
            let new = key.len() + w.value.len() + listings + ITEM_OVERHEAD;
            let old = self.items.get(key).map_or(0, |item| weight(key, &item));
            grow += i64::try_from(new).unwrap_or(i64::MAX) - i64::from(old);
        }
        let held = lock(&self.shared)
            .tenant_bytes
            .get(tenant.as_str())
            .copied()
            .unwrap_or(0);
        if grow > 0 && held.saturating_add(grow.unsigned_abs()) > cap {
            return Err(StoreError::Full(
                "the tenant's quota.memory_cache_bytes is reached",
            ));
        }
        Ok(())
    }

    /// Removes an entry key (under the writes lock); whether it held a servable value.
    fn remove(&self, key: &str, now: Millis) -> bool {
        self.items
            .remove(key)
            .is_some_and(|item| matches!(&*item, Item::Entry(e) if e.servable(now)))
    }

    fn lock_writes(&self) -> MutexGuard<'_, ()> {
        lock(&self.writes)
    }
}

/// Removes `key` from the listings of `tags`.
fn unlist(shared: &mut Shared, key: &str, tags: &[String]) {
    for tag in tags {
        if let Some(keys) = shared.tags.get_mut(tag) {
            keys.remove(key);
            if keys.is_empty() {
                shared.tags.remove(tag);
            }
        }
    }
}

#[tonic::async_trait]
impl CacheStore for MemoryCacheStore {
    async fn get(
        &self,
        tenant: &Tenant,
        namespace: &str,
        key: &str,
        lease_token: Option<&str>,
    ) -> Result<Lookup, StoreError> {
        let Some(generation) = self.generation(tenant, namespace, lease_token.is_some()) else {
            return Ok(Lookup::miss());
        };
        let key = self.entry_key(tenant, namespace, generation, key);
        Ok(self.lookup(tenant, &key, self.clock.now(), lease_token))
    }

    async fn get_many(
        &self,
        tenant: &Tenant,
        namespace: &str,
        keys: &[String],
    ) -> Result<Vec<Lookup>, StoreError> {
        let Some(generation) = self.generation(tenant, namespace, false) else {
            return Ok(keys.iter().map(|_| Lookup::miss()).collect());
        };
        let now = self.clock.now();
        Ok(keys
            .iter()
            .map(|k| {
                self.lookup(
                    tenant,
                    &self.entry_key(tenant, namespace, generation, k),
                    now,
                    None,
                )
            })
            .collect())
    }

    async fn set(
        &self,
        tenant: &Tenant,
        namespace: &str,
        writes: &[Write],
    ) -> Result<Vec<bool>, StoreError> {
        let _writes = self.lock_writes();
        let generation = self
            .generation(tenant, namespace, true)
            .ok_or_else(|| StoreError::Protocol("no generation after creating it".into()))?;
        let keys: Vec<String> = writes
            .iter()
            .map(|w| self.entry_key(tenant, namespace, generation, &w.key))
            .collect();
        self.check_quota(tenant, &keys, writes)?;
        let now = self.clock.now();
        Ok(writes
            .iter()
            .map(|w| self.write(tenant, namespace, generation, w, now))
            .collect())
    }

    async fn delete(
        &self,
        tenant: &Tenant,
        namespace: &str,
        keys: &[String],
    ) -> Result<u64, StoreError> {
        let _writes = self.lock_writes();
        let Some(generation) = self.generation(tenant, namespace, false) else {
            return Ok(0);
        };
        let now = self.clock.now();
        Ok(keys
            .iter()
            .filter(|k| self.remove(&self.entry_key(tenant, namespace, generation, k), now))
            .count() as u64)
    }

    async fn invalidate_tags(
        &self,
        tenant: &Tenant,
        namespace: &str,
        tags: &[String],
    ) -> Result<u64, StoreError> {
        let _writes = self.lock_writes();
        let now = self.clock.now();
        let until = now.saturating_add(self.settings.lease_ttl_ms);
        for tag in tags {
            self.items.insert(
                self.keys.cache_tag_mark(tenant, namespace, tag),
                Arc::new(Item::Mark { at: now, until }),
            );
        }
        let keys: HashSet<String> = {
            let mut shared = lock(&self.shared);
            tags.iter()
                .filter_map(|t| {
                    shared
                        .tags
                        .remove(&self.keys.cache_tag(tenant, namespace, t))
                })
                .flatten()
                .collect()
        };
        Ok(keys.iter().filter(|k| self.remove(k, now)).count() as u64)
    }

    async fn invalidate_namespace(
        &self,
        tenant: &Tenant,
        namespace: &str,
    ) -> Result<(), StoreError> {
        let _writes = self.lock_writes();
        let next = self.generations.fetch_add(1, Ordering::AcqRel) + 1;
        self.items.insert(
            self.keys.cache_generation(tenant, namespace),
            Arc::new(Item::Generation(next)),
        );
        Ok(())
    }

    fn evictions(&self) -> Vec<(String, u64)> {
        lock(&self.shared)
            .evictions
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(max_bytes: u64) -> MemoryCacheStore {
        MemoryCacheStore::new(
            &MemoryBackend::new("t", Duration::from_secs(60), 1 << 20),
            max_bytes,
            CacheStoreSettings {
                lease_ttl_ms: 5_000,
                generation_keep_ms: 600_000,
            },
        )
    }

    fn write(key: &str, value: usize, tags: &[String]) -> Write {
        Write {
            key: key.to_owned(),
            value: Bytes::from(vec![b'x'; value]),
            ttl_ms: 60_000,
            stale_ms: 0,
            tags: tags.to_vec(),
            condition: Condition::Always,
            lease_token: None,
        }
    }

    #[tokio::test]
    async fn the_budget_counts_tag_listings_and_bounds_eviction_labels() {
        let budget = 256 * 1024;
        let cache = store(budget);
        let t = Tenant::default_tenant();
        // Small values, many long tags: the listings, not the values, fill the budget.
        let tags: Vec<String> = (0..16)
            .map(|i| format!("{i}-{}", "t".repeat(100)))
            .collect();
        for i in 0..2_000 {
            let ns = format!("ns{}", i % 300);
            let stored = cache
                .set(&t, &ns, &[write(&format!("k{i}"), 10, &tags)])
                .await
                .expect("set");
            assert_eq!(stored, [true]);
        }
        cache.items.run_pending_tasks();
        assert!(
            cache.items.weighted_size() <= budget,
            "{} bytes held",
            cache.items.weighted_size()
        );
        let listed: usize = lock(&cache.shared).tags.values().map(HashSet::len).sum();
        let entries = cache
            .items
            .iter()
            .filter(|(_, v)| matches!(&**v, Item::Entry(_)))
            .count();
        assert_eq!(
            listed,
            entries * tags.len(),
            "listings follow the entries kept"
        );
        let evictions = cache.evictions();
        assert!(evictions.iter().map(|(_, n)| n).sum::<u64>() > 1_000);
        assert!(
            evictions.len() <= MAX_EVICTION_LABELS + 1,
            "{} eviction labels",
            evictions.len()
        );
    }

    #[tokio::test]
    async fn an_evicted_generation_means_misses_and_a_new_number() {
        let cache = store(1 << 20);
        let t = Tenant::default_tenant();
        cache
            .set(&t, "ns", &[write("k", 1, &[])])
            .await
            .expect("set");
        let first = cache.generation(&t, "ns", false).expect("generation");
        cache
            .items
            .invalidate(&cache.keys.cache_generation(&t, "ns"));
        let miss = cache.get(&t, "ns", "k", None).await.expect("get");
        assert_eq!(miss.freshness, Freshness::Miss);
        cache
            .set(&t, "ns", &[write("k", 1, &[])])
            .await
            .expect("set");
        assert!(cache.generation(&t, "ns", false).expect("generation") > first);
    }

    #[tokio::test]
    async fn a_tenant_over_its_cache_bytes_is_refused_whole_and_others_are_not() {
        let quotas = QuotaConfig {
            memory_cache_bytes: 4096,
            ..QuotaConfig::default()
        };
        let cache = MemoryCacheStore::new(
            &MemoryBackend::new("t", Duration::from_secs(60), 1 << 20).with_quotas(quotas),
            1 << 20,
            CacheStoreSettings {
                lease_ttl_ms: 5_000,
                generation_keep_ms: 600_000,
            },
        );
        let (a, b) = (
            Tenant::new("a").expect("tenant"),
            Tenant::new("b").expect("tenant"),
        );
        for i in 0..3 {
            cache
                .set(&a, "ns", &[write(&format!("k{i}"), 1000, &[])])
                .await
                .expect("within the quota");
        }
        let over = cache
            .set(
                &a,
                "ns",
                &[write("small", 10, &[]), write("big", 1000, &[])],
            )
            .await;
        assert!(matches!(over, Err(StoreError::Full(_))), "{over:?}");
        let small = cache.get(&a, "ns", "small", None).await.expect("get");
        assert_eq!(small.freshness, Freshness::Miss, "all or nothing");
        // Rewriting a key in place does not grow the tenant.
        cache
            .set(&a, "ns", &[write("k0", 1000, &[])])
            .await
            .expect("same size in place");
        cache
            .set(&b, "ns", &[write("k", 3000, &[])])
            .await
            .expect("another tenant is not affected");
        cache
            .delete(&a, "ns", &["k1".into(), "k2".into()])
            .await
            .expect("delete");
        cache
            .set(&a, "ns", &[write("big", 1000, &[])])
            .await
            .expect("room again after a delete");
    }
}
