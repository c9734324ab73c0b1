//! The Redis semantic cache store. Redis holds every entry (`lua/set.lua`); each replica keeps
//! a search index of each namespace in memory, built from Redis and kept current by a sync task.
//!
//! # How an index stays current
//! Every change to a namespace (a Set, a Delete, an entry expired or evicted by a Set) is
//! appended by its script to the namespace's change log, a stream. The sync task reads each
//! indexed namespace's log over a connection with `CLIENT TRACKING ON` (RESP3): Redis then
//! pushes an `invalidate` for the log key when anyone appends to it, which wakes the task to
//! read the new changes (and so arms tracking again). A change made through another replica is
//! therefore in this replica's index about one round trip after it was made. As a backstop the
//! task reads every log each `semantic.sync_interval` whatever was pushed, and reads over the
//! pool while the tracking connection is down, so a lost push delays an entry by at most that.
//!
//! A replica that falls behind the log (trimmed past its position, or the log expired) reloads
//! the namespace whole: the log's last id first, then the index and vectors, then the log since
//! that id (replaying a change twice is harmless). At start the task finds every namespace in
//! Redis (SCAN) and loads it; until a namespace is loaded its Gets miss (a cache may miss).
//!
//! # Why a Get cannot serve a removed entry
//! The index only proposes candidates. A Get reads the best few (`CANDIDATES`) in one script
//! that returns the first still in Redis, so an entry deleted, expired or evicted before this
//! replica heard is skipped (and dropped from the index), never served.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc, Mutex, PoisonError, RwLock, Weak,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use redis::{PushInfo, PushKind, Value, aio::MultiplexedConnection};

use super::{
    config::SemanticConfig,
    index::{self, SearchPlan, VectorIndex},
    keys::{SpaceKeys, parse_index_key},
    store::{CANDIDATES, Entry, Found, SemanticStore, Space, Stored},
};
use crate::{
    store::{
        StoreError,
        redis::{RedisBackend, lua, reply, scripts::LuaScript},
    },
    tenant::Tenant,
};

/// Changes read from a log per request.
const LOG_BATCH: usize = 2_000;

/// Namespaces larger than this are searched on a blocking thread (2,048 × 768 is ~0.3 ms of
/// exact scan).
const BLOCKING_SEARCH: usize = 2_048;

/// How long a Get waits for the first load of its namespace on this replica.
const FIRST_LOAD_WAIT: Duration = Duration::from_millis(100);

/// Entries read per request while loading a namespace.
const LOAD_BATCH: usize = 1_000;

/// One indexed namespace of one tenant.
struct Indexed {
    keys: SpaceKeys,
    dimension: usize,
    index: RwLock<VectorIndex>,
    /// Whether the index was loaded (until then Gets wait for it, briefly, then miss).
    loaded: AtomicBool,
    /// Woken when a load ends.
    load_done: tokio::sync::Notify,
    /// Whether the log may hold changes not applied yet.
    dirty: AtomicBool,
    /// Whether a load of it is running (loads run as tasks of their own).
    loading: AtomicBool,
    /// Whether it must be loaded again (its log no longer reaches back to this replica's
    /// position); meanwhile the index it has goes on answering (every answer is checked in
    /// Redis).
    reload: AtomicBool,
    /// The last log entry applied (`None`: the log was empty or absent when loaded).
    last: Mutex<Option<String>>,
}

struct Shared {
    backend: RedisBackend,
    set: LuaScript,
    get: LuaScript,
    delete: LuaScript,
    log_length: u64,
    sync_interval: Duration,
    /// Namespaces by log key (what tracking pushes name).
    spaces: RwLock<HashMap<String, Arc<Indexed>>>,
    /// Configured namespaces and their dimensions (what the start-up scan loads).
    dimensions: HashMap<String, usize>,
    /// The tracking connection, when up, and its number (a loss reported for an older one must
    /// not drop a newer one).
    conn: Mutex<Option<(u64, MultiplexedConnection)>>,
    /// Numbers the tracking connections.
    connections: AtomicU64,
    /// Wakes the sync task (a push, a new namespace).
    wake: Arc<tokio::sync::Notify>,
    /// Wakes the connection keeper (the connection was lost).
    lost: Arc<tokio::sync::Notify>,
    tracking: metrics::Gauge,
    resyncs: metrics::Counter,
    changes: metrics::Counter,
}

