//! The Redis store's cache operations.
//!
//! # One round trip, Cluster-ready
//! An entry's key embeds its namespace's generation (`InvalidateNamespace` increments it, so old
//! entries are never seen again and simply expire). Reading the generation and then the entry
//! would be two round trips, and one script touching both would span two Cluster slots. So each
//! call pipelines `GET generation` with the operation on the generation this process last saw;
//! when Redis answers with another generation (after an invalidation) the operation is sent once
//! more on the new one. Work sent to a stale generation is harmless: it lands on keys nobody
//! reads, which expire.
//!
//! # Tags
//! A Set pipelines, after the entry's script, one small script per tag that lists the entry key
//! in the tag's index (a sorted set pruned of dead members, same slot). Entry first, then index:
//! an InvalidateTags running in between leaves the entry listed, so a later one still finds it.
//! A write that its condition or lease may refuse lists its tags in a second round trip, only
//! once stored, so a refused write never lists another writer's value. InvalidateTags takes
//! each index (members and removal in one script), then deletes the entries. An entry set again
//! with other tags stays listed under its old ones until they are pruned or invalidated: that
//! can only cause an extra miss, never a stale read.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
};

use bytes::Bytes;
use redis::{Pipeline, Value};

use super::{
    model::{Condition, Freshness, Lease, Lookup, Write},
    store::CacheStore,
};
use crate::{
    store::{
        StoreError,
        redis::{
            RedisBackend,
            reply::{self, int},
            scripts::LuaScript,
        },
    },
    tenant::Tenant,
    time::{Millis, now_ms},
};

/// Generations remembered per process before the memo is cleared (bounds unknown namespaces).
const MAX_REMEMBERED_GENERATIONS: usize = 10_000;

/// The cache scripts, registered by name.
struct Scripts {
    get: LuaScript,
    set: LuaScript,
    tag: LuaScript,
    delete: LuaScript,
    tag_take: LuaScript,
    invalidate_namespace: LuaScript,
}

/// The cache in Redis.
pub struct RedisCacheStore {
    backend: RedisBackend,
    scripts: Scripts,
    /// Namespace generations last seen (see the module docs).
    generations: Arc<RwLock<HashMap<String, u64>>>,
}

impl RedisCacheStore {
    /// Registers the cache scripts with `backend`.
    pub fn new(backend: RedisBackend) -> Result<Self, StoreError> {
        let scripts = Scripts {
            get: backend.register("cache.get", include_str!("lua/get.lua"))?,
            set: backend.register("cache.set", include_str!("lua/set.lua"))?,
            tag: backend.register("cache.tag", include_str!("lua/tag.lua"))?,
            delete: backend.register("cache.delete", include_str!("lua/delete.lua"))?,
            tag_take: backend.register("cache.tag_take", include_str!("lua/tag_take.lua"))?,
            invalidate_namespace: backend.register(
                "cache.invalidate_namespace",
                include_str!("lua/invalidate_namespace.lua"),
            )?,
        };
        Ok(Self {
            backend,
            scripts,
            generations: Arc::new(RwLock::new(HashMap::new())),
        })
    }

    fn known_generation(&self, key: &str) -> u64 {
        self.generations
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .copied()
            .unwrap_or(0)
    }

    fn remember_generation(&self, key: &str, generation: u64) {
        let mut map = self.generations.write().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_REMEMBERED_GENERATIONS {
            map.clear();
        }
        map.insert(key.to_owned(), generation);
    }

    /// Runs `build`'s commands against the namespace's current generation (see the module docs);
    /// returns their replies.
    /// Returns the generation used and the replies.
    async fn in_generation(
        &self,
        op: &'static str,
        tenant: &Tenant,
        namespace: &str,
        build: impl Fn(u64, &mut Pipeline),
    ) -> Result<(u64, Vec<Value>), StoreError> {
        let generation_key = self.backend.keys().cache_generation(tenant, namespace);
        let mut generation = self.known_generation(&generation_key);
        for _ in 0..3 {
            let mut pipe = redis::pipe();
            pipe.cmd("GET").arg(&generation_key);
            build(generation, &mut pipe);
            let mut replies = self.backend.pipeline(op, &pipe).await?;
            if replies.is_empty() {
                return Err(StoreError::Protocol("empty pipeline reply".into()));
            }
            let current =
                match replies.remove(0) {
                    Value::Nil => 0,
                    Value::BulkString(b) => std::str::from_utf8(&b)
                        .ok()
                        .and_then(|s| s.parse().ok())
                        .ok_or_else(|| StoreError::Protocol("non-numeric generation".into()))?,
                    other => return Err(reply::unexpected("generation", "a number", &other)),
                };
            if current == generation {
                return Ok((generation, replies));
            }
            self.remember_generation(&generation_key, current);
            generation = current;
        }
        Err(StoreError::Unavailable(
            "namespace generation changed during three attempts".into(),
        ))
    }

