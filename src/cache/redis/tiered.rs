//! The near tier in front of the Redis store ([`crate::cache::near`] is the tier itself): which
//! namespaces it serves, a Get answered from it or filled into it over its tracking connection,
//! and the copies a write through this replica drops at once.
//!
//! A near copy is served only under the bucket generation this replica last saw, and only once
//! a read over the tracking connection confirmed that generation (see [`Known`]'s `near_ok`):
//! an invalidated generation key, pushed by Redis, takes that trust away until the next
//! confirming read.

use std::{collections::HashMap, sync::Arc};

use redis::Value;

use super::{
    RedisCacheStore,
    generations::{Known, generation_reply},
    replies::{lookup_from_hash, store_time},
};
use crate::{
    cache::{
        config::CacheConfig,
        keys::bucket,
        model::{Freshness, Lookup},
        near::{self, NearCache, NearHit},
    },
    store::StoreError,
    tenant::Tenant,
};

/// The near tier and the namespaces it serves.
pub(super) struct Near {
    pub(super) tier: NearCache,
    /// Which namespaces are near (`CacheConfig::is_near`).
    config: CacheConfig,
    /// `flowstate_cache_near_requests_total` by near namespace (others as `_other`), [miss, hit].
    counters: HashMap<String, [metrics::Counter; 2]>,
    other: [metrics::Counter; 2],
}

impl Near {
    fn new(tier: NearCache, config: &CacheConfig) -> Self {
        let counter = |namespace: &str, result: &'static str| {
            metrics::counter!(
                "flowstate_cache_near_requests_total",
                "namespace" => namespace.to_owned(),
                "result" => result
            )
        };
        let counters = config
            .namespaces
            .iter()
            .filter(|(_, policy)| policy.near)
            .map(|(name, _)| (name.clone(), [counter(name, "miss"), counter(name, "hit")]))
            .collect();
        Self {
            tier,
            config: config.clone(),
            counters,
            other: [counter("_other", "miss"), counter("_other", "hit")],
        }
    }

    fn serves(&self, namespace: &str) -> bool {
        self.config.is_near(namespace)
    }

    pub(super) fn count(&self, namespace: &str, hit: bool) {
        let pair = self.counters.get(namespace).unwrap_or(&self.other);
        pair[usize::from(hit)].increment(1);
    }
}

/// A key's place for the near tier (see [`RedisCacheStore::near_place`]).
struct NearPlace {
    generation_key: String,
    known: Known,
    entry_key: String,
}

impl RedisCacheStore {
    /// Adds the near tier (`cache.near_max_bytes`, `cache.near_max_staleness`) for the
    /// namespaces with `near = true`; without any, nothing changes.
    #[must_use]
    pub fn with_near(mut self, config: &CacheConfig) -> Self {
        if !config.any_near() {
            return self;
        }
        let generations = Arc::downgrade(&self.generations);
        // A generation key Redis says changed (a new generation, or only its TTL refreshed) is
        // kept, with when this replica refreshed it, but near hits under it wait until a read
        // over the tracking connection confirms it: forgetting it would make the next write
        // refresh its TTL again, which Redis reports as a change again, to every replica.
        let doubt = move |key: Option<&str>| {
            let Some(generations) = generations.upgrade() else {
                return;
            };
            let mut map = match key {
                // Only generation keys are remembered; most invalidated keys are entries.
                Some(key) if !key.contains(":cg:") => return,
                _ => generations.write(),
            };
            match key {
                Some(key) => {
                    if let Some(known) = map.get_mut(key) {
                        known.near_ok = false;
                    }
                }
                None => map.values_mut().for_each(|known| known.near_ok = false),
            }
        };
        let tier = NearCache::new(
            self.backend.clone(),
            config.near_max_bytes,
            config.near_max_staleness,
            Box::new(doubt),
        );
        self.near = Some(Near::new(tier, config));
        self
    }

    /// The near tier, if `namespace` is served from it.
    pub(super) fn near_for(&self, namespace: &str) -> Option<&Near> {
        self.near.as_ref().filter(|n| n.serves(namespace))
    }