/// The semantic cache in Redis (see the module docs).
pub struct RedisSemanticStore {
    shared: Arc<Shared>,
}

impl RedisSemanticStore {
    /// Registers the scripts with `backend` and starts the sync task and the tracking
    /// connection (both end when the store is dropped).
    pub fn new(backend: RedisBackend, config: &SemanticConfig) -> Result<Self, StoreError> {
        let shared = Arc::new(Shared {
            set: backend.register("semantic.set", lua!("src/semantic/lua/set.lua"))?,
            get: backend.register("semantic.get", include_str!("lua/get.lua"))?,
            delete: backend.register("semantic.delete", include_str!("lua/delete.lua"))?,
            log_length: config.log_length,
            sync_interval: config.sync_interval,
            spaces: RwLock::new(HashMap::new()),
            dimensions: config
                .namespaces
                .iter()
                .map(|(name, ns)| (name.clone(), ns.dimension))
                .collect(),
            conn: Mutex::new(None),
            connections: AtomicU64::new(0),
            wake: Arc::new(tokio::sync::Notify::new()),
            lost: Arc::new(tokio::sync::Notify::new()),
            tracking: metrics::gauge!("flowstate_semantic_tracking"),
            resyncs: metrics::counter!("flowstate_semantic_resyncs_total"),
            changes: metrics::counter!("flowstate_semantic_changes_total"),
            backend,
        });
        if !shared.dimensions.is_empty() {
            tokio::spawn(keep_connected(Arc::downgrade(&shared)));
            tokio::spawn(sync(Arc::downgrade(&shared)));
        }
        Ok(Self { shared })
    }
}

