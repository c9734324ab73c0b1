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
//! # Generations, one round trip
//! An entry's key embeds its bucket's generation (a namespace is spread over 64 buckets, each
//! one hash slot; see `keys.rs`): `InvalidateNamespace` starts a new generation in every bucket,
//! so old entries are never seen again and simply expire. Each call pipelines, per bucket it
//! touches, the generation read (`GET`; for a write, `lua/generation.lua` when the generation
//! is missing or its TTL is due for a refresh) with its operations on the generation this
//! process last saw; when Redis answers with another generation those operations are sent once
//! more on the new one. Work sent to a stale generation lands on keys nobody reads, which
//! expire. A missing generation reads as "nothing cached": a lost counter costs misses, never
//! brings older entries back. A bucket's generation and entries share a slot, so on a cluster
//! each bucket's part of a call is one request to one node, and the call one round trip.
//!
//! # Tags
//! A tagged Set lists the entry under each tag (`lua/tag.lua`, which also reads when the tag was
//! last invalidated) in one round trip and writes it in a second, only once every listing
//! succeeded: no value is ever served without being listed. (Untagged Sets take one round trip.)
//! InvalidateTags marks each tag invalidated, then deletes what its index lists, chunk by chunk
//! (`ZSCAN`), leaving the members in place until they expire: a Set listed but not yet written
//! stays findable, and a call that fails half-way is completed by the next. A leased Set is
//! refused if one of its tags was invalidated at or after its lease was granted.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use bytes::Bytes;
use redis::{Pipeline, Value};

use super::{
    config::CacheConfig,
    keys::{GENERATION_BUCKETS, bucket},
    model::{Condition, Freshness, Lease, Lookup, Write},
    near::{self, NearCache, NearHit},
    store::{CacheStore, CacheStoreSettings},
};
use crate::{
    store::{
        StoreError,
        redis::{
            RedisBackend, lua,
            reply::{self, int},
            scripts::LuaScript,
        },
    },
    tenant::Tenant,
    time::Millis,
};

/// Bucket generations remembered per process before the memo is cleared (bounds unknown
/// namespaces: 64 buckets each).
const MAX_REMEMBERED_GENERATIONS: usize = 65_536;

/// Rounds of a call whose generations changed under it before it gives up.
const GENERATION_ATTEMPTS: usize = 4;

/// How much longer than its entry a tag index member is kept: room for the write that follows
/// the listing (one pipeline, or at worst one more round trip within the call's deadline).
const TAG_MARGIN_MS: Millis = 60_000;

/// Tag index members read and deleted per round trip by InvalidateTags: bounds the work of
/// every command, whatever the size of the index.
pub const INVALIDATION_CHUNK: usize = 500;

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
    /// Bucket generations last seen, by generation key (see the module docs).
    generations: Arc<RwLock<HashMap<String, Known>>>,
    /// The near tier, when a namespace asks for it.
    near: Option<Near>,
}

/// The near tier and the namespaces it serves.
struct Near {
    tier: NearCache,
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