    /// Reads entries with `HMGET v e s` (no script: nothing to change), one round trip.
    async fn read_entries(
        &self,
        op: &'static str,
        tenant: &Tenant,
        namespace: &str,
        keys: &[impl AsRef<str>],
        now: Millis,
    ) -> Result<Vec<Lookup>, StoreError> {
        let (_, replies) = self
            .in_generation(op, tenant, namespace, |generation, pipe| {
                for key in keys {
                    pipe.cmd("HMGET")
                        .arg(self.backend.keys().cache_entry(
                            tenant,
                            namespace,
                            generation,
                            key.as_ref(),
                        ))
                        .arg("v")
                        .arg("e")
                        .arg("s");
                }
            })
            .await?;
        replies
            .into_iter()
            .map(|r| lookup_from_hash(r, now))
            .collect()
    }
}

#[tonic::async_trait]
impl CacheStore for RedisCacheStore {
    async fn get(
        &self,
        tenant: &Tenant,
        namespace: &str,
        key: &str,
        now: Millis,
        lease: Option<(&str, Millis)>,
    ) -> Result<Lookup, StoreError> {
        // A plain read needs no script: HMGET is cheaper for Redis than running Lua.
        let Some((token, lease_ttl)) = lease else {
            let mut lookups = self
                .read_entries("cache_get", tenant, namespace, &[key], now)
                .await?;
            return lookups
                .pop()
                .ok_or_else(|| StoreError::Protocol("cache_get: no reply".into()));
        };
        let script = self.scripts.get.hash();
        let (_, replies) = self
            .in_generation("cache_get", tenant, namespace, |generation, pipe| {
                pipe.cmd("EVALSHA")
                    .arg(script)
                    .arg(1)
                    .arg(
                        self.backend
                            .keys()
                            .cache_entry(tenant, namespace, generation, key),
                    )
                    .arg(now)
                    .arg(token)
                    .arg(lease_ttl);
            })
            .await?;
        let Some(Value::Array(reply)) = replies.into_iter().next() else {
            return Err(StoreError::Protocol("cache_get: no reply".into()));
        };
        let [state, value, fresh_until, lease_state] = <[Value; 4]>::try_from(reply)
            .map_err(|_| StoreError::Protocol("cache_get: expected four values".into()))?;
        let freshness = match int(&state)? {
            1 => Freshness::Fresh,
            2 => Freshness::Stale,
            _ => Freshness::Miss,
        };
        Ok(Lookup {
            freshness,
            value: match value {
                Value::BulkString(b) => Bytes::from(b),
                _ => Bytes::new(),
            },
            fresh_until: int(&fresh_until)?,
            lease: match int(&lease_state)? {
                1 => Lease::Granted(token.to_owned()),
                2 => Lease::Wait,
                _ => Lease::None,
            },
        })
    }

    async fn get_many(
        &self,
        tenant: &Tenant,
        namespace: &str,
        keys: &[String],
        now: Millis,
    ) -> Result<Vec<Lookup>, StoreError> {
        self.read_entries("cache_get_many", tenant, namespace, keys, now)
            .await
    }

    async fn set(
        &self,
        tenant: &Tenant,
        namespace: &str,
        writes: &[Write],
        now: Millis,
    ) -> Result<Vec<bool>, StoreError> {
        let set = self.scripts.set.hash();
        let tag = self.scripts.tag.hash();
        // A write that cannot be refused lists its tags in the same round trip.
        let unconditional = |w: &Write| w.condition == Condition::Always && w.lease_token.is_none();
        let list_tags = |pipe: &mut Pipeline, entry: &str, w: &Write| {
            for t in &w.tags {
                pipe.cmd("EVALSHA")
                    .arg(tag)
                    .arg(1)
                    .arg(self.backend.keys().cache_tag(tenant, namespace, t))
                    .arg(now)
                    .arg(entry)
                    .arg(w.stale_until)
                    .ignore();
            }
        };
        let (generation, replies) = self
            .in_generation("cache_set", tenant, namespace, |generation, pipe| {
                for w in writes {
                    let entry = self
                        .backend
                        .keys()
                        .cache_entry(tenant, namespace, generation, &w.key);
                    pipe.cmd("EVALSHA")
                        .arg(set)
                        .arg(1)
                        .arg(&entry)
                        .arg(now)
                        .arg(w.value.as_ref())
                        .arg(w.fresh_until)
                        .arg(w.stale_until)
                        .arg(w.condition.code())
                        .arg(w.lease_token.as_deref().unwrap_or(""));
                    if unconditional(w) {
                        list_tags(pipe, &entry, w);
                    }
                }
            })
            .await?;
        if replies.len() != writes.len() {
            return Err(StoreError::Protocol(format!(
                "cache_set: {} replies for {} writes",
                replies.len(),
                writes.len()
            )));
        }
        let stored = replies
            .iter()
            .map(|r| Ok(int(r)? == 1))
            .collect::<Result<Vec<bool>, StoreError>>()?;
        // Conditional or leased writes that were stored list their tags now.
        let mut pipe = redis::pipe();
        let mut pending = false;
        for (w, _) in writes
            .iter()
            .zip(&stored)
            .filter(|(w, ok)| **ok && !w.tags.is_empty() && !unconditional(w))
        {
            let entry = self
                .backend
                .keys()
                .cache_entry(tenant, namespace, generation, &w.key);
            list_tags(&mut pipe, &entry, w);
            pending = true;
        }
        if pending {
            self.backend.pipeline("cache_set_tags", &pipe).await?;
        }
        Ok(stored)
    }