impl Shared {
    /// The namespace's index, registered (and loaded by the sync task) on first use.
    fn indexed(&self, tenant: &Tenant, namespace: &str, dimension: usize) -> Arc<Indexed> {
        let keys = self.backend.keys().semantic(tenant, namespace);
        if let Some(found) = self
            .spaces
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&keys.log)
        {
            return found.clone();
        }
        let mut spaces = self.spaces.write().unwrap_or_else(PoisonError::into_inner);
        let indexed = spaces
            .entry(keys.log.clone())
            .or_insert_with(|| {
                Arc::new(Indexed {
                    dimension,
                    index: RwLock::new(VectorIndex::new(dimension)),
                    loaded: AtomicBool::new(false),
                    load_done: tokio::sync::Notify::new(),
                    dirty: AtomicBool::new(true),
                    loading: AtomicBool::new(false),
                    reload: AtomicBool::new(false),
                    last: Mutex::new(None),
                    keys,
                })
            })
            .clone();
        drop(spaces);
        self.wake.notify_one();
        indexed
    }

    fn all(&self) -> Vec<Arc<Indexed>> {
        self.spaces
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }

    fn mark_all_dirty(&self) {
        for ns in self.all() {
            ns.dirty.store(true, Ordering::Release);
        }
        self.wake.notify_one();
    }

    /// Connection `connection` is lost (or cannot be trusted): drop it, unless a newer one
    /// replaced it already.
    fn lose(&self, connection: u64) {
        let mut conn = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        if conn.as_ref().is_none_or(|(id, _)| *id != connection) {
            return;
        }
        *conn = None;
        drop(conn);
        tracing::warn!(
            "semantic cache: tracking connection lost; reading change logs every \
             semantic.sync_interval until it is back"
        );
        self.tracking.set(0.0);
        self.lost.notify_one();
    }

    /// A push on tracking connection `connection` (in order with its replies; must not block).
    fn on_push(&self, connection: u64, push: PushInfo) {
        match push.kind {
            PushKind::Invalidate => match push.data.into_iter().next() {
                Some(Value::Array(keys)) => {
                    let spaces = self.spaces.read().unwrap_or_else(PoisonError::into_inner);
                    for key in keys {
                        if let Value::BulkString(k) = key
                            && let Some(ns) =
                                std::str::from_utf8(&k).ok().and_then(|k| spaces.get(k))
                        {
                            ns.dirty.store(true, Ordering::Release);
                        }
                    }
                    drop(spaces);
                    self.wake.notify_one();
                }
                // The whole database was flushed.
                _ => self.mark_all_dirty(),
            },
            PushKind::Disconnection => self.lose(connection),
            _ => {}
        }
    }

    /// Sends `pipe` over the tracking connection (so Redis tracks the keys it reads), or over
    /// the pool while there is none.
    async fn read(
        &self,
        op: &'static str,
        pipe: &redis::Pipeline,
    ) -> Result<Vec<Value>, StoreError> {
        let conn = self
            .conn
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let Some((connection, mut conn)) = conn else {
            return self.backend.pipeline(op, pipe).await;
        };
        let start = Instant::now();
        let replies = pipe.query_async::<Vec<Value>>(&mut conn).await;
        metrics::histogram!("flowstate_store_duration_seconds", "op" => op)
            .record(start.elapsed().as_secs_f64());
        replies.map_err(|e| {
            if e.is_connection_dropped() || e.is_io_error() || e.is_unrecoverable_error() {
                self.lose(connection);
            }
            crate::store::redis::classify(&e, self.backend.command_timeout())
        })
    }

    /// Applies what the namespace's log holds beyond this replica's position. The log is read
    /// from that position inclusive: if it no longer starts there (trimmed past it, expired,
    /// flushed, or recreated by a failover), changes may have been missed and the namespace is
    /// reloaded instead.
    async fn catch_up(&self, ns: &Indexed) -> Result<(), StoreError> {
        let last = ns
            .last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let mut pipe = redis::pipe();
        pipe.cmd("XRANGE")
            .arg(&ns.keys.log)
            .arg(last.as_deref().unwrap_or("-"))
            .arg("+")
            .arg("COUNT")
            .arg(LOG_BATCH);
        let replies = self.read("semantic_sync", &pipe).await?;
        let entries = stream_entries(replies.into_iter().next().unwrap_or(Value::Nil))?;
        if let Some(last) = &last
            && entries.first().is_none_or(|(first, _)| first != last)
        {
            ns.reload.store(true, Ordering::Release);
            ns.dirty.store(true, Ordering::Release);
            return Ok(());
        }
        let full = entries.len() >= LOG_BATCH;
        if self.apply(ns, entries, last.as_deref()) && full {
            ns.dirty.store(true, Ordering::Release);
        }
        Ok(())
    }

    /// Applies log entries after `last`; whether any was new.
    fn apply(&self, ns: &Indexed, entries: Vec<(String, LogEntry)>, last: Option<&str>) -> bool {
        let last = last.map(stream_id);
        let fresh: Vec<_> = entries
            .into_iter()
            .filter(|(id, _)| last.is_none_or(|l| stream_id(id) > l))
            .collect();
        let Some((newest, _)) = fresh.last() else {
            return false;
        };
        let newest = newest.clone();
        let mut index = ns.index.write().unwrap_or_else(PoisonError::into_inner);
        for (_, change) in &fresh {
            match change {
                LogEntry::Added(id, vector) => index.upsert(*id, vector),
                LogEntry::Removed(id) => {
                    index.remove(*id);
                }
                LogEntry::Unknown => {}
            }
        }
        drop(index);
        self.changes.increment(fresh.len() as u64);
        *ns.last.lock().unwrap_or_else(PoisonError::into_inner) = Some(newest);
        true
    }

    /// Loads a namespace whole: the log's position, then the index and every vector; the log
    /// since that position is applied next (the namespace is left dirty).
    async fn load(&self, ns: &Indexed) -> Result<(), StoreError> {
        let started = Instant::now();
        // A gap found while this load runs asks for another.
        ns.reload.store(false, Ordering::Release);
        let mut pipe = redis::pipe();
        pipe.cmd("XREVRANGE")
            .arg(&ns.keys.log)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .cmd("ZRANGE")
            .arg(&ns.keys.index)
            .arg(0)
            .arg(-1);
        let mut replies = self.read("semantic_load", &pipe).await?.into_iter();
        let position = stream_entries(replies.next().unwrap_or(Value::Nil))?
            .into_iter()
            .next()
            .map(|(id, _)| id);
        let ids: Vec<u64> = match replies.next() {
            Some(Value::Array(ids)) => ids.iter().map(entry_id).collect::<Result<_, _>>()?,
            Some(other) => return Err(reply::unexpected("ZRANGE", "an array", &other)),
            None => {
                return Err(StoreError::Protocol(
                    "semantic load: no ZRANGE reply".into(),
                ));
            }
        };
        let mut fresh = VectorIndex::new(ns.dimension);
        for chunk in ids.chunks(LOAD_BATCH) {
            let mut pipe = redis::pipe();
            for id in chunk {
                pipe.cmd("HGET")
                    .arg(format!("{}{id}", ns.keys.base))
                    .arg("v");
            }
            let vectors = self.backend.pipeline("semantic_load", &pipe).await?;
            for (id, v) in chunk.iter().zip(vectors) {
                // Gone since the index was read: its removal is in the log.
                if let Value::BulkString(bytes) = v
                    && let Some(vector) = index::from_bytes(&bytes)
                {
                    fresh.upsert(*id, &vector);
                }
            }
        }
        let entries = fresh.len();
        *ns.index.write().unwrap_or_else(PoisonError::into_inner) = fresh;
        *ns.last.lock().unwrap_or_else(PoisonError::into_inner) = position;
        ns.loaded.store(true, Ordering::Release);
        ns.dirty.store(true, Ordering::Release);
        self.resyncs.increment(1);
        tracing::info!(
            namespace = %ns.keys.index,
            entries,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "semantic cache: namespace index loaded"
        );
        Ok(())
    }

    /// Registers every semantic namespace found in Redis whose name is configured.
    async fn discover(&self) -> Result<(), StoreError> {
        let pattern = self.backend.keys().semantic_index_pattern();
        let mut cursor = 0u64;
        loop {
            let mut pipe = redis::pipe();
            pipe.cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000);
            let reply = self.backend.pipeline("semantic_scan", &pipe).await?;
            let Some(Value::Array(parts)) = reply.into_iter().next() else {
                return Err(StoreError::Protocol("SCAN: not an array".into()));
            };
            let mut parts = parts.into_iter();
            cursor = match parts.next() {
                Some(Value::BulkString(c)) => reply::parse_int(&c)
                    .and_then(|c| u64::try_from(c).ok())
                    .ok_or_else(|| StoreError::Protocol("SCAN: bad cursor".into()))?,
                other => {
                    return Err(reply::unexpected(
                        "SCAN",
                        "a cursor",
                        &other.unwrap_or(Value::Nil),
                    ));
                }
            };
            if let Some(Value::Array(keys)) = parts.next() {
                for key in keys {
                    if let Value::BulkString(k) = key
                        && let Some((tenant, namespace)) =
                            std::str::from_utf8(&k).ok().and_then(parse_index_key)
                        && let Some(&dimension) = self.dimensions.get(&namespace)
                    {
                        self.indexed(&tenant, &namespace, dimension);
                    }
                }
            }
            if cursor == 0 {
                return Ok(());
            }
        }
    }
}

