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
//! An entry's key embeds its namespace's generation (`InvalidateNamespace` starts a new one, so
//! old entries are never seen again and simply expire). Each call pipelines the generation read
//! (`GET`; for a write, `lua/generation.lua` when the generation is missing or its TTL is due
//! for a refresh) with its operation on the generation this process last saw; when Redis
//! answers with another generation the operation is sent once more on the new one. Work sent to a stale generation lands on keys
//! nobody reads, which expire. A missing generation reads as "nothing cached": a lost counter
//! costs misses, never brings older entries back.
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
    collections::{HashMap, HashSet},
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use bytes::Bytes;
use redis::{Pipeline, Value};

use super::{
    model::{Condition, Freshness, Lease, Lookup, Write},
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

/// Generations remembered per process before the memo is cleared (bounds unknown namespaces).
const MAX_REMEMBERED_GENERATIONS: usize = 10_000;

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
    /// Namespace generations last seen (see the module docs).
    generations: Arc<RwLock<HashMap<String, Known>>>,
}

/// What a call needs of its namespace's generation.
#[derive(Clone, Copy, PartialEq, Eq)]
enum GenerationRead {
    /// Reading: a missing generation means nothing is cached.
    Read,
    /// Writing (or granting a lease): a missing generation is created, and its TTL is
    /// refreshed when due.
    Write,
}