    async fn delete(
        &self,
        tenant: &Tenant,
        namespace: &str,
        keys: &[String],
    ) -> Result<u64, StoreError> {
        let now = now_ms();
        let script = self.scripts.delete.hash();
        let (_, replies) = self
            .in_generation("cache_delete", tenant, namespace, |generation, pipe| {
                // One script per key: the keys live in different slots.
                for key in keys {
                    pipe.cmd("EVALSHA")
                        .arg(script)
                        .arg(1)
                        .arg(
                            self.backend
                                .keys()
                                .cache_entry(tenant, namespace, generation, key),
                        )
                        .arg(now);
                }
            })
            .await?;
        count_ones(&replies)
    }

    async fn invalidate_tags(
        &self,
        tenant: &Tenant,
        namespace: &str,
        tags: &[String],
    ) -> Result<u64, StoreError> {
        let now = now_ms();
        let tag_keys: Vec<String> = tags
            .iter()
            .map(|t| self.backend.keys().cache_tag(tenant, namespace, t))
            .collect();
        // Round trip 1: take every tag index (live members read and index removed atomically).
        let take = self.scripts.tag_take.hash();
        let mut pipe = redis::pipe();
        for key in &tag_keys {
            pipe.cmd("EVALSHA").arg(take).arg(1).arg(key).arg(now);
        }
        let mut members: Vec<Vec<u8>> = Vec::new();
        for reply in self
            .backend
            .pipeline("cache_invalidate_tags", &pipe)
            .await?
        {
            if let Value::Array(items) = reply {
                members.extend(items.into_iter().filter_map(|v| match v {
                    Value::BulkString(b) => Some(b),
                    _ => None,
                }));
            }
        }
        members.sort_unstable();
        members.dedup();
        if members.is_empty() {
            return Ok(0);
        }
        // Round trip 2: delete the entries, one script each (they live in different slots),
        // counting those that still held a servable value.
        let delete = self.scripts.delete.hash();
        let mut pipe = redis::pipe();
        for m in &members {
            pipe.cmd("EVALSHA")
                .arg(delete)
                .arg(1)
                .arg(m.as_slice())
                .arg(now);
        }
        let replies = self
            .backend
            .pipeline("cache_invalidate_tags", &pipe)
            .await?;
        count_ones(&replies)
    }

    async fn invalidate_namespace(
        &self,
        tenant: &Tenant,
        namespace: &str,
        keep_ms: Millis,
    ) -> Result<(), StoreError> {
        let key = self.backend.keys().cache_generation(tenant, namespace);
        let mut pipe = redis::pipe();
        pipe.cmd("EVALSHA")
            .arg(self.scripts.invalidate_namespace.hash())
            .arg(1)
            .arg(&key)
            .arg(now_ms())
            .arg(keep_ms);
        let replies = self
            .backend
            .pipeline("cache_invalidate_namespace", &pipe)
            .await?;
        let generation = replies
            .first()
            .map(int)
            .transpose()?
            .and_then(|g| u64::try_from(g).ok())
            .ok_or_else(|| StoreError::Protocol("no generation returned".into()))?;
        self.remember_generation(&key, generation);
        Ok(())
    }
}

fn count_ones(replies: &[Value]) -> Result<u64, StoreError> {
    let mut n = 0;
    for r in replies {
        if int(r)? > 0 {
            n += 1;
        }
    }
    Ok(n)
}

/// A GetMany answer from `HMGET v e s`.
fn lookup_from_hash(reply: Value, now: Millis) -> Result<Lookup, StoreError> {
    let Value::Array(fields) = reply else {
        return Err(reply::unexpected("HMGET", "an array", &reply));
    };
    let mut it = fields.into_iter();
    let (Some(v), Some(e), Some(s)) = (it.next(), it.next(), it.next()) else {
        return Err(StoreError::Protocol("HMGET: three fields expected".into()));
    };
    let num = |v: &Value| -> Option<Millis> {
        match v {
            Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
            _ => None,
        }
    };
    let (Value::BulkString(value), Some(fresh_until), Some(stale_until)) = (v, num(&e), num(&s))
    else {
        return Ok(Lookup::miss());
    };
    let freshness = if now < fresh_until {
        Freshness::Fresh
    } else if now < stale_until {
        Freshness::Stale
    } else {
        return Ok(Lookup::miss());
    };
    Ok(Lookup {
        freshness,
        value: Bytes::from(value),
        fresh_until,
        lease: Lease::None,
    })
}
