//! The Redis semantic cache store. Redis holds every entry (`lua/set.lua`); each replica keeps
//! a search index of each namespace in memory, built from Redis and kept current by the sync
//! engine (`sync.rs`: each namespace's change log, read over a tracking connection).
//!
//! # Why a Get cannot serve a removed entry
//! The index only proposes candidates. A Get reads the best few (`CANDIDATES`) in one script
//! that returns the first still in Redis, so an entry deleted, expired or evicted before this
//! replica heard is skipped (and dropped from the index), never served.

mod sync;

use std::{
    collections::BTreeMap,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use bytes::Bytes;
use redis::Value;

use self::sync::{Indexes, entry_id};
use super::{
    config::SemanticConfig,
    index::{self, SearchPlan},
    store::{CANDIDATES, Entry, Found, SemanticStore, Space, Stored},
};
use crate::store::{
    StoreError,
    redis::{RedisBackend, lua, reply, scripts::LuaScript},
};

/// Namespaces larger than this are searched on a blocking thread (2,048 × 768 is ~0.3 ms of
/// exact scan).
const BLOCKING_SEARCH: usize = 2_048;

/// How long a Get waits for the first load of its namespace on this replica.
const FIRST_LOAD_WAIT: Duration = Duration::from_millis(100);

/// The semantic cache in Redis (see the module docs).
pub struct RedisSemanticStore {
    backend: RedisBackend,
    set: LuaScript,
    get: LuaScript,
    delete: LuaScript,
    log_length: u64,
    /// The namespaces' indexes on this replica, kept current by the sync engine.
    indexes: Arc<Indexes>,
}

impl RedisSemanticStore {
    /// Registers the scripts with `backend` and starts the sync task and the tracking
    /// connection (both end when the store is dropped).
    pub fn new(backend: RedisBackend, config: &SemanticConfig) -> Result<Self, StoreError> {
        Ok(Self {
            set: backend.register("semantic.set", lua!("src/semantic/lua/set.lua"))?,
            get: backend.register("semantic.get", include_str!("../lua/get.lua"))?,
            delete: backend.register("semantic.delete", include_str!("../lua/delete.lua"))?,
            log_length: config.log_length,
            indexes: Indexes::start(backend.clone(), config),
            backend,
        })
    }
}

#[tonic::async_trait]
impl SemanticStore for RedisSemanticStore {
    async fn set(&self, space: Space<'_>, entry: Entry) -> Result<Stored, StoreError> {
        let ns = self
            .indexes
            .indexed(space.tenant, space.namespace, space.dimension);
        let metadata = serde_json::to_string(&entry.metadata)
            .map_err(|e| StoreError::Protocol(format!("labels: {e}")))?;
        let vector = index::to_bytes(&entry.vector);
        let mut call = self.set.call();
        call.key(&ns.keys.index)
            .key(&ns.keys.counter)
            .key(&ns.keys.log)
            .key(&ns.keys.base)
            .arg(vector)
            .arg(entry.value.as_ref())
            .arg(metadata)
            .arg(entry.ttl_ms)
            .arg(entry.max_entries)
            .arg(self.log_length);
        // Not resent after a dropped connection: it may have stored the entry.
        let reply: Vec<i64> = self.backend.invoke("semantic_set", &call).await?;
        let [id, evicted] = reply[..] else {
            return Err(StoreError::Protocol(format!("semantic set: {reply:?}")));
        };
        let id = u64::try_from(id).map_err(|_| StoreError::Protocol("semantic set: id".into()))?;
        // Read your writes: in this replica's index now, not when the log says so.
        if ns.loaded.load(Ordering::Acquire) {
            ns.index.write().upsert(id, &entry.vector);
        }
        Ok(Stored {
            id,
            evicted: u32::try_from(evicted).unwrap_or(u32::MAX),
        })
    }

    async fn get(
        &self,
        space: Space<'_>,
        query: &[f32],
        min_similarity: f32,
        plan: SearchPlan,
    ) -> Result<Option<Found>, StoreError> {
        let ns = self
            .indexes
            .indexed(space.tenant, space.namespace, space.dimension);
        if !ns.loaded.load(Ordering::Acquire) {
            // First use of the namespace on this replica: its load takes a round trip when it
            // is new or small (so a Get right after this replica's first Set finds it), seconds
            // when it is large (then a miss: a cache may miss, a caller should not wait).
            let done = ns.load_done.notified();
            tokio::pin!(done);
            done.as_mut().enable();
            if !ns.loaded.load(Ordering::Acquire) {
                let _ = tokio::time::timeout(FIRST_LOAD_WAIT, done).await;
            }
            if !ns.loaded.load(Ordering::Acquire) {
                return Ok(None);
            }
        }
        let search = {
            let ns = ns.clone();
            move |query: &[f32]| {
                ns.index
                    .read()
                    .search(query, min_similarity, CANDIDATES, plan)
            }
        };
        let large = ns.index.read().len() > BLOCKING_SEARCH;
        let candidates = if large {
            // Milliseconds of scanning belong on a blocking thread, not on a runtime worker
            // that every other call of this replica shares.
            let query = query.to_vec();
            tokio::task::spawn_blocking(move || search(&query))
                .await
                .map_err(|e| StoreError::Protocol(format!("semantic search: {e}")))?
        } else {
            search(query)
        };
        if candidates.is_empty() {
            return Ok(None);
        }
        let mut call = self.get.call();
        call.key(&ns.keys.base);
        for (id, _) in &candidates {
            call.arg(*id);
        }
        let reply: Vec<Value> = self
            .backend
            .invoke_idempotent("semantic_get", &call)
            .await?;
        let mut reply = reply.into_iter();
        let id = reply::u64_of(&reply.next().unwrap_or(Value::Nil), "semantic get id")?;
        if id == 0 {
            let mut index = ns.index.write();
            for gone in reply {
                if let Ok(gone) = entry_id(&gone) {
                    index.remove(gone);
                }
            }
            return Ok(None);
        }
        let value = match reply.next() {
            Some(Value::BulkString(v)) => Bytes::from(v),
            other => {
                return Err(reply::unexpected(
                    "semantic get",
                    "a value",
                    &other.unwrap_or(Value::Nil),
                ));
            }
        };
        let metadata: BTreeMap<String, String> = match reply.next() {
            Some(Value::BulkString(m)) => serde_json::from_slice(&m)
                .map_err(|e| StoreError::Protocol(format!("semantic labels: {e}")))?,
            _ => BTreeMap::new(),
        };
        let ttl_ms = reply::int(&reply.next().unwrap_or(Value::Nil))?.max(0);
        // Scored on the vector Redis holds, not the index's: an entry this replica indexed
        // under another vector (its log not applied yet) is never served for this query.
        let stored = match reply.next() {
            Some(Value::BulkString(v)) => index::from_bytes(&v),
            _ => None,
        };
        let similarity = stored
            .filter(|v| v.len() == query.len())
            .map(|v| index::dot(&v, query));
        let Some(similarity) = similarity.filter(|s| *s >= min_similarity) else {
            ns.index.write().remove(id);
            ns.dirty.store(true, Ordering::Release);
            self.indexes.wake();
            return Ok(None);
        };
        Ok(Some(Found {
            id,
            similarity,
            value,
            metadata,
            ttl_ms,
        }))
    }

    async fn delete(&self, space: Space<'_>, id: u64) -> Result<bool, StoreError> {
        let ns = self
            .indexes
            .indexed(space.tenant, space.namespace, space.dimension);
        let mut call = self.delete.call();
        call.key(&ns.keys.index)
            .key(&ns.keys.counter)
            .key(&ns.keys.log)
            .key(&ns.keys.base)
            .arg(id)
            .arg(self.log_length);
        let deleted: i64 = self
            .backend
            .invoke_idempotent("semantic_delete", &call)
            .await?;
        ns.index.write().remove(id);
        Ok(deleted > 0)
    }

    fn index_size(&self) -> (u64, u64) {
        self.indexes.all().iter().fold((0, 0), |(n, b), ns| {
            let index = ns.index.read();
            (n + index.len() as u64, b + index.bytes() as u64)
        })
    }
}
