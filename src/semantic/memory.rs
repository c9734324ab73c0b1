//! The in-memory semantic cache store: one index per tenant and namespace, entries beside it,
//! with the Redis store's semantics (store clock, TTLs, eviction of the entry closest to its
//! expiry, the memory budget).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
};

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};

use super::{
    index::{SearchPlan, VectorIndex},
    store::{CANDIDATES, Entry, Found, SemanticStore, Space, Stored},
};
use crate::{
    store::{
        StoreError,
        memory::{Budget, Clock, MemoryBackend},
    },
    time::Millis,
};

/// Bytes an entry costs beyond its vector, value and labels.
const ENTRY_OVERHEAD: usize = 160;

struct Held {
    value: Bytes,
    metadata: BTreeMap<String, String>,
    expires: Millis,
    bytes: usize,
}

struct Namespace {
    index: VectorIndex,
    entries: HashMap<u64, Held>,
    /// Entries by expiry: the expired ones first, then the next to evict.
    order: BTreeSet<(Millis, u64)>,
    next_id: u64,
}

impl Namespace {
    fn remove(&mut self, id: u64, budget: &Budget) -> bool {
        let Some(held) = self.entries.remove(&id) else {
            return false;
        };
        self.order.remove(&(held.expires, id));
        self.index.remove(id);
        budget.release(held.bytes);
        true
    }

    /// Drops every entry expired at `now`.
    fn expire(&mut self, now: Millis, budget: &Budget) {
        while let Some(&(at, id)) = self.order.first() {
            if at > now {
                break;
            }
            self.remove(id, budget);
        }
    }
}

/// The semantic cache in process memory.
pub struct MemorySemanticStore {
    spaces: Mutex<HashMap<String, Arc<RwLock<Namespace>>>>,
    clock: Clock,
    budget: Budget,
}

impl MemorySemanticStore {
    /// A store on `backend`'s clock and memory budget.
    pub fn new(backend: &MemoryBackend) -> Self {
        Self {
            spaces: Mutex::new(HashMap::new()),
            clock: backend.clock().clone(),
            budget: backend.budget().clone(),
        }
    }

    fn space(&self, space: Space<'_>, create: bool) -> Option<Arc<RwLock<Namespace>>> {
        let key = format!("{}\u{0}{}", space.tenant.as_str(), space.namespace);
        let mut spaces = self.spaces.lock();
        if let Some(ns) = spaces.get(&key) {
            return Some(ns.clone());
        }
        if !create {
            return None;
        }
        let ns = Arc::new(RwLock::new(Namespace {
            index: VectorIndex::new(space.dimension),
            entries: HashMap::new(),
            order: BTreeSet::new(),
            next_id: 0,
        }));
        spaces.insert(key, ns.clone());
        Some(ns)
    }
}

#[tonic::async_trait]
impl SemanticStore for MemorySemanticStore {
    async fn set(&self, space: Space<'_>, entry: Entry) -> Result<Stored, StoreError> {
        let Some(ns) = self.space(space, true) else {
            return Err(StoreError::Protocol("namespace not created".into()));
        };
        let mut ns = ns.write();
        let now = self.clock.now();
        ns.expire(now, &self.budget);
        let mut evicted = 0u32;
        while ns.entries.len() as u64 >= entry.max_entries {
            let Some(&(_, id)) = ns.order.first() else {
                break;
            };
            ns.remove(id, &self.budget);
            evicted += 1;
        }
        let bytes = entry.vector.len() * 4
            + entry.value.len()
            + entry
                .metadata
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
            + ENTRY_OVERHEAD;
        self.budget.charge(bytes)?;
        ns.next_id += 1;
        let id = ns.next_id;
        let expires = now.saturating_add(entry.ttl_ms);
        ns.index.upsert(id, &entry.vector);
        ns.order.insert((expires, id));
        ns.entries.insert(
            id,
            Held {
                value: entry.value,
                metadata: entry.metadata,
                expires,
                bytes,
            },
        );
        Ok(Stored { id, evicted })
    }

    async fn get(
        &self,
        space: Space<'_>,
        query: &[f32],
        min_similarity: f32,
        plan: SearchPlan,
    ) -> Result<Option<Found>, StoreError> {
        let Some(ns) = self.space(space, false) else {
            return Ok(None);
        };
        let now = self.clock.now();
        let lookup = |ns: &Namespace| {
            let candidates = ns.index.search(query, min_similarity, CANDIDATES, plan);
            let expired = candidates
                .iter()
                .any(|(id, _)| ns.entries.get(id).is_none_or(|h| h.expires <= now));
            let found = candidates.into_iter().find_map(|(id, similarity)| {
                let held = ns.entries.get(&id).filter(|h| h.expires > now)?;
                Some(Found {
                    id,
                    similarity,
                    value: held.value.clone(),
                    metadata: held.metadata.clone(),
                    ttl_ms: held.expires - now,
                })
            });
            (found, expired)
        };
        let (found, expired) = lookup(&ns.read());
        if found.is_some() || !expired {
            return Ok(found);
        }
        // Expired entries took the best places: drop them (as the Redis store drops what it
        // found gone) and look again.
        let mut ns = ns.write();
        ns.expire(now, &self.budget);
        Ok(lookup(&ns).0)
    }

    async fn delete(&self, space: Space<'_>, id: u64) -> Result<bool, StoreError> {
        let Some(ns) = self.space(space, false) else {
            return Ok(false);
        };
        let mut ns = ns.write();
        ns.expire(self.clock.now(), &self.budget);
        Ok(ns.remove(id, &self.budget))
    }

    fn index_size(&self) -> (u64, u64) {
        let spaces: Vec<_> = self.spaces.lock().values().cloned().collect();
        spaces.iter().fold((0, 0), |(n, b), ns| {
            let ns = ns.read();
            (n + ns.index.len() as u64, b + ns.index.bytes() as u64)
        })
    }
}
