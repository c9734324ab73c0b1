//! The cache in Redis.
//!
//! # Entries and time
//! An entry is a hash: `v` value, `e` fresh until, `s` stale until, both stamped by the store's
//! clock when it is written (`TIME` in `lua/set.lua`), and it expires at `s` (PEXPIRE,
//! relative). A plain read pipelines `HMGET v e s` with `TIME` and compares them: the store's
//! clock decides, never a replica's, and no script runs for a read. A lease is a separate key in
//! the entry's slot, `<granted at>:<token>` with the lease TTL, so granting one never stretches
//! the entry's life.
//!
//! # Layout
//! This file is the store and its [`CacheStore`] methods: plain reads, leased reads, writes and
//! deletes. Beside it, each part that has rules of its own:
//! - `generations.rs`: bucket generations, and running a call's commands on its buckets' current
//!   generations in one round trip (InvalidateNamespace starts new ones);
//! - `tags.rs`: tagged Sets (listed first, then written) and InvalidateTags (chunk by chunk);
//! - `tiered.rs`: the near tier in front of this store (`super::near` is the tier itself);
//! - `replies.rs`: what the scripts and commands answer, parsed.

mod generations;
mod replies;
mod tags;
mod tiered;

use std::{collections::HashMap, sync::Arc};

use parking_lot::RwLock;
use redis::Pipeline;

pub use self::tags::INVALIDATION_CHUNK;
use self::{
    generations::{GenerationRead, Known},
    replies::{count_ones, leased_lookup, lookup_from_hash, store_time, stored},
    tiered::Near,
};
use super::{
    model::{Condition, Lookup, Write},
    store::{CacheStore, CacheStoreSettings},
};
use crate::{
    store::{
        StoreError,
        redis::{RedisBackend, lua, scripts::LuaScript},
    },
    tenant::Tenant,
    time::Millis,
};

/// The cache scripts, registered by name.
struct Scripts {
    get: LuaScript,
    set: LuaScript,
    tag: LuaScript,
    delete: LuaScript,
    invalidate_tag: LuaScript,
    generation: LuaScript,
}

/// The cache in Redis.
pub struct RedisCacheStore {
    backend: RedisBackend,
    scripts: Scripts,
    settings: CacheStoreSettings,
    /// Bucket generations last seen, by generation key (see [`generations`]).
    generations: Arc<RwLock<HashMap<String, Known>>>,
    /// The near tier, when a namespace asks for it.
    near: Option<Near>,
}

impl RedisCacheStore {
    /// Registers the cache scripts with `backend`.
    pub fn new(backend: RedisBackend, settings: CacheStoreSettings) -> Result<Self, StoreError> {
        let scripts = Scripts {
            get: backend.register("cache.get", lua!("src/cache/lua/get.lua"))?,
            set: backend.register("cache.set", lua!("src/cache/lua/set.lua"))?,
            tag: backend.register("cache.tag", lua!("src/cache/lua/tag.lua"))?,
            delete: backend.register("cache.delete", lua!("src/cache/lua/delete.lua"))?,
            invalidate_tag: backend.register(
                "cache.invalidate_tag",
                lua!("src/cache/lua/invalidate_tag.lua"),
            )?,
            generation: backend
                .register("cache.generation", lua!("src/cache/lua/generation.lua"))?,
        };
        Ok(Self {
            backend,
            scripts,
            settings,
            generations: Arc::new(RwLock::new(HashMap::new())),
            near: None,
        })
    }

    /// Adds a lease-granting lookup (`get.lua`) to `pipe`.
    fn push_leased_get(
        &self,
        pipe: &mut Pipeline,
        tenant: &Tenant,
        namespace: &str,
        generation: u64,
        key: &str,
        token: &str,
    ) {
        let keys = self.backend.keys();
        pipe.cmd("EVALSHA")
            .arg(self.scripts.get.hash())
            .arg(2)
            .arg(keys.cache_entry(tenant, namespace, generation, key))
            .arg(keys.cache_lease(tenant, namespace, generation, key))
            .arg(token)
            .arg(self.settings.lease_ttl_ms);
    }