    fn count(&self, namespace: &str, hit: bool) {
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

/// What a call needs of its buckets' generations.
#[derive(Clone, Copy, PartialEq, Eq)]
enum GenerationRead {
    /// Reading: a missing generation means nothing is cached.
    Read,
    /// Writing (or granting a lease): a missing generation is created, and its TTL is
    /// refreshed when due.
    Write,
}

/// A bucket generation this process last saw, and when it last refreshed its TTL.
#[derive(Clone, Copy)]
struct Known {
    generation: u64,
    refreshed: Option<Instant>,
    /// Near tier: a read over the tracking connection confirmed this generation, and Redis has
    /// not said since that the key changed (only then are near copies under it served).
    near_ok: bool,
}

/// The items of one bucket of a call, and what Redis answered for them.
struct InBucket {
    /// Positions of the bucket's items in the caller's list, in order.
    items: Vec<usize>,
    /// The generation the commands ran in (`None`: the bucket has none, nothing is cached).
    generation: Option<u64>,
    /// The replies to the commands the caller added for this bucket.
    replies: Vec<Value>,
}

/// A bucket still to be answered, in [`RedisCacheStore::in_generations`].
struct Pending {
    items: Vec<usize>,
    key: String,
    generation: u64,
    ensure: bool,
}

/// A generation reply: `GET` (bulk string or nil) or `generation.lua` (integer).
fn generation_reply(v: Value) -> Result<Option<u64>, StoreError> {
    let parsed = match v {
        Value::Nil => return Ok(None),
        Value::Int(g) => u64::try_from(g).ok(),
        Value::BulkString(b) => reply::parse_int(&b).and_then(|g| u64::try_from(g).ok()),
        other => return Err(reply::unexpected("generation", "a number", &other)),
    };
    parsed
        .map(Some)
        .ok_or_else(|| StoreError::Protocol("generation: not a number".into()))
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
                _ => generations.write().unwrap_or_else(|p| p.into_inner()),
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
    fn near_for(&self, namespace: &str) -> Option<&Near> {
        self.near.as_ref().filter(|n| n.serves(namespace))
    }

    /// A Get answered near: a fresh hit with no Redis call, or, on a near miss, a read over the
    /// tracking connection that keeps a fresh value. `None`: answer through the pool (the
    /// bucket's generation is not known yet, the tracking connection is down, the generation
    /// changed, or a leased Get found no fresh value and needs its lease script).
    async fn near_get(
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
    fn near_hit(&self, near: &Near, tenant: &Tenant, namespace: &str, key: &str) -> Option<Lookup> {
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
    fn near_forget(&self, tenant: &Tenant, namespace: &str, keys: &[&str]) {
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
    fn near_forget_namespace(&self, tenant: &Tenant, namespace: &str) {
        if let Some(near) = self.near_for(namespace) {
            near.tier.invalidate_scope(&near::scope(tenant, namespace));
        }
    }

    fn known(&self, key: &str) -> Option<Known> {
        self.generations
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .copied()
    }

    /// Remembers a generation read through the pool. It never makes the near tier trust a
    /// generation (a pool reply may be older than an invalidation already heard); the same
    /// generation keeps the trust it had.
    fn remember(&self, key: &str, mut known: Known) {
        let mut map = self.generations.write().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_REMEMBERED_GENERATIONS {
            map.clear();
        }
        known.near_ok = map
            .get(key)
            .is_some_and(|old| old.near_ok && old.generation == known.generation);
        map.insert(key.to_owned(), known);
    }

    /// The near tier's read confirmed `generation` for `key` (called while no invalidation can
    /// interleave: see `NearCache::keep`).
    fn confirm_generation(
        generations: &RwLock<HashMap<String, Known>>,
        key: &str,
        generation: u64,
    ) {
        let mut map = generations.write().unwrap_or_else(|p| p.into_inner());
        if let Some(known) = map.get_mut(key)
            && known.generation == generation
        {
            known.near_ok = true;
        }
    }

    /// Adds the read of a bucket generation to `pipe`: `GET`, or for a write that must make
    /// sure it exists and lives on, `generation.lua` (`new`: start a new generation).
    fn push_generation(&self, pipe: &mut Pipeline, key: &str, ensure: bool, new: bool) {
        if ensure || new {
            pipe.cmd("EVALSHA")
                .arg(self.scripts.generation.hash())
                .arg(1)
                .arg(key)
                .arg(self.settings.generation_keep_ms)
                .arg(if new { "1" } else { "0" });
        } else {
            pipe.cmd("GET").arg(key);
        }
    }

    /// Runs `build`'s commands for the items at `keys`, grouped by bucket, each group against
    /// its bucket's current generation (see the module docs), all in one pipeline: on a cluster
    /// each bucket's generation read and commands share one slot, so each group is one request
    /// to one node and the call is still one round trip.
    ///
    /// `build(generation, items, pipe)` adds the commands of the items (positions in `keys`)
    /// of one bucket. Each group is sent with the generation this process last saw and that
    /// generation's read; a group whose generation turns out to have changed is sent again on
    /// the new one (work sent to a stale generation lands on keys nobody reads, which expire).
    /// The first call of this process to a bucket reads its generation alone first (or, for a
    /// write, makes sure one exists), so no operation is sent to a made-up generation.
    ///
    /// Writes run `lua/generation.lua` instead of a plain `GET` when the generation is missing
    /// (it creates one) or this process has not refreshed its TTL for a quarter of its life, so
    /// an active bucket's generation never expires.
    async fn in_generations(
        &self,
        op: &'static str,
        tenant: &Tenant,
        namespace: &str,
        read: GenerationRead,
        keys: &[&str],
        build: impl Fn(u64, &[usize], &mut Pipeline),
    ) -> Result<Vec<InBucket>, StoreError> {
        let mut by_bucket: BTreeMap<u16, Vec<usize>> = BTreeMap::new();
        for (i, key) in keys.iter().enumerate() {
            by_bucket.entry(bucket(key)).or_default().push(i);
        }
        let refresh_every = Duration::from_millis(
            u64::try_from(self.settings.generation_keep_ms / 4).unwrap_or(u64::MAX),
        );
        let mut done = Vec::with_capacity(by_bucket.len());
        let mut pending = Vec::with_capacity(by_bucket.len());
        let mut unknown = Vec::new();
        for (b, items) in by_bucket {
            let key = self
                .backend
                .keys()
                .cache_bucket_generation(tenant, namespace, b);
            match self.known(&key) {
                Some(known) => pending.push(Pending {
                    items,
                    ensure: read == GenerationRead::Write
                        && known
                            .refreshed
                            .is_none_or(|at| at.elapsed() >= refresh_every),
                    key,
                    generation: known.generation,
                }),
                None => unknown.push((items, key)),
            }
        }
        if !unknown.is_empty() {
            let mut pipe = redis::pipe();
            for (_, key) in &unknown {
                self.push_generation(&mut pipe, key, read == GenerationRead::Write, false);
            }
            let replies = self.backend.pipeline(op, &pipe).await?;
            if replies.len() != unknown.len() {
                return Err(StoreError::Protocol(format!(
                    "{op}: generation reply count"
                )));
            }
            for ((items, key), reply) in unknown.into_iter().zip(replies) {
                match generation_reply(reply)? {
                    Some(generation) => {
                        let refreshed = (read == GenerationRead::Write).then(Instant::now);
                        self.remember(
                            &key,
                            Known {
                                generation,
                                refreshed,
                                near_ok: false,
                            },
                        );
                        pending.push(Pending {
                            items,
                            key,
                            generation,
                            ensure: false,
                        });
                    }
                    // A read of a bucket without a generation: nothing is cached there.
                    None => done.push(InBucket {
                        items,
                        generation: None,
                        replies: Vec::new(),
                    }),
                }
            }
        }
        for _ in 0..GENERATION_ATTEMPTS {
            if pending.is_empty() {
                return Ok(done);
            }
            let mut pipe = redis::pipe();
            let mut spans = Vec::with_capacity(pending.len());
            for p in &pending {
                let start = pipe.len();
                self.push_generation(&mut pipe, &p.key, p.ensure, false);
                build(p.generation, &p.items, &mut pipe);
                spans.push(pipe.len() - start);
            }
            let mut replies = self.backend.pipeline(op, &pipe).await?.into_iter();
            let mut again = Vec::new();
            for (mut p, span) in pending.into_iter().zip(spans) {
                let mut group: Vec<Value> = replies.by_ref().take(span).collect();
                if group.len() != span {
                    return Err(StoreError::Protocol(format!("{op}: short pipeline reply")));
                }
                let current = generation_reply(group.remove(0))?;
                let Some(current) = current else {
                    // Nothing is cached in a bucket without a generation. A write sent with it
                    // landed on an old generation nobody reads; it is sent again on a new one.
                    if read == GenerationRead::Read {
                        done.push(InBucket {
                            items: p.items,
                            generation: None,
                            replies: group,
                        });
                    } else {
                        p.ensure = true;
                        again.push(p);
                    }
                    continue;
                };
                let refreshed = if p.ensure {
                    Some(Instant::now())
                } else {
                    self.known(&p.key).and_then(|k| k.refreshed)
                };
                if current == p.generation {
                    if p.ensure {
                        self.remember(
                            &p.key,
                            Known {
                                generation: current,
                                refreshed,
                                near_ok: false,
                            },
                        );
                    }
                    done.push(InBucket {
                        items: p.items,
                        generation: Some(current),
                        replies: group,
                    });
                } else {
                    self.remember(
                        &p.key,
                        Known {
                            generation: current,
                            refreshed,
                            near_ok: false,
                        },
                    );
                    p.generation = current;
                    p.ensure = false;
                    again.push(p);
                }
            }
            pending = again;
        }
        if pending.is_empty() {
            return Ok(done);
        }
        Err(StoreError::Unavailable(
            "namespace generation changed during four attempts".into(),
        ))
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

    /// Adds the listing of `entry` under each of `tags` to `pipe`.
    fn push_tags(
        &self,
        pipe: &mut Pipeline,
        tenant: &Tenant,
        namespace: &str,
        entry: &str,
        w: &Write,
    ) {
        let keys = self.backend.keys();
        let keep = w
            .ttl_ms
            .saturating_add(w.stale_ms)
            .saturating_add(TAG_MARGIN_MS);
        for tag in &w.tags {
            pipe.cmd("EVALSHA")
                .arg(self.scripts.tag.hash())
                .arg(2)
                .arg(keys.cache_tag(tenant, namespace, tag))
                .arg(keys.cache_tag_mark(tenant, namespace, tag))
                .arg(entry)
                .arg(keep);
        }
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

    /// Sets with tags: list every tagged write under its tags (and read the tags'
    /// invalidation marks) in one round trip, then write in a second, only once every listing
    /// succeeded. (In one pipeline a failed listing would not stop the write after it.)
    async fn set_tagged(
        &self,
        tenant: &Tenant,
        namespace: &str,
        writes: &[Write],
    ) -> Result<Vec<bool>, StoreError> {
        let keys: Vec<&str> = writes.iter().map(|w| w.key.as_str()).collect();
        let buckets = self
            .in_generations(
                "cache_set",
                tenant,
                namespace,
                GenerationRead::Write,
                &keys,
                |g, items, pipe| {
                    for &i in items {
                        let w = &writes[i];
                        let entry = self
                            .backend
                            .keys()
                            .cache_entry(tenant, namespace, g, &w.key);
                        self.push_tags(pipe, tenant, namespace, &entry, w);
                    }
                },
            )
            .await?;
        // Each write's bucket generation and the latest invalidation of its tags.
        let mut planned: Vec<Option<(u64, Millis)>> = vec![None; writes.len()];
        for b in buckets {
            let generation = b
                .generation
                .ok_or_else(|| StoreError::Protocol("no generation after creating it".into()))?;
            let mut marks = b.replies.iter();
            for i in b.items {
                let mut invalidated = 0;
                for mark in marks.by_ref().take(writes[i].tags.len()) {
                    invalidated = invalidated.max(int(mark)?);
                }
                planned[i] = Some((generation, invalidated));
            }
        }
        let mut pipe = redis::pipe();
        for (w, plan) in writes.iter().zip(planned) {
            let (generation, invalidated) = plan.ok_or_else(|| {
                StoreError::Protocol("cache_set: a write without a bucket".into())
            })?;
            self.push_set(&mut pipe, tenant, namespace, generation, w, invalidated);
        }
        let replies = self.backend.pipeline("cache_set", &pipe).await?;
        stored(&replies, writes.len())
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

    async fn invalidate_tags_untracked(
        &self,
        tenant: &Tenant,
        namespace: &str,
        tags: &[String],
    ) -> Result<u64, StoreError> {
        let keys = self.backend.keys();
        let indexes: Vec<String> = tags
            .iter()
            .map(|t| keys.cache_tag(tenant, namespace, t))
            .collect();
        // Round trip 1: mark every tag invalidated and read the first chunk of its index.
        let mark_keep = self.settings.lease_ttl_ms.saturating_add(TAG_MARGIN_MS);
        let mut pipe = redis::pipe();
        for (tag, index) in tags.iter().zip(&indexes) {
            pipe.cmd("EVALSHA")
                .arg(self.scripts.invalidate_tag.hash())
                .arg(2)
                .arg(index)
                .arg(keys.cache_tag_mark(tenant, namespace, tag))
                .arg(mark_keep)
                .arg(INVALIDATION_CHUNK);
        }
        let mut seen: HashSet<Vec<u8>> = HashSet::new();
        let mut pending: Vec<Vec<u8>> = Vec::new();
        // Indexes still being scanned: (index, cursor, the store's time at the invalidation).
        let mut scanning: Vec<(&String, u64, Millis)> = Vec::new();
        let replies = self
            .backend
            .pipeline("cache_invalidate_tags", &pipe)
            .await?;
        for (index, reply) in indexes.iter().zip(replies) {
            let Value::Array(items) = reply else {
                return Err(reply::unexpected("invalidate_tag", "an array", &reply));
            };
            let mut items = items.into_iter();
            let (Some(now), Some(cursor)) = (items.next(), items.next()) else {
                return Err(StoreError::Protocol("invalidate_tag: short reply".into()));
            };
            let cursor = u64::try_from(int(&cursor)?)
                .map_err(|_| StoreError::Protocol("invalidate_tag: negative cursor".into()))?;
            if cursor != 0 {
                scanning.push((index, cursor, int(&now)?));
            }
            for m in items {
                if let Value::BulkString(m) = m
                    && seen.insert(m.clone())
                {
                    pending.push(m);
                }
            }
        }
        // Then chunk by chunk: delete what was read, read the next chunk, in one round trip.
        // Only entries of their bucket's current generation count as deleted: older ones are
        // invisible already.
        let mut deleted = 0;
        while !pending.is_empty() || !scanning.is_empty() {
            let mut pipe = redis::pipe();
            let mut deleting = 0;
            for entry in &pending {
                if self
                    .push_delete(&mut pipe, tenant, namespace, entry)
                    .is_some()
                {
                    deleting += 1;
                }
            }
            for (index, cursor, _) in &scanning {
                pipe.cmd("ZSCAN")
                    .arg(*index)
                    .arg(*cursor)
                    .arg("COUNT")
                    .arg(INVALIDATION_CHUNK);
            }
            let replies = self
                .backend
                .pipeline("cache_invalidate_tags", &pipe)
                .await?;
            if replies.len() != deleting + scanning.len() {
                return Err(StoreError::Protocol(
                    "invalidate_tags: reply count mismatch".into(),
                ));
            }
            deleted += count_ones(&replies[..deleting])?;
            pending.clear();
            let mut next = Vec::new();
            for ((index, _, now), reply) in scanning.iter().zip(&replies[deleting..]) {
                let (cursor, items) = scan_reply(reply)?;
                for pair in items.chunks_exact(2) {
                    let live = match &pair[1] {
                        Value::BulkString(score) => {
                            reply::parse_int(score).is_none_or(|s| s > *now)
                        }
                        _ => true,
                    };
                    if let Value::BulkString(m) = &pair[0]
                        && live
                        && seen.insert(m.clone())
                    {
                        pending.push(m.clone());
                    }
                }
                if cursor != 0 {
                    next.push((*index, cursor, *now));
                }
            }
            scanning = next;
        }
        Ok(deleted)
    }

    async fn invalidate_namespace_untracked(
        &self,
        tenant: &Tenant,
        namespace: &str,
    ) -> Result<(), StoreError> {
        // A new generation in every bucket (one request per node on a cluster). A call that
        // fails half-way leaves some buckets renewed; repeating it renews them all (a new
        // generation is never a reused one).
        let keys: Vec<String> = (0..GENERATION_BUCKETS)
            .map(|b| {
                self.backend
                    .keys()
                    .cache_bucket_generation(tenant, namespace, b)
            })
            .collect();
        let mut pipe = redis::pipe();
        for key in &keys {
            self.push_generation(&mut pipe, key, true, true);
        }
        let replies = self
            .backend
            .pipeline("cache_invalidate_namespace", &pipe)
            .await?;
        if replies.len() != keys.len() {
            return Err(StoreError::Protocol(
                "invalidate_namespace: reply count mismatch".into(),
            ));
        }
        for (key, reply) in keys.iter().zip(replies) {
            let generation = generation_reply(reply)?
                .ok_or_else(|| StoreError::Protocol("no generation returned".into()))?;
            // The generation script just set its TTL: refreshed now.
            self.remember(
                key,
                Known {
                    generation,
                    refreshed: Some(Instant::now()),
                    near_ok: false,
                },
            );
        }
        Ok(())
    }
}

/// `set.lua` replies as `stored` flags.
fn stored(replies: &[Value], writes: usize) -> Result<Vec<bool>, StoreError> {
    if replies.len() != writes {
        return Err(StoreError::Protocol(format!(
            "cache_set: {} replies for {writes} writes",
            replies.len()
        )));
    }
    replies.iter().map(|r| Ok(int(r)? == 1)).collect()
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

/// A `ZSCAN` reply: the next cursor and the member/score pairs.
fn scan_reply(reply: &Value) -> Result<(u64, &[Value]), StoreError> {
    match reply {
        Value::Array(parts) => match parts.as_slice() {
            [Value::BulkString(cursor), Value::Array(items)] => Ok((
                // A cursor that does not parse must not end the scan as if it were done.
                reply::parse_int(cursor)
                    .and_then(|c| u64::try_from(c).ok())
                    .ok_or_else(|| {
                        StoreError::Protocol("ZSCAN: the cursor is not a number".into())
                    })?,
                items.as_slice(),
            )),
            _ => Err(StoreError::Protocol("ZSCAN: unexpected reply shape".into())),
        },
        other => Err(reply::unexpected("ZSCAN", "an array", other)),
    }
}

/// A `get.lua` answer.
fn leased_lookup(reply: Value, token: &str) -> Result<Lookup, StoreError> {
    let Value::Array(reply) = reply else {
        return Err(reply::unexpected("cache_get", "an array", &reply));
    };
    let [state, value, fresh_ms, lease] = <[Value; 4]>::try_from(reply)
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
        fresh_ms: int(&fresh_ms)?,
        lease: match int(&lease)? {
            1 => Lease::Granted(token.to_owned()),
            2 => Lease::Wait,
            _ => Lease::None,
        },
    })
}

/// A plain lookup from `HMGET v e s`, at the store's `now`.
fn lookup_from_hash(reply: Value, now: Millis) -> Result<Lookup, StoreError> {
    let Value::Array(fields) = reply else {
        return Err(reply::unexpected("HMGET", "an array", &reply));
    };
    let mut it = fields.into_iter();
    let (Some(v), Some(e), Some(s)) = (it.next(), it.next(), it.next()) else {
        return Err(StoreError::Protocol("HMGET: three fields expected".into()));
    };
    let num = |v: &Value| match v {
        Value::BulkString(b) => reply::parse_int(b),
        _ => None,
    };
    let (Value::BulkString(value), Some(fresh_until), Some(stale_until)) = (v, num(&e), num(&s))
    else {
        return Ok(Lookup::miss());
    };
    let (freshness, fresh_ms) = if now < fresh_until {
        (Freshness::Fresh, fresh_until - now)
    } else if now < stale_until {
        (Freshness::Stale, 0)
    } else {
        return Ok(Lookup::miss());
    };
    Ok(Lookup {
        freshness,
        value: Bytes::from(value),
        fresh_ms,
        lease: Lease::None,
    })
}

/// A `TIME` reply in Unix milliseconds.
fn store_time(reply: &Value) -> Result<Millis, StoreError> {
    match reply {
        Value::Array(parts) => match parts.as_slice() {
            [Value::BulkString(secs), Value::BulkString(micros)] => {
                match (reply::parse_int(secs), reply::parse_int(micros)) {
                    (Some(s), Some(us)) => Ok(s * 1000 + us / 1000),
                    _ => Err(StoreError::Protocol("TIME: not numbers".into())),
                }
            }
            _ => Err(StoreError::Protocol("TIME: unexpected shape".into())),
        },
        other => Err(reply::unexpected("TIME", "an array", other)),
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
