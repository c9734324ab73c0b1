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
//!
//! # Layout
//! This file is the store and its operations; `items.rs` is what the moka cache holds and what
//! each item weighs, `accounting.rs` the bytes charged to tenants and generations and the tag
//! listings (kept beside the cache, under one lock), `tests.rs` their unit tests.

mod accounting;
mod items;
#[cfg(test)]
mod tests;

use std::{
    collections::HashSet,
    sync::{
        Arc,
        atomic::{AtomicI64, AtomicU64, Ordering},
    },
};

use moka::{ops::compute::Op, sync::Cache};
use parking_lot::{Mutex, MutexGuard};

use self::{
    accounting::{Shared, unlist},
    items::{
        ByDeadline, Entry, ITEM_OVERHEAD, Item, LISTING_OVERHEAD, LeaseHeld, SMALL_ITEM,
        lease_weight, weight,
    },
};
use super::{
    model::{Condition, Freshness, Lease, Lookup, Write},
    store::{CacheStore, CacheStoreSettings},
};
use crate::{
    auth::config::QuotaConfig,
    store::{
        StoreError,
        keys::Keys,
        memory::{Clock, MemoryBackend},
    },
    tenant::Tenant,
    time::Millis,
};

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
                if let Some(shared) = listener_shared.upgrade() {
                    shared.lock().removed(&key, &item, cause, &listener_marks);
                }
            })
            .build();
        backend.tally("cache", {
            let items = items.clone();
            move || {
                // Expired entries and pending evictions settle first, as Redis forgets an
                // expired key: what is left is what the cache really holds.
                items.run_pending_tasks();
                items.weighted_size()
            }
        });
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
            self.shared
                .lock()
                .account(&item, i64::from(weight(&key, &item)));
        }
        number
    }

    /// Refuses growing `tenant` by `grow` bytes past its `quota.memory_cache_bytes`.
    fn check_room(&self, tenant: &Tenant, grow: i64) -> Result<(), StoreError> {
        let cap = self.quotas.for_tenant(tenant.as_str()).memory_cache_bytes;
        if cap == 0 || grow <= 0 {
            return Ok(());
        }
        let held = self.shared.lock().held(tenant.as_str());
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
            self.shared
                .lock()
                .account(&item, i64::from(weight(key, &item)));
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
        let mut shared = self.shared.lock();
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
        self.writes.lock()
    }
}

/// Where an entry lives: its tenant, namespace and generation.
#[derive(Clone, Copy)]
struct Place<'a> {
    tenant: &'a Tenant,
    namespace: &'a str,
    generation: u64,
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
            self.shared.lock().account(&mark, bytes);
        }
        let keys: HashSet<String> = {
            let mut shared = self.shared.lock();
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
        self.shared.lock().account(&next, bytes);
        if let Some(old) = old {
            self.shared.lock().retire(&owner, old);
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
        self.shared
            .lock()
            .evictions
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect()
    }
}
