//! What the in-memory cache's one moka cache holds (entries, namespace generations, tag
//! invalidation marks), when each expires on the store's clock, and what each weighs: the
//! weight is what `cache.memory_max_bytes` and the tenants' `quota.memory_cache_bytes` count,
//! so it includes an entry's tag listings held beside it.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use moka::Expiry;

use crate::{store::memory::Clock, time::Millis};

/// Fixed bytes charged per item and per tag listing for the containers holding them.
pub(super) const ITEM_OVERHEAD: usize = 128;
pub(super) const LISTING_OVERHEAD: usize = 48;
/// Bytes a generation or a mark holds beside its key (number or times, tenant handle).
pub(super) const SMALL_ITEM: usize = 16;

/// A lease on a key: who holds it, since when, until when (store clock).
#[derive(Debug, Clone)]
pub(super) struct LeaseHeld {
    pub(super) token: String,
    pub(super) granted_at: Millis,
    pub(super) until: Millis,
}

/// One cached key: a value (absent while only a lease exists) and an optional lease.
#[derive(Debug, Clone)]
pub(super) struct Entry {
    pub(super) value: Option<Bytes>,
    pub(super) fresh_until: Millis,
    pub(super) stale_until: Millis,
    pub(super) lease: Option<LeaseHeld>,
    /// Tag-index keys this entry is listed under, so its removal can unlist it.
    pub(super) tags: Arc<[String]>,
    pub(super) namespace: Arc<str>,
    /// The namespace generation it was written in (its key holds the same number).
    pub(super) generation: u64,
    /// Whose bytes it counts against (`quota.memory_cache_bytes`).
    pub(super) tenant: Arc<str>,
}

impl Entry {
    pub(super) fn fresh(&self, now: Millis) -> bool {
        self.value.is_some() && now < self.fresh_until
    }

    pub(super) fn stale(&self, now: Millis) -> bool {
        self.value.is_some() && self.fresh_until <= now && now < self.stale_until
    }

    pub(super) fn servable(&self, now: Millis) -> bool {
        self.value.is_some() && now < self.stale_until
    }
}

/// What the moka cache holds.
#[derive(Debug, Clone)]
pub(super) enum Item {
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
pub(super) struct ByDeadline {
    pub(super) clock: Clock,
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
pub(super) fn weight(key: &str, item: &Item) -> u32 {
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
pub(super) fn lease_weight(key: &str, token: &str) -> i64 {
    i64::try_from(key.len() + token.len() + ITEM_OVERHEAD).unwrap_or(i64::MAX)
}