    /// Plain lookups: per bucket `HMGET v e s` per key, then `TIME` for that node's now (no
    /// script: a read changes nothing). One round trip with the generation reads.
    async fn read(
        &self,
        op: &'static str,
        tenant: &Tenant,
        namespace: &str,
        keys: &[&str],
    ) -> Result<Vec<Lookup>, StoreError> {
        let buckets = self
            .in_generations(
                op,
                tenant,
                namespace,
                GenerationRead::Read,
                keys,
                |g, items, pipe| {
                    for &i in items {
                        pipe.cmd("HMGET")
                            .arg(
                                self.backend
                                    .keys()
                                    .cache_entry(tenant, namespace, g, keys[i]),
                            )
                            .arg("v")
                            .arg("e")
                            .arg("s");
                    }
                    pipe.cmd("TIME");
                },
            )
            .await?;
        let mut lookups: Vec<Lookup> = keys.iter().map(|_| Lookup::miss()).collect();
        for b in buckets {
            if b.generation.is_none() {
                continue;
            }
            let mut replies = b.replies;
            let now = match replies.pop() {
                Some(time) => store_time(&time)?,
                None => return Err(StoreError::Protocol(format!("{op}: no TIME reply"))),
            };
            if replies.len() != b.items.len() {
                return Err(StoreError::Protocol(format!(
                    "{op}: {} replies for {} keys",
                    replies.len(),
                    b.items.len()
                )));
            }
            for (i, reply) in b.items.into_iter().zip(replies) {
                lookups[i] = lookup_from_hash(reply, now)?;
            }
        }
        Ok(lookups)
    }

    /// Adds one `set.lua` call to `pipe`; `invalidated` is the latest mark of its tags.
    fn push_set(
        &self,
        pipe: &mut Pipeline,
        tenant: &Tenant,
        namespace: &str,
        generation: u64,
        w: &Write,
        invalidated: Millis,
    ) {
        let keys = self.backend.keys();
        pipe.cmd("EVALSHA")
            .arg(self.scripts.set.hash())
            .arg(2)
            .arg(keys.cache_entry(tenant, namespace, generation, &w.key))
            .arg(keys.cache_lease(tenant, namespace, generation, &w.key))
            .arg(w.value.as_ref())
            .arg(w.ttl_ms)
            .arg(w.stale_ms)
            .arg(w.condition.code())
            .arg(w.lease_token.as_deref().unwrap_or(""))
            .arg(invalidated);
    }

    /// Adds a `delete.lua` call for `entry` (an entry key) to `pipe`: it deletes the entry and
    /// its lease and counts it when it held a value in its bucket's current generation. `None`
    /// for a key that is not one of the namespace's entries.
    fn push_delete(
        &self,
        pipe: &mut Pipeline,
        tenant: &Tenant,
        namespace: &str,
        entry: &[u8],
    ) -> Option<()> {
        let keys = self.backend.keys();
        let lease = keys.cache_lease_of(tenant, entry)?;
        let (generation_key, generation) = keys.cache_entry_generation(tenant, namespace, entry)?;
        pipe.cmd("EVALSHA")
            .arg(self.scripts.delete.hash())
            .arg(3)
            .arg(entry)
            .arg(lease)
            .arg(generation_key)
            .arg(generation);
        Some(())
    }
}

#[tonic::async_trait]
impl CacheStore for RedisCacheStore {
    async fn get(
        &self,
        tenant: &Tenant,
        namespace: &str,
        key: &str,
        lease_token: Option<&str>,
    ) -> Result<Lookup, StoreError> {
        if let Some(near) = self.near_for(namespace)
            && let Some(lookup) = self
                .near_get(near, tenant, namespace, key, lease_token.is_some())
                .await?
        {
            return Ok(lookup);
        }
        let Some(token) = lease_token else {
            let mut lookups = self.read("cache_get", tenant, namespace, &[key]).await?;
            return lookups
                .pop()
                .ok_or_else(|| StoreError::Protocol("cache_get: no reply".into()));
        };
        // A lease must live in a generation that exists: a lease request creates one.
        let buckets = self
            .in_generations(
                "cache_get",
                tenant,
                namespace,
                GenerationRead::Write,
                &[key],
                |g, _, pipe| {
                    self.push_leased_get(pipe, tenant, namespace, g, key, token);
                },
            )
            .await?;
        let reply = buckets
            .into_iter()
            .flat_map(|b| b.replies)
            .next()
            .ok_or_else(|| StoreError::Protocol("cache_get: no reply".into()))?;
        leased_lookup(reply, token)
    }

