//! Bucket generations: which generation of each bucket a call's commands run in.
//!
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
//! The generations this process last saw are a memo ([`Known`]), which the near tier also reads:
//! a near copy is served only under a generation a tracked read confirmed.

use std::{
    collections::{BTreeMap, HashMap},
    time::{Duration, Instant},
};

use parking_lot::RwLock;
use redis::{Pipeline, Value};

use super::RedisCacheStore;
use crate::{
    cache::keys::{GENERATION_BUCKETS, bucket},
    store::{StoreError, redis::reply},
    tenant::Tenant,
};

/// Bucket generations remembered per process before the memo is cleared (bounds unknown
/// namespaces: 64 buckets each).
const MAX_REMEMBERED_GENERATIONS: usize = 65_536;

/// Rounds of a call whose generations changed under it before it gives up.
const GENERATION_ATTEMPTS: usize = 4;

/// What a call needs of its buckets' generations.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum GenerationRead {
    /// Reading: a missing generation means nothing is cached.
    Read,
    /// Writing (or granting a lease): a missing generation is created, and its TTL is
    /// refreshed when due.
    Write,
}

/// A bucket generation this process last saw, and when it last refreshed its TTL.
#[derive(Clone, Copy)]
pub(super) struct Known {
    pub(super) generation: u64,
    pub(super) refreshed: Option<Instant>,
    /// Near tier: a read over the tracking connection confirmed this generation, and Redis has
    /// not said since that the key changed (only then are near copies under it served).
    pub(super) near_ok: bool,
}

/// The items of one bucket of a call, and what Redis answered for them.
pub(super) struct InBucket {
    /// Positions of the bucket's items in the caller's list, in order.
    pub(super) items: Vec<usize>,
    /// The generation the commands ran in (`None`: the bucket has none, nothing is cached).
    pub(super) generation: Option<u64>,
    /// The replies to the commands the caller added for this bucket.
    pub(super) replies: Vec<Value>,
}

/// A bucket still to be answered, in [`RedisCacheStore::in_generations`].
struct Pending {
    items: Vec<usize>,
    key: String,
    generation: u64,
    ensure: bool,
}

/// A generation reply: `GET` (bulk string or nil) or `generation.lua` (integer).
pub(super) fn generation_reply(v: Value) -> Result<Option<u64>, StoreError> {
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
    pub(super) fn known(&self, key: &str) -> Option<Known> {
        self.generations.read().get(key).copied()
    }

    /// Remembers a generation read through the pool. It never makes the near tier trust a
    /// generation (a pool reply may be older than an invalidation already heard); the same
    /// generation keeps the trust it had.
    pub(super) fn remember(&self, key: &str, mut known: Known) {
        let mut map = self.generations.write();
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
    pub(super) fn confirm_generation(
        generations: &RwLock<HashMap<String, Known>>,
        key: &str,
        generation: u64,
    ) {
        let mut map = generations.write();
        if let Some(known) = map.get_mut(key)
            && known.generation == generation
        {
            known.near_ok = true;
        }
    }

    /// Adds the read of a bucket generation to `pipe`: `GET`, or for a write that must make
    /// sure it exists and lives on, `generation.lua` (`new`: start a new generation).
    pub(super) fn push_generation(&self, pipe: &mut Pipeline, key: &str, ensure: bool, new: bool) {
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
    pub(super) async fn in_generations(
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

    pub(super) async fn invalidate_namespace_untracked(
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