    /// A Get answered near: a fresh hit with no Redis call, or, on a near miss, a read over the
    /// tracking connection that keeps a fresh value. `None`: answer through the pool (the
    /// bucket's generation is not known yet, the tracking connection is down, the generation
    /// changed, or a leased Get found no fresh value and needs its lease script).
    pub(super) async fn near_get(
        &self,
        near: &Near,
        tenant: &Tenant,
        namespace: &str,
        key: &str,
        leased: bool,
    ) -> Result<Option<Lookup>, StoreError> {
        let Some(NearPlace {
            generation_key,
            known,
            entry_key,
        }) = self.near_place(tenant, namespace, key)
        else {
            near.count(namespace, false);
            return Ok(None);
        };
        if known.near_ok
            && let Some(hit) = near.tier.get(&entry_key)
        {
            near.count(namespace, true);
            return Ok(Some(hit.lookup()));
        }
        let Some(_filling) = near.tier.fill(&entry_key).await else {
            // Another call was filling it: its value, if it kept one (and with it confirmed
            // this generation).
            let hit = self
                .known(&generation_key)
                .filter(|k| k.near_ok && k.generation == known.generation)
                .and_then(|_| near.tier.get(&entry_key));
            near.count(namespace, hit.is_some());
            return Ok(hit.map(NearHit::lookup));
        };
        near.count(namespace, false);
        let mut pipe = redis::pipe();
        pipe.cmd("GET").arg(&generation_key);
        pipe.cmd("HMGET").arg(&entry_key).arg("v").arg("e").arg("s");
        pipe.cmd("TIME");
        let (replies, ticket) = match near.tier.read(&pipe).await {
            None => return Ok(None),
            Some(Ok(read)) => read,
            Some(Err(e)) => {
                tracing::debug!(error = %e, "near cache read failed; reading through the pool");
                return Ok(None);
            }
        };
        let [generation, hash, time]: [Value; 3] = replies
            .try_into()
            .map_err(|_| StoreError::Protocol("cache_get_near: three replies expected".into()))?;
        if generation_reply(generation)? != Some(known.generation) {
            // Changed under us (an InvalidateNamespace elsewhere): the pool path relearns it.
            return Ok(None);
        }
        let lookup = lookup_from_hash(hash, store_time(&time)?)?;
        if lookup.freshness != Freshness::Fresh {
            // A plain Get has its answer; a leased one needs the lease script.
            return Ok((!leased).then_some(lookup));
        }
        let generations = &self.generations;
        let confirm = || Self::confirm_generation(generations, &generation_key, known.generation);
        near.tier.keep(
            ticket,
            near::Fill {
                entry_key: &entry_key,
                generation_key: &generation_key,
                scope: &near::scope(tenant, namespace),
                confirm: &confirm,
            },
            lookup.value.clone(),
            lookup.fresh_ms,
        );
        Ok(Some(lookup))
    }

    /// The near copy of `key`, if the tier holds one under a confirmed generation.
    pub(super) fn near_hit(
        &self,
        near: &Near,
        tenant: &Tenant,
        namespace: &str,
        key: &str,
    ) -> Option<Lookup> {
        let place = self.near_place(tenant, namespace, key)?;
        if !place.known.near_ok {
            return None;
        }
        near.tier.get(&place.entry_key).map(NearHit::lookup)
    }

    /// Where `key` lives now as far as this replica knows: its bucket's generation key, the
    /// generation it last saw there, and the entry key under it (`None`: no generation known).
    fn near_place(&self, tenant: &Tenant, namespace: &str, key: &str) -> Option<NearPlace> {
        let keys = self.backend.keys();
        let generation_key = keys.cache_bucket_generation(tenant, namespace, bucket(key));
        let known = self.known(&generation_key)?;
        Some(NearPlace {
            entry_key: keys.cache_entry(tenant, namespace, known.generation, key),
            generation_key,
            known,
        })
    }

    /// After a write through this replica: drops this replica's near copies of `keys` at once
    /// (the other replicas hear from Redis).
    pub(super) fn near_forget(&self, tenant: &Tenant, namespace: &str, keys: &[&str]) {
        let Some(near) = self.near_for(namespace) else {
            return;
        };
        let mut entry_keys = Vec::with_capacity(keys.len());
        for key in keys {
            let Some(place) = self.near_place(tenant, namespace, key) else {
                // The memo was cleared meanwhile: which copy to drop is unknown, so all of the
                // namespace's go.
                near.tier.invalidate_scope(&near::scope(tenant, namespace));
                return;
            };
            entry_keys.push(place.entry_key);
        }
        near.tier.invalidate(&entry_keys);
    }

    /// After InvalidateTags or InvalidateNamespace through this replica: drops every near copy
    /// of the namespace here.
    pub(super) fn near_forget_namespace(&self, tenant: &Tenant, namespace: &str) {
        if let Some(near) = self.near_for(namespace) {
            near.tier.invalidate_scope(&near::scope(tenant, namespace));
        }
    }
}