    async fn get_many(
        &self,
        tenant: &Tenant,
        namespace: &str,
        keys: &[String],
    ) -> Result<Vec<Lookup>, StoreError> {
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        let Some(near) = self.near_for(namespace) else {
            return self.read("cache_get_many", tenant, namespace, &keys).await;
        };
        // Near copies answer what they hold; the rest is read from Redis in one round trip
        // (not kept near: only single Gets fill the tier, over its tracking connection).
        let mut lookups: Vec<Option<Lookup>> = keys
            .iter()
            .map(|key| {
                let hit = self.near_hit(near, tenant, namespace, key);
                near.count(namespace, hit.is_some());
                hit
            })
            .collect();
        let missing: Vec<&str> = keys
            .iter()
            .zip(&lookups)
            .filter(|(_, l)| l.is_none())
            .map(|(k, _)| *k)
            .collect();
        if !missing.is_empty() {
            let mut read = self
                .read("cache_get_many", tenant, namespace, &missing)
                .await?
                .into_iter();
            for slot in lookups.iter_mut().filter(|l| l.is_none()) {
                *slot = read.next();
            }
        }
        lookups
            .into_iter()
            .map(|l| l.ok_or_else(|| StoreError::Protocol("cache_get_many: reply count".into())))
            .collect()
    }

    async fn set(
        &self,
        tenant: &Tenant,
        namespace: &str,
        writes: &[Write],
    ) -> Result<Vec<bool>, StoreError> {
        let keys: Vec<&str> = writes.iter().map(|w| w.key.as_str()).collect();
        let result = self.set_untracked(tenant, namespace, writes, &keys).await;
        self.near_forget(tenant, namespace, &keys);
        result
    }

    async fn delete(
        &self,
        tenant: &Tenant,
        namespace: &str,
        keys: &[String],
    ) -> Result<u64, StoreError> {
        let names: Vec<&str> = keys.iter().map(String::as_str).collect();
        let result = self.delete_untracked(tenant, namespace, &names).await;
        self.near_forget(tenant, namespace, &names);
        result
    }

    async fn invalidate_tags(
        &self,
        tenant: &Tenant,
        namespace: &str,
        tags: &[String],
    ) -> Result<u64, StoreError> {
        let result = self
            .invalidate_tags_untracked(tenant, namespace, tags)
            .await;
        self.near_forget_namespace(tenant, namespace);
        result
    }

    async fn invalidate_namespace(
        &self,
        tenant: &Tenant,
        namespace: &str,
    ) -> Result<(), StoreError> {
        let result = self.invalidate_namespace_untracked(tenant, namespace).await;
        self.near_forget_namespace(tenant, namespace);
        result
    }

    fn near_size(&self) -> Option<(u64, u64)> {
        self.near.as_ref().map(|n| n.tier.size())
    }
}

/// The writes themselves; the [`CacheStore`] methods above add the near tier's bookkeeping.
impl RedisCacheStore {
    async fn set_untracked(
        &self,
        tenant: &Tenant,
        namespace: &str,
        writes: &[Write],
        keys: &[&str],
    ) -> Result<Vec<bool>, StoreError> {
        if writes.iter().any(|w| !w.tags.is_empty()) {
            return self.set_tagged(tenant, namespace, writes).await;
        }
        let buckets = self
            .in_generations(
                "cache_set",
                tenant,
                namespace,
                GenerationRead::Write,
                keys,
                |g, items, pipe| {
                    for &i in items {
                        self.push_set(pipe, tenant, namespace, g, &writes[i], 0);
                    }
                },
            )
            .await?;
        let mut out = vec![false; writes.len()];
        for b in buckets {
            for (i, flag) in b.items.iter().zip(stored(&b.replies, b.items.len())?) {
                out[*i] = flag;
            }
        }
        Ok(out)
    }

    async fn delete_untracked(
        &self,
        tenant: &Tenant,
        namespace: &str,
        names: &[&str],
    ) -> Result<u64, StoreError> {
        let buckets = self
            .in_generations(
                "cache_delete",
                tenant,
                namespace,
                GenerationRead::Read,
                names,
                |g, items, pipe| {
                    for &i in items {
                        let entry = self
                            .backend
                            .keys()
                            .cache_entry(tenant, namespace, g, names[i]);
                        // Our own key: always one of the namespace's entries.
                        let _ = self.push_delete(pipe, tenant, namespace, entry.as_bytes());
                    }
                },
            )
            .await?;
        let mut deleted = 0;
        for b in buckets.iter().filter(|b| b.generation.is_some()) {
            deleted += count_ones(&b.replies)?;
        }
        Ok(deleted)
    }
}

impl Condition {
    /// Code used by `lua/set.lua`.
    fn code(self) -> u8 {
        match self {
            Condition::Always => 0,
            Condition::IfAbsent => 1,
            Condition::IfPresent => 2,
        }
    }
}