/// A namespace generation this process last saw, and when it last refreshed its TTL.
#[derive(Clone, Copy)]
struct Known {
    generation: u64,
    refreshed: Option<Instant>,
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
        })
    }

    fn known(&self, key: &str) -> Option<Known> {
        self.generations
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .copied()
    }

    /// The first call of this process to a namespace reads its generation alone (or, for a
    /// write, makes sure one exists), so no operation is sent to a made-up generation: a
    /// SetMany sent blind would leave its values unread in Redis until they expire.
    async fn first_generation(
        &self,
        op: &'static str,
        key: &str,
        read: GenerationRead,
    ) -> Result<Option<u64>, StoreError> {
        let mut pipe = redis::pipe();
        match read {
            GenerationRead::Read => {
                pipe.cmd("GET").arg(key);
            }
            GenerationRead::Write => {
                pipe.cmd("EVALSHA")
                    .arg(self.scripts.generation.hash())
                    .arg(1)
                    .arg(key)
                    .arg(self.settings.generation_keep_ms)
                    .arg("0");
            }
        }
        let reply = self.backend.pipeline(op, &pipe).await?;
        let generation = match reply.first() {
            None | Some(Value::Nil) => return Ok(None),
            Some(Value::Int(g)) => u64::try_from(*g).ok(),
            Some(Value::BulkString(b)) => reply::parse_int(b).and_then(|g| u64::try_from(g).ok()),
            Some(other) => return Err(reply::unexpected("generation", "a number", other)),
        }
        .ok_or_else(|| StoreError::Protocol("generation: not a number".into()))?;
        self.remember(
            key,
            Known {
                generation,
                refreshed: (read == GenerationRead::Write).then(Instant::now),
            },
        );
        Ok(Some(generation))
    }

    fn remember(&self, key: &str, known: Known) {
        let mut map = self.generations.write().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_REMEMBERED_GENERATIONS {
            map.clear();
        }
        map.insert(key.to_owned(), known);
    }

    /// Runs `build`'s commands against the namespace's current generation (see the module
    /// docs). Returns the generation used (`None`: the namespace has none, so nothing is
    /// cached; only for [`GenerationRead::Read`]) and the replies to `build`'s commands.
    ///
    /// The generation is read with a plain `GET`; writes run `lua/generation.lua` instead when
    /// the generation is missing (it creates one) or this process has not refreshed its TTL
    /// for a quarter of its life, so an active namespace's generation never expires.
    async fn in_generation(
        &self,
        op: &'static str,
        tenant: &Tenant,
        namespace: &str,
        read: GenerationRead,
        build: impl Fn(u64, &mut Pipeline),
    ) -> Result<(Option<u64>, Vec<Value>), StoreError> {
        let generation_key = self.backend.keys().cache_generation(tenant, namespace);
        let known = match self.known(&generation_key) {
            Some(known) => known,
            None => match self.first_generation(op, &generation_key, read).await? {
                Some(generation) => self.known(&generation_key).unwrap_or(Known {
                    generation,
                    refreshed: None,
                }),
                // A read of a namespace without a generation: nothing is cached.
                None => return Ok((None, Vec::new())),
            },
        };
        let mut generation = known.generation;
        let refresh_every = Duration::from_millis(
            u64::try_from(self.settings.generation_keep_ms / 4).unwrap_or(u64::MAX),
        );
        let mut ensure = read == GenerationRead::Write
            && known
                .refreshed
                .is_none_or(|at| at.elapsed() >= refresh_every);
        for _ in 0..4 {
            let mut pipe = redis::pipe();
            if ensure {
                pipe.cmd("EVALSHA")
                    .arg(self.scripts.generation.hash())
                    .arg(1)
                    .arg(&generation_key)
                    .arg(self.settings.generation_keep_ms)
                    .arg("0");
            } else {
                pipe.cmd("GET").arg(&generation_key);
            }
            build(generation, &mut pipe);
            let mut replies = self.backend.pipeline(op, &pipe).await?;
            if replies.is_empty() {
                return Err(StoreError::Protocol("empty pipeline reply".into()));
            }
            let current = match replies.remove(0) {
                Value::Nil => None,
                Value::Int(g) => Some(u64::try_from(g).ok()),
                Value::BulkString(b) => {
                    Some(reply::parse_int(&b).and_then(|g| u64::try_from(g).ok()))
                }
                other => return Err(reply::unexpected("generation", "a number", &other)),
            };
            let current = match current {
                // Nothing is cached in a namespace without a generation. A write sent with it
                // landed on an old generation nobody reads; it is sent again on a new one.
                None if read == GenerationRead::Read => return Ok((None, replies)),
                None => {
                    ensure = true;
                    continue;
                }
                Some(g) => {
                    g.ok_or_else(|| StoreError::Protocol("generation: not a number".into()))?
                }
            };
            let refreshed = if ensure {
                Some(Instant::now())
            } else {
                self.known(&generation_key).and_then(|k| k.refreshed)
            };
            if current == generation {
                if ensure {
                    self.remember(
                        &generation_key,
                        Known {
                            generation,
                            refreshed,
                        },
                    );
                }
                return Ok((Some(generation), replies));
            }
            self.remember(
                &generation_key,
                Known {
                    generation: current,
                    refreshed,
                },
            );
            generation = current;
            ensure = false;
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

    /// Plain lookups: `HMGET v e s` per key, then `TIME` for the store's now (no script: a
    /// read changes nothing). One round trip with the generation read.
    async fn read(
        &self,
        op: &'static str,
        tenant: &Tenant,
        namespace: &str,
        keys: &[impl AsRef<str>],
    ) -> Result<Vec<Lookup>, StoreError> {
        let (generation, mut replies) = self
            .in_generation(op, tenant, namespace, GenerationRead::Read, |g, pipe| {
                for key in keys {
                    pipe.cmd("HMGET")
                        .arg(
                            self.backend
                                .keys()
                                .cache_entry(tenant, namespace, g, key.as_ref()),
                        )
                        .arg("v")
                        .arg("e")
                        .arg("s");
                }
                pipe.cmd("TIME");
            })
            .await?;
        if generation.is_none() {
            return Ok(keys.iter().map(|_| Lookup::miss()).collect());
        }
        let now = match replies.pop() {
            Some(time) => store_time(&time)?,
            None => return Err(StoreError::Protocol(format!("{op}: no TIME reply"))),
        };
        if replies.len() != keys.len() {
            return Err(StoreError::Protocol(format!(
                "{op}: {} replies for {} keys",
                replies.len(),
                keys.len()
            )));
        }
        replies
            .into_iter()
            .map(|r| lookup_from_hash(r, now))
            .collect()
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
        let (generation, marks) = self
            .in_generation(
                "cache_set",
                tenant,
                namespace,
                GenerationRead::Write,
                |g, pipe| {
                    for w in writes {
                        let entry = self
                            .backend
                            .keys()
                            .cache_entry(tenant, namespace, g, &w.key);
                        self.push_tags(pipe, tenant, namespace, &entry, w);
                    }
                },
            )
            .await?;
        let generation = generation
            .ok_or_else(|| StoreError::Protocol("no generation after creating it".into()))?;
        let mut marks = marks.iter();
        let mut pipe = redis::pipe();
        for w in writes {
            let mut invalidated = 0;
            for mark in marks.by_ref().take(w.tags.len()) {
                invalidated = invalidated.max(int(mark)?);
            }
            self.push_set(&mut pipe, tenant, namespace, generation, w, invalidated);
        }
        let replies = self.backend.pipeline("cache_set", &pipe).await?;
        stored(&replies, writes.len())
    }

    /// Adds the deletion of the entries `members` (entry keys from tag indexes) and their
    /// leases to `pipe`, one script each (they live in different slots); returns the entries
    /// it deletes, in order.
    fn push_deletes<'m>(
        &self,
        pipe: &mut Pipeline,
        tenant: &Tenant,
        members: &'m [Vec<u8>],
    ) -> Vec<&'m [u8]> {
        let mut deleting = Vec::with_capacity(members.len());
        for entry in members {
            let Some(lease) = self.backend.keys().cache_lease_of(tenant, entry) else {
                continue;
            };
            pipe.cmd("EVALSHA")
                .arg(self.scripts.delete.hash())
                .arg(2)
                .arg(entry.as_slice())
                .arg(lease);
            deleting.push(entry.as_slice());
        }
        deleting
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
        let Some(token) = lease_token else {
            let mut lookups = self.read("cache_get", tenant, namespace, &[key]).await?;
            return lookups
                .pop()
                .ok_or_else(|| StoreError::Protocol("cache_get: no reply".into()));
        };
        // A lease must live in a generation that exists: a lease request creates one.
        let (_, replies) = self
            .in_generation(
                "cache_get",
                tenant,
                namespace,
                GenerationRead::Write,
                |g, pipe| {
                    self.push_leased_get(pipe, tenant, namespace, g, key, token);
                },
            )
            .await?;
        let reply = replies
            .into_iter()
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
        self.read("cache_get_many", tenant, namespace, keys).await
    }

    async fn set(
        &self,
        tenant: &Tenant,
        namespace: &str,
        writes: &[Write],
    ) -> Result<Vec<bool>, StoreError> {
        if writes.iter().any(|w| !w.tags.is_empty()) {
            return self.set_tagged(tenant, namespace, writes).await;
        }
        let (_, replies) = self
            .in_generation(
                "cache_set",
                tenant,
                namespace,
                GenerationRead::Write,
                |g, pipe| {
                    for w in writes {
                        self.push_set(pipe, tenant, namespace, g, w, 0);
                    }
                },
            )
            .await?;
        stored(&replies, writes.len())
    }

    async fn delete(
        &self,
        tenant: &Tenant,
        namespace: &str,
        keys: &[String],
    ) -> Result<u64, StoreError> {
        let (generation, replies) = self
            .in_generation(
                "cache_delete",
                tenant,
                namespace,
                GenerationRead::Read,
                |g, pipe| {
                    // One script per key: the keys live in different slots.
                    for key in keys {
                        pipe.cmd("EVALSHA")
                            .arg(self.scripts.delete.hash())
                            .arg(2)
                            .arg(self.backend.keys().cache_entry(tenant, namespace, g, key))
                            .arg(self.backend.keys().cache_lease(tenant, namespace, g, key));
                    }
                },
            )
            .await?;
        if generation.is_none() {
            return Ok(0);
        }
        count_ones(&replies)
    }

    async fn invalidate_tags(
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
        // Round trip 1: the namespace's generation (only its entries count as deleted: older
        // ones are invisible already), then mark every tag invalidated and read the first
        // chunk of its index.
        let mark_keep = self.settings.lease_ttl_ms.saturating_add(TAG_MARGIN_MS);
        let mut pipe = redis::pipe();
        pipe.cmd("GET")
            .arg(keys.cache_generation(tenant, namespace));
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
        let mut replies = self
            .backend
            .pipeline("cache_invalidate_tags", &pipe)
            .await?
            .into_iter();
        let generation = match replies.next() {
            Some(Value::BulkString(g)) => reply::parse_int(&g).and_then(|g| u64::try_from(g).ok()),
            _ => None,
        };
        for (index, reply) in indexes.iter().zip(replies) {
            let Value::Array(items) = reply else {
                return Err(reply::unexpected("invalidate_tag", "an array", &reply));
            };
            let mut items = items.into_iter();
            let (Some(now), Some(cursor)) = (items.next(), items.next()) else {
                return Err(StoreError::Protocol("invalidate_tag: short reply".into()));
            };
            let cursor = u64::try_from(int(&cursor)?).unwrap_or(0);
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
        let mut deleted = 0;
        while !pending.is_empty() || !scanning.is_empty() {
            let mut pipe = redis::pipe();
            let deletes = self.push_deletes(&mut pipe, tenant, &pending);
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
            if replies.len() != deletes.len() + scanning.len() {
                return Err(StoreError::Protocol(
                    "invalidate_tags: reply count mismatch".into(),
                ));
            }
            let deleting = deletes.len();
            for (entry, reply) in deletes.into_iter().zip(&replies) {
                let current = generation.is_some()
                    && keys.cache_entry_generation(tenant, namespace, entry) == generation;
                if int(reply)? > 0 && current {
                    deleted += 1;
                }
            }
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

    async fn invalidate_namespace(
        &self,
        tenant: &Tenant,
        namespace: &str,
    ) -> Result<(), StoreError> {
        let key = self.backend.keys().cache_generation(tenant, namespace);
        let mut pipe = redis::pipe();
        pipe.cmd("EVALSHA")
            .arg(self.scripts.generation.hash())
            .arg(1)
            .arg(&key)
            .arg(self.settings.generation_keep_ms)
            .arg("1");
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
        // The generation script just set its TTL: refreshed now.
        self.remember(
            &key,
            Known {
                generation,
                refreshed: Some(Instant::now()),
            },
        );
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
                reply::parse_int(cursor)
                    .and_then(|c| u64::try_from(c).ok())
                    .unwrap_or(0),
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