/// One change of a log.
enum LogEntry {
    Added(u64, Vec<f32>),
    Removed(u64),
    Unknown,
}

/// An entry id, as a script returns it (a number) or a sorted set lists it (a string).
fn entry_id(v: &Value) -> Result<u64, StoreError> {
    match v {
        Value::BulkString(b) => reply::parse_int(b)
            .and_then(|i| u64::try_from(i).ok())
            .ok_or_else(|| reply::unexpected("semantic", "an entry id", v)),
        other => reply::u64_of(other, "a semantic entry id"),
    }
}

/// A stream id's (ms, seq), for ordering.
fn stream_id(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

/// The entries of an XRANGE reply: (stream id, change).
fn stream_entries(v: Value) -> Result<Vec<(String, LogEntry)>, StoreError> {
    let items = match v {
        Value::Array(items) => items,
        Value::Nil => return Ok(Vec::new()),
        other => return Err(reply::unexpected("XRANGE", "an array", &other)),
    };
    items
        .into_iter()
        .map(|item| {
            let Value::Array(pair) = item else {
                return Err(StoreError::Protocol(
                    "XRANGE: an entry is not a pair".into(),
                ));
            };
            let mut pair = pair.into_iter();
            let id = reply::string(pair.next().unwrap_or(Value::Nil))?;
            let fields: Vec<(Value, Value)> = match pair.next() {
                Some(Value::Array(f)) => {
                    let mut f = f.into_iter();
                    std::iter::from_fn(|| Some((f.next()?, f.next()?))).collect()
                }
                Some(Value::Map(m)) => m,
                _ => Vec::new(),
            };
            let (mut op, mut entry, mut vector) = (None, None, None);
            for (k, v) in fields {
                let Value::BulkString(k) = k else { continue };
                match (k.as_slice(), v) {
                    (b"o", Value::BulkString(o)) => op = o.first().copied(),
                    (b"i", Value::BulkString(i)) => {
                        entry = reply::parse_int(&i).and_then(|i| u64::try_from(i).ok());
                    }
                    (b"v", Value::BulkString(v)) => vector = index::from_bytes(&v),
                    _ => {}
                }
            }
            let change = match (op, entry, vector) {
                (Some(b'+'), Some(id), Some(v)) => LogEntry::Added(id, v),
                (Some(b'-'), Some(id), _) => LogEntry::Removed(id),
                _ => LogEntry::Unknown,
            };
            Ok((id, change))
        })
        .collect()
}

/// Keeps every indexed namespace current (see the module docs). Ends when the store is
/// dropped.
async fn sync(shared: Weak<Shared>) {
    let mut discovered = false;
    let mut pause = Duration::from_millis(100);
    let mut next_poll = Instant::now();
    loop {
        let Some(strong) = shared.upgrade() else {
            return;
        };
        if !discovered {
            match strong.discover().await {
                Ok(()) => discovered = true,
                Err(e) => tracing::warn!(error = %e, "semantic cache: cannot list namespaces"),
            }
        }
        // The backstop, on a fixed beat whatever the pushes: read every log.
        if Instant::now() >= next_poll {
            next_poll = Instant::now() + strong.sync_interval;
            for ns in strong.all() {
                ns.dirty.store(true, Ordering::Release);
            }
        }
        let mut failed = false;
        for ns in strong.all() {
            if ns.loading.load(Ordering::Acquire) {
                continue;
            }
            if !ns.loaded.load(Ordering::Acquire) || ns.reload.load(Ordering::Acquire) {
                // A load takes seconds for a large namespace: a task of its own, so the other
                // namespaces' changes keep flowing meanwhile.
                if ns.dirty.load(Ordering::Acquire) && !ns.loading.swap(true, Ordering::AcqRel) {
                    ns.dirty.store(false, Ordering::Release);
                    tokio::spawn(load(strong.clone(), ns));
                }
                continue;
            }
            if ns.dirty.swap(false, Ordering::AcqRel)
                && let Err(e) = strong.catch_up(&ns).await
            {
                ns.dirty.store(true, Ordering::Release);
                failed = true;
                tracing::warn!(error = %e, namespace = %ns.keys.index, "semantic cache: sync failed");
            }
        }
        let again = strong
            .all()
            .iter()
            .any(|ns| ns.dirty.load(Ordering::Acquire) && !ns.loading.load(Ordering::Acquire));
        let wait = if failed || !discovered {
            pause = (pause * 2).min(Duration::from_secs(5));
            pause
        } else {
            pause = Duration::from_millis(100);
            if again {
                Duration::ZERO
            } else {
                next_poll.saturating_duration_since(Instant::now())
            }
        };
        let wake = strong.wake.clone();
        drop(strong);
        if wait.is_zero() {
            tokio::task::yield_now().await;
            continue;
        }
        let woken = wake.notified();
        tokio::pin!(woken);
        tokio::select! {
            () = woken => {}
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// Loads `ns` (see [`Shared::load`]), then wakes the sync task to apply its log since.
async fn load(shared: Arc<Shared>, ns: Arc<Indexed>) {
    if let Err(e) = shared.load(&ns).await {
        tracing::warn!(error = %e, namespace = %ns.keys.index, "semantic cache: load failed");
        ns.dirty.store(true, Ordering::Release);
        // Not at once again: the sync task's next beat retries.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    ns.loading.store(false, Ordering::Release);
    ns.load_done.notify_waiters();
    shared.wake.notify_one();
}

/// Opens the tracking connection, and reopens it when lost (with a pause growing to 5 s).
async fn keep_connected(shared: Weak<Shared>) {
    let mut pause = Duration::from_millis(100);
    loop {
        let Some(strong) = shared.upgrade() else {
            return;
        };
        let handler = shared.clone();
        let id = strong.connections.fetch_add(1, Ordering::AcqRel) + 1;
        let push = move |info: PushInfo| {
            if let Some(shared) = handler.upgrade() {
                shared.on_push(id, info);
            }
            Ok::<(), redis::aio::SendError>(())
        };
        match strong
            .backend
            .tracked_connection("flowstate-semantic-cache", push)
            .await
        {
            Ok(conn) => {
                pause = Duration::from_millis(100);
                *strong.conn.lock().unwrap_or_else(PoisonError::into_inner) = Some((id, conn));
                strong.tracking.set(1.0);
                // Read every log over the new connection: that arms tracking of each.
                strong.mark_all_dirty();
                let lost = strong.lost.clone();
                let every = strong.sync_interval;
                drop(strong);
                // A connection that died without a word is noticed by a read; this makes sure
                // there is one each interval.
                loop {
                    let notified = lost.notified();
                    tokio::pin!(notified);
                    tokio::select! {
                        () = notified => {}
                        () = tokio::time::sleep(every) => {}
                    }
                    let Some(strong) = shared.upgrade() else {
                        return;
                    };
                    let conn = strong
                        .conn
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .clone();
                    let Some((current, mut conn)) = conn else {
                        break;
                    };
                    if current != id {
                        break;
                    }
                    if redis::cmd("PING")
                        .query_async::<Value>(&mut conn)
                        .await
                        .is_err()
                    {
                        strong.lose(id);
                        break;
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "semantic cache: cannot open the tracking connection");
                drop(strong);
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
        }
    }
}

#[tonic::async_trait]
impl SemanticStore for RedisSemanticStore {
    async fn set(&self, space: Space<'_>, entry: Entry) -> Result<Stored, StoreError> {
        let shared = &self.shared;
        let ns = shared.indexed(space.tenant, space.namespace, space.dimension);
        let metadata = serde_json::to_string(&entry.metadata)
            .map_err(|e| StoreError::Protocol(format!("labels: {e}")))?;
        let vector = index::to_bytes(&entry.vector);
        let mut call = shared.set.call();
        call.key(&ns.keys.index)
            .key(&ns.keys.counter)
            .key(&ns.keys.log)
            .key(&ns.keys.base)
            .arg(vector)
            .arg(entry.value.as_ref())
            .arg(metadata)
            .arg(entry.ttl_ms)
            .arg(entry.max_entries)
            .arg(shared.log_length);
        // Not resent after a dropped connection: it may have stored the entry.
        let reply: Vec<i64> = shared.backend.invoke("semantic_set", &call).await?;
        let [id, evicted] = reply[..] else {
            return Err(StoreError::Protocol(format!("semantic set: {reply:?}")));
        };
        let id = u64::try_from(id).map_err(|_| StoreError::Protocol("semantic set: id".into()))?;
        // Read your writes: in this replica's index now, not when the log says so.
        if ns.loaded.load(Ordering::Acquire) {
            ns.index
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .upsert(id, &entry.vector);
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
        let shared = &self.shared;
        let ns = shared.indexed(space.tenant, space.namespace, space.dimension);
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
                    .unwrap_or_else(PoisonError::into_inner)
                    .search(query, min_similarity, CANDIDATES, plan)
            }
        };
        let large = ns
            .index
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
            > BLOCKING_SEARCH;
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
        let mut call = shared.get.call();
        call.key(&ns.keys.base);
        for (id, _) in &candidates {
            call.arg(*id);
        }
        let reply: Vec<Value> = shared
            .backend
            .invoke_idempotent("semantic_get", &call)
            .await?;
        let mut reply = reply.into_iter();
        let id = reply::u64_of(&reply.next().unwrap_or(Value::Nil), "semantic get id")?;
        if id == 0 {
            let mut index = ns.index.write().unwrap_or_else(PoisonError::into_inner);
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
            ns.index
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(id);
            ns.dirty.store(true, Ordering::Release);
            shared.wake.notify_one();
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
        let shared = &self.shared;
        let ns = shared.indexed(space.tenant, space.namespace, space.dimension);
        let mut call = shared.delete.call();
        call.key(&ns.keys.index)
            .key(&ns.keys.counter)
            .key(&ns.keys.log)
            .key(&ns.keys.base)
            .arg(id)
            .arg(shared.log_length);
        let deleted: i64 = shared
            .backend
            .invoke_idempotent("semantic_delete", &call)
            .await?;
        ns.index
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(id);
        Ok(deleted > 0)
    }

    fn index_size(&self) -> (u64, u64) {
        self.shared.all().iter().fold((0, 0), |(n, b), ns| {
            let index = ns.index.read().unwrap_or_else(PoisonError::into_inner);
            (n + index.len() as u64, b + index.bytes() as u64)
        })
    }
}
