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
//!
//! **Tenants** (`quota.memory_cache_bytes`): every item is charged to the tenant it belongs to,
//! generations, marks and leases included, and whatever would grow a tenant past its cap is
//! refused before anything is created. Entries of a generation that is no longer its
//! namespace's (invalidated, expired or evicted) can never be read again: they stop counting
//! against the tenant at once, and an invalidated generation's entries are purged in the
//! background, so neither a tenant's quota nor the shared budget pays for them until their TTL.
//! Invalidations themselves are never refused (a full tenant must still be able to clear stale
//! data); their marks last one lease TTL and are charged to the tenant.

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
/// Bytes a generation or a mark holds beside its key (number or times, tenant handle).
const SMALL_ITEM: usize = 16;

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
    /// The namespace generation it was written in (its key holds the same number).
    generation: u64,
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
    /// A namespace's generation, kept while the namespace is written to (as on Redis, its
    /// life is renewed by writes and lease grants).
    Generation {
        number: u64,
        until: Millis,
        tenant: Arc<str>,
    },
    /// When a tag was last invalidated, and until when that matters.
    Mark {
        at: Millis,
        until: Millis,
        tenant: Arc<str>,
    },
}

impl Item {
    /// When the item may go (store clock).
    fn deadline(&self) -> Millis {
        match self {
            Item::Entry(e) => e.stale_until.max(e.lease.as_ref().map_or(0, |l| l.until)),
            Item::Generation { until, .. } | Item::Mark { until, .. } => *until,
        }
    }
}

/// Items expire at their own deadline on the store clock (moka counts in `Instant`s).
struct ByDeadline {
    clock: Clock,
}

