//! The in-memory cache's accounting, beside its moka cache: the bytes charged to each tenant
//! and held by each generation, the tag listings, and the evictions counted by namespace. Kept
//! under one lock that the cache's eviction listener takes too ([`Shared::removed`]), so the
//! counts follow every insertion and every removal, whoever made it.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc,
        atomic::{AtomicI64, Ordering},
    },
};

use moka::notification::RemovalCause;

use super::items::{Item, weight};

/// Namespaces whose evictions are counted under their own name; the rest share `_other`.
pub(super) const MAX_EVICTION_LABELS: usize = 128;

/// Bytes of one generation's entries.
#[derive(Default)]
pub(super) struct GenerationBytes {
    pub(super) bytes: i64,
    /// No longer its namespace's: its entries are unreachable and not charged to the tenant.
    pub(super) retired: bool,
}

/// State beside the moka cache, shared with its eviction listener. Never hold its lock across
/// a call into the moka cache: any call may run housekeeping, whose listener takes the lock.
///
/// Byte counts are signed: an eviction can be reported before the insertion that caused it is
/// charged, and the counts must come back to the truth once both are in.
#[derive(Default)]
pub(super) struct Shared {
    /// Tag-index key → entry keys listed under it.
    pub(super) tags: HashMap<String, HashSet<String>>,
    /// Namespace → entries evicted for space.
    pub(super) evictions: HashMap<Arc<str>, u64>,
    /// Tenant → bytes charged to it.
    pub(super) tenant_bytes: HashMap<Arc<str>, i64>,
    /// Generation number → bytes of its entries still held.
    pub(super) generation_bytes: HashMap<u64, GenerationBytes>,
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
    pub(super) fn account(&mut self, item: &Item, bytes: i64) {
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
    pub(super) fn retire(&mut self, tenant: &Arc<str>, generation: u64) {
        if let Some(g) = self.generation_bytes.get_mut(&generation)
            && !g.retired
        {
            g.retired = true;
            let bytes = g.bytes;
            self.add_to_tenant(tenant, -bytes);
        }
    }

    pub(super) fn held(&self, tenant: &str) -> i64 {
        self.tenant_bytes.get(tenant).copied().unwrap_or(0).max(0)
    }

    /// `item` left the cache under `key` for `cause` (the eviction listener: called by moka's
    /// housekeeping, so it must not call into the cache). Releases its bytes, unlists an entry
    /// that went for good, counts evictions for space by namespace, retires a generation that
    /// expired or was evicted, and raises `evicted_marks` past a mark evicted for space.
    pub(super) fn removed(
        &mut self,
        key: &str,
        item: &Item,
        cause: RemovalCause,
        evicted_marks: &AtomicI64,
    ) {
        self.account(item, -i64::from(weight(key, item)));
        match item {
            Item::Entry(entry) => {
                if cause != RemovalCause::Replaced {
                    unlist(self, key, &entry.tags);
                }
                if cause == RemovalCause::Size {
                    let label = if self.evictions.len() < MAX_EVICTION_LABELS
                        || self.evictions.contains_key(&entry.namespace)
                    {
                        entry.namespace.clone()
                    } else {
                        Arc::from("_other")
                    };
                    *self.evictions.entry(label).or_default() += 1;
                }
            }
            // Replaced: renewed, or invalidate_namespace retires it itself.
            Item::Generation { number, tenant, .. } if cause != RemovalCause::Replaced => {
                self.retire(tenant, *number);
            }
            Item::Mark { at, .. } if cause == RemovalCause::Size => {
                evicted_marks.fetch_max(*at, Ordering::AcqRel);
            }
            Item::Generation { .. } | Item::Mark { .. } => {}
        }
    }
}

/// Removes `key` from the listings of `tags`.
pub(super) fn unlist(shared: &mut Shared, key: &str, tags: &[String]) {
    for tag in tags {
        if let Some(keys) = shared.tags.get_mut(tag) {
            keys.remove(key);
            if keys.is_empty() {
                shared.tags.remove(tag);
            }
        }
    }
}