impl ByDeadline {
    fn remaining(&self, item: &Item) -> Option<Duration> {
        Some(Duration::from_millis(
            u64::try_from(item.deadline() - self.clock.now()).unwrap_or(0),
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
        Item::Generation { .. } | Item::Mark { .. } => key.len() + SMALL_ITEM,
    } + ITEM_OVERHEAD;
    u32::try_from(bytes).unwrap_or(u32::MAX)
}

/// Bytes a lease-only entry for `key` costs (what a lease grant on a new key adds).
fn lease_weight(key: &str, token: &str) -> i64 {
    i64::try_from(key.len() + token.len() + ITEM_OVERHEAD).unwrap_or(i64::MAX)
}

/// Bytes of one generation's entries.
#[derive(Default)]
struct GenerationBytes {
    bytes: i64,
    /// No longer its namespace's: its entries are unreachable and not charged to the tenant.
    retired: bool,
}

/// State beside the moka cache, shared with its eviction listener. Never hold its lock across
/// a call into the moka cache: any call may run housekeeping, whose listener takes the lock.
///
/// Byte counts are signed: an eviction can be reported before the insertion that caused it is
/// charged, and the counts must come back to the truth once both are in.
#[derive(Default)]
struct Shared {
    /// Tag-index key → entry keys listed under it.
    tags: HashMap<String, HashSet<String>>,
    /// Namespace → entries evicted for space.
    evictions: HashMap<Arc<str>, u64>,
    /// Tenant → bytes charged to it.
    tenant_bytes: HashMap<Arc<str>, i64>,
    /// Generation number → bytes of its entries still held.
    generation_bytes: HashMap<u64, GenerationBytes>,
}

impl Shared {
    fn add_to_tenant(&mut self, tenant: &Arc<str>, bytes: i64) {
        let n = self.tenant_bytes.entry(tenant.clone()).or_default();
        *n = n.saturating_add(bytes);
        if *n == 0 {
            self.tenant_bytes.remove(tenant);
        }
    }

    /// Charges (positive) or releases (negative) `bytes` of `item`.
    fn account(&mut self, item: &Item, bytes: i64) {
        match item {
            Item::Entry(e) => {
                let generation = self.generation_bytes.entry(e.generation).or_default();
                generation.bytes = generation.bytes.saturating_add(bytes);
                let charged = !generation.retired;
                if generation.bytes == 0 {
                    self.generation_bytes.remove(&e.generation);
                }
                if charged {
                    self.add_to_tenant(&e.tenant, bytes);
                }
            }
            Item::Generation { tenant, .. } | Item::Mark { tenant, .. } => {
                self.add_to_tenant(tenant, bytes);
            }
        }
    }

    /// `generation` of `tenant` is no longer its namespace's: its entries stop counting.
    fn retire(&mut self, tenant: &Arc<str>, generation: u64) {
        if let Some(g) = self.generation_bytes.get_mut(&generation)
            && !g.retired
        {
            g.retired = true;
            let bytes = g.bytes;
            self.add_to_tenant(tenant, -bytes);
        }
    }

    fn held(&self, tenant: &str) -> i64 {
        self.tenant_bytes.get(tenant).copied().unwrap_or(0).max(0)
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
            // Purges an invalidated generation's entries (see invalidate_namespace).
            .support_invalidation_closures()
            .eviction_listener(move |key: Arc<String>, item: Arc<Item>, cause| {
                let Some(shared) = listener_shared.upgrade() else {
                    return;
                };
                let mut shared = lock(&shared);
                shared.account(&item, -i64::from(weight(&key, &item)));
                match &*item {
                    Item::Entry(entry) => {
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
                    // Replaced: renewed, or invalidate_namespace retires it itself.
                    Item::Generation { number, tenant, .. } if cause != RemovalCause::Replaced => {
                        shared.retire(tenant, *number);
                    }
                    Item::Mark { at, .. } if cause == RemovalCause::Size => {
                        listener_marks.fetch_max(*at, Ordering::AcqRel);
                    }
                    Item::Generation { .. } | Item::Mark { .. } => {}
                }
            })
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

    /// The namespace's current generation, if it has one.
    fn generation(&self, tenant: &Tenant, namespace: &str) -> Option<u64> {
        match self
            .items
            .get(&self.keys.cache_generation(tenant, namespace))
            .as_deref()
        {
            Some(Item::Generation { number, .. }) => Some(*number),
            _ => None,
        }
    }

    /// The namespace's generation, started when there is none and renewed when a quarter of
    /// its life has passed (a namespace in use never loses it).
    fn ensure_generation(&self, tenant: &Tenant, namespace: &str, now: Millis) -> u64 {
        let key = self.keys.cache_generation(tenant, namespace);
        let keep = self.settings.generation_keep_ms;
        let until = now.saturating_add(keep);
        let mut number = 0;
        let mut put = None;
        self.items.entry_by_ref(&key).and_compute_with(|current| {
            let current = current.map(|e| e.into_value());
            let (n, renew) = match current.as_deref() {
                Some(Item::Generation { number, until, .. }) => {
                    (*number, until.saturating_sub(now) < keep - keep / 4)
                }
                _ => (self.generations.fetch_add(1, Ordering::AcqRel) + 1, true),
            };
            number = n;
            if !renew {
                return Op::Nop;
            }
            let item = Arc::new(Item::Generation {
                number: n,
                until,
                tenant: Arc::from(tenant.as_str()),
            });
            put = Some(item.clone());
            Op::Put(item)
        });
        if let Some(item) = put {
            lock(&self.shared).account(&item, i64::from(weight(&key, &item)));
        }
        number
    }

    /// Refuses growing `tenant` by `grow` bytes past its `quota.memory_cache_bytes`.
    fn check_room(&self, tenant: &Tenant, grow: i64) -> Result<(), StoreError> {
        let cap = self.quotas.for_tenant(tenant.as_str()).memory_cache_bytes;
        if cap == 0 || grow <= 0 {
            return Ok(());
        }
        let held = lock(&self.shared).held(tenant.as_str());
        if held.saturating_add(grow) > i64::try_from(cap).unwrap_or(i64::MAX) {
            return Err(StoreError::Full(
                "the tenant's quota.memory_cache_bytes is reached",
            ));
        }
        Ok(())
    }

    /// Bytes a new generation item for the namespace costs, if it has none.
    fn generation_cost(&self, tenant: &Tenant, namespace: &str, current: Option<u64>) -> i64 {
        match current {
            Some(_) => 0,
            None => i64::try_from(
                self.keys.cache_generation(tenant, namespace).len() + SMALL_ITEM + ITEM_OVERHEAD,
            )
            .unwrap_or(i64::MAX),
        }
    }

    fn entry_key(&self, tenant: &Tenant, namespace: &str, generation: u64, key: &str) -> String {
        self.keys.cache_entry(tenant, namespace, generation, key)
    }

    /// Looks one entry key up; with `lease`, grants it when free.
    fn lookup(&self, at: Place<'_>, key: &str, now: Millis, lease: Option<&str>) -> Lookup {
        let mut out = Lookup::miss();
        let mut put = None;
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
                namespace: Arc::from(at.namespace),
                generation: at.generation,
                tenant: Arc::from(at.tenant.as_str()),
            });
            if !next.servable(now) {
                next.value = None;
            }
            next.lease = Some(LeaseHeld {
                token: token.to_owned(),
                granted_at: now,
                until: now.saturating_add(self.settings.lease_ttl_ms),
            });
            let item = Arc::new(Item::Entry(next));
            put = Some(item.clone());
            Op::Put(item)
        });
        if let Some(item) = put {
            lock(&self.shared).account(&item, i64::from(weight(key, &item)));
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
    fn write(&self, at: Place<'_>, w: &Write, now: Millis) -> bool {
        let Place {
            tenant,
            namespace,
            generation,
        } = at;
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
        let mut put = None;
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
            let item = Arc::new(Item::Entry(Entry {
                value: Some(w.value.clone()),
                fresh_until,
                stale_until: fresh_until.saturating_add(w.stale_ms),
                lease: None,
                tags: tag_keys.clone(),
                namespace: Arc::from(namespace),
                generation,
                tenant: Arc::from(tenant.as_str()),
            }));
            put = Some(item.clone());
            Op::Put(item)
        });
        let Some(item) = put else {
            return false;
        };
        let mut shared = lock(&self.shared);
        shared.account(&item, i64::from(weight(&key, &item)));
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

    /// Bytes `writes` would add to the tenant in `generation` (none yet: nothing is held),
    /// over what their keys hold now.
    fn growth(
        &self,
        tenant: &Tenant,
        namespace: &str,
        generation: Option<u64>,
        writes: &[Write],
    ) -> i64 {
        writes
            .iter()
            .map(|w| {
                let key = self.entry_key(tenant, namespace, generation.unwrap_or(0), &w.key);
                let listings: usize = w
                    .tags
                    .iter()
                    .map(|t| t.len() + key.len() + LISTING_OVERHEAD)
                    .sum();
                let new = key.len() + w.value.len() + listings + ITEM_OVERHEAD;
                let old = match generation {
                    Some(_) => self.items.get(&key).map_or(0, |item| weight(&key, &item)),
                    None => 0,
                };
                i64::try_from(new).unwrap_or(i64::MAX) - i64::from(old)
            })
            .sum()
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

/// Where an entry lives: its tenant, namespace and generation.
#[derive(Clone, Copy)]
struct Place<'a> {
    tenant: &'a Tenant,
    namespace: &'a str,
    generation: u64,
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
        let now = self.clock.now();
        let current = self.generation(tenant, namespace);
        let generation = match (lease_token, current) {
            (None, None) => return Ok(Lookup::miss()),
            (None, Some(generation)) => generation,
            (Some(token), current) => {
                // A grant may add a generation and a lease entry: the tenant must have room.
                let entry = current.map(|g| self.entry_key(tenant, namespace, g, key));
                let lease = match &entry {
                    Some(k) if self.items.contains_key(k) => 0,
                    _ => lease_weight(key, token),
                };
                self.check_room(
                    tenant,
                    self.generation_cost(tenant, namespace, current) + lease,
                )?;
                self.ensure_generation(tenant, namespace, now)
            }
        };
        let at = Place {
            tenant,
            namespace,
            generation,
        };
        let key = self.entry_key(tenant, namespace, generation, key);
        Ok(self.lookup(at, &key, now, lease_token))
    }

    async fn get_many(
        &self,
        tenant: &Tenant,
        namespace: &str,
        keys: &[String],
    ) -> Result<Vec<Lookup>, StoreError> {
        let Some(generation) = self.generation(tenant, namespace) else {
            return Ok(keys.iter().map(|_| Lookup::miss()).collect());
        };
        let now = self.clock.now();
        let at = Place {
            tenant,
            namespace,
            generation,
        };
        Ok(keys
            .iter()
            .map(|k| {
                self.lookup(
                    at,
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
        let now = self.clock.now();
        // Room first, then anything created: a refused Set leaves nothing behind.
        let current = self.generation(tenant, namespace);
        let grow = self.growth(tenant, namespace, current, writes);
        self.check_room(
            tenant,
            grow.saturating_add(self.generation_cost(tenant, namespace, current)),
        )?;
        let generation = self.ensure_generation(tenant, namespace, now);
        let at = Place {
            tenant,
            namespace,
            generation,
        };
        Ok(writes.iter().map(|w| self.write(at, w, now)).collect())
    }

    async fn delete(
        &self,
        tenant: &Tenant,
        namespace: &str,
        keys: &[String],
    ) -> Result<u64, StoreError> {
        let _writes = self.lock_writes();
        let Some(generation) = self.generation(tenant, namespace) else {
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
        let owner: Arc<str> = Arc::from(tenant.as_str());
        for tag in tags {
            let key = self.keys.cache_tag_mark(tenant, namespace, tag);
            let mark = Item::Mark {
                at: now,
                until,
                tenant: owner.clone(),
            };
            let bytes = i64::from(weight(&key, &mark));
            self.items.insert(key, Arc::new(mark.clone()));
            lock(&self.shared).account(&mark, bytes);
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
        let now = self.clock.now();
        let old = self.generation(tenant, namespace);
        let owner: Arc<str> = Arc::from(tenant.as_str());
        let key = self.keys.cache_generation(tenant, namespace);
        let next = Item::Generation {
            number: self.generations.fetch_add(1, Ordering::AcqRel) + 1,
            until: now.saturating_add(self.settings.generation_keep_ms),
            tenant: owner.clone(),
        };
        let bytes = i64::from(weight(&key, &next));
        self.items.insert(key, Arc::new(next.clone()));
        lock(&self.shared).account(&next, bytes);
        if let Some(old) = old {
            lock(&self.shared).retire(&owner, old);
            // Unreachable from now on: free their space in the background rather than at
            // their TTL (moka scans in bounded batches on its housekeeping).
            let purge = self.items.invalidate_entries_if(
                move |_, item| matches!(&**item, Item::Entry(e) if e.generation == old),
            );
            if let Err(e) = purge {
                tracing::warn!(error = %e, "cannot purge an invalidated cache generation; its entries go at their TTL");
            }
        }
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
        let first = cache.generation(&t, "ns").expect("generation");
        cache
            .items
            .invalidate(&cache.keys.cache_generation(&t, "ns"));
        let miss = cache.get(&t, "ns", "k", None).await.expect("get");
        assert_eq!(miss.freshness, Freshness::Miss);
        cache
            .set(&t, "ns", &[write("k", 1, &[])])
            .await
            .expect("set");
        assert!(cache.generation(&t, "ns").expect("generation") > first);
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

    fn quota_store(cap: u64) -> MemoryCacheStore {
        let quotas = QuotaConfig {
            memory_cache_bytes: cap,
            ..QuotaConfig::default()
        };
        MemoryCacheStore::new(
            &MemoryBackend::new("t", Duration::from_secs(60), 1 << 20).with_quotas(quotas),
            1 << 22,
            CacheStoreSettings {
                lease_ttl_ms: 5_000,
                generation_keep_ms: 600_000,
            },
        )
    }

    /// What the tenant should be charged, recounted from what the cache holds: its live
    /// generations' entries, its generations and its marks.
    fn recount(cache: &MemoryCacheStore, tenant: &str) -> i64 {
        cache.items.run_pending_tasks();
        let live: HashSet<u64> = cache
            .items
            .iter()
            .filter_map(|(_, v)| match &*v {
                Item::Generation { number, .. } => Some(*number),
                _ => None,
            })
            .collect();
        cache
            .items
            .iter()
            .filter(|(_, v)| match &**v {
                Item::Entry(e) => &*e.tenant == tenant && live.contains(&e.generation),
                Item::Generation { tenant: t, .. } | Item::Mark { tenant: t, .. } => &**t == tenant,
            })
            .map(|(k, v)| i64::from(weight(&k, &v)))
            .sum()
    }

    #[tokio::test]
    async fn every_item_is_charged_to_its_tenant_and_the_count_matches_a_recount() {
        let cache = quota_store(0);
        let (a, b) = (
            Tenant::new("a").expect("tenant"),
            Tenant::new("b").expect("tenant"),
        );
        let tags = ["t1".to_owned(), "t2".to_owned()];
        for i in 0..50 {
            let ns = format!("ns{}", i % 5);
            cache
                .set(&a, &ns, &[write(&format!("k{i}"), 100 + i, &tags)])
                .await
                .expect("set");
            cache
                .set(&b, &ns, &[write(&format!("k{i}"), 10, &[])])
                .await
                .expect("set");
        }
        cache
            .get(&a, "ns9", "leased", Some("token"))
            .await
            .expect("a lease in a new namespace");
        cache
            .invalidate_tags(&a, "ns1", &["t1".to_owned()])
            .await
            .expect("invalidate tags");
        cache
            .invalidate_namespace(&a, "ns2")
            .await
            .expect("invalidate namespace");
        cache
            .delete(&a, "ns3", &["k3".to_owned(), "k8".to_owned()])
            .await
            .expect("delete");
        cache
            .set(&a, "ns0", &[write("k0", 5, &[])])
            .await
            .expect("rewrite smaller");
        for tenant in ["a", "b"] {
            cache.items.run_pending_tasks();
            let held = lock(&cache.shared).held(tenant);
            assert_eq!(held, recount(&cache, tenant), "tenant {tenant}");
            assert!(held > 0);
        }
    }

    #[tokio::test]
    async fn a_tenant_at_its_cap_creates_nothing_not_even_a_namespace_or_a_lease() {
        let cache = quota_store(4096);
        let a = Tenant::new("a").expect("tenant");
        let mut i = 0;
        while cache
            .set(&a, "ns", &[write(&format!("k{i}"), 500, &[])])
            .await
            .is_ok()
        {
            i += 1;
        }
        let held = lock(&cache.shared).held("a");
        for n in 0..100 {
            let ns = format!("fresh{n}");
            let refused = cache.set(&a, &ns, &[write("k", 1, &[])]).await;
            assert!(matches!(refused, Err(StoreError::Full(_))), "{refused:?}");
            let refused = cache.get(&a, &ns, "k", Some("token")).await;
            assert!(matches!(refused, Err(StoreError::Full(_))), "{refused:?}");
            assert_eq!(cache.generation(&a, &ns), None, "nothing created");
        }
        cache.items.run_pending_tasks();
        assert_eq!(lock(&cache.shared).held("a"), held);
        // Plain reads and invalidations still work for a full tenant.
        let hit = cache.get(&a, "ns", "k0", None).await.expect("get");
        assert_eq!(hit.freshness, Freshness::Fresh);
        cache
            .invalidate_tags(&a, "ns", &["x".to_owned()])
            .await
            .expect("invalidations are never refused");
    }

    #[tokio::test]
    async fn invalidating_a_namespace_frees_the_tenants_quota_and_the_space() {
        let cache = quota_store(8192);
        let a = Tenant::new("a").expect("tenant");
        for i in 0..6 {
            cache
                .set(&a, "ns", &[write(&format!("k{i}"), 1000, &[])])
                .await
                .expect("within the quota");
        }
        let full = cache.set(&a, "ns", &[write("more", 3000, &[])]).await;
        assert!(matches!(full, Err(StoreError::Full(_))), "{full:?}");
        cache
            .invalidate_namespace(&a, "ns")
            .await
            .expect("invalidate");
        cache
            .set(&a, "ns", &[write("more", 3000, &[])])
            .await
            .expect("room again at once");
        let expected = recount(&cache, "a");
        // (The guard must not be held across moka calls: its listener takes the same lock.)
        let held = lock(&cache.shared).held("a");
        assert_eq!(held, expected);
        // The old generation's entries are purged in the background, not kept to their TTL.
        for _ in 0..100 {
            cache.items.run_pending_tasks();
            let entries = cache
                .items
                .iter()
                .filter(|(_, v)| matches!(&**v, Item::Entry(_)))
                .count();
            if entries == 1 {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("the invalidated generation's entries were not purged");
    }
}
