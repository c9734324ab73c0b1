//! The semantic cache's sync engine: every namespace this replica indexes, and the task that
//! keeps each index current from its namespace's change log (the store operations that use the
//! indexes are in the parent module).
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
//! The tracking connection is kept by [`supervisor`] (PINGed each `semantic.sync_interval`, so
//! one that died without a word is noticed within that).
//!
//! A replica that falls behind the log (trimmed past its position, or the log expired) reloads
//! the namespace whole: the log's last id first, then the index and vectors, then the log since
//! that id (replaying a change twice is harmless). At start the task finds every namespace in
//! Redis (SCAN) and loads it; until a namespace is loaded its Gets miss (a cache may miss).

use std::{
    collections::HashMap,
    sync::{
        Arc, Weak,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use parking_lot::{Mutex, RwLock};
use redis::{PushInfo, PushKind, Value, aio::MultiplexedConnection};

use super::super::{
    config::SemanticConfig,
    index::{self, VectorIndex},
    keys::{SpaceKeys, parse_index_key},
};
use crate::{
    store::{
        StoreError,
        redis::{
            RedisBackend, reply,
            supervisor::{self, AfterLoss, Lifeline, Loss, Pacing, TrackedOwner},
        },
    },
    tenant::Tenant,
};

/// Changes read from a log per request.
const LOG_BATCH: usize = 2_000;

/// Entries read per request while loading a namespace.
const LOAD_BATCH: usize = 1_000;

/// One indexed namespace of one tenant.
pub(super) struct Indexed {
    pub(super) keys: SpaceKeys,
    dimension: usize,
    pub(super) index: RwLock<VectorIndex>,
    /// Whether the index was loaded (until then Gets wait for it, briefly, then miss).
    pub(super) loaded: AtomicBool,
    /// Woken when a load ends.
    pub(super) load_done: tokio::sync::Notify,
    /// Whether the log may hold changes not applied yet.
    pub(super) dirty: AtomicBool,
    /// Whether a load of it is running (loads run as tasks of their own).
    loading: AtomicBool,
    /// Whether it must be loaded again (its log no longer reaches back to this replica's
    /// position); meanwhile the index it has goes on answering (every answer is checked in
    /// Redis).
    reload: AtomicBool,
    /// The last log entry applied (`None`: the log was empty or absent when loaded).
    last: Mutex<Option<String>>,
}

/// Every namespace this replica indexes, and what keeps them current (see the module docs).
pub(super) struct Indexes {
    backend: RedisBackend,
    sync_interval: Duration,
    /// Namespaces by log key (what tracking pushes name).
    spaces: RwLock<HashMap<String, Arc<Indexed>>>,
    /// Configured namespaces and their dimensions (what the start-up scan loads).
    dimensions: HashMap<String, usize>,
    /// The tracking connection, when up, and its number (a loss reported for an older one must
    /// not drop a newer one).
    conn: Mutex<Option<(u64, MultiplexedConnection)>>,
    /// Numbers the tracking connections and carries their losses to the supervisor.
    lifeline: Arc<Lifeline>,
    /// Wakes the sync task (a push, a new namespace).
    wake: Arc<tokio::sync::Notify>,
    tracking: metrics::Gauge,
    resyncs: metrics::Counter,
    changes: metrics::Counter,
}

impl Indexes {
    /// The indexes of the namespaces `config` names, kept current by a sync task and a tracking
    /// connection on `backend` (both end when the indexes are dropped; neither runs when no
    /// namespace is configured).
    pub(super) fn start(backend: RedisBackend, config: &SemanticConfig) -> Arc<Self> {
        let indexes = Arc::new(Self {
            sync_interval: config.sync_interval,
            spaces: RwLock::new(HashMap::new()),
            dimensions: config
                .namespaces
                .iter()
                .map(|(name, ns)| (name.clone(), ns.dimension))
                .collect(),
            conn: Mutex::new(None),
            lifeline: Arc::new(Lifeline::new()),
            wake: Arc::new(tokio::sync::Notify::new()),
            tracking: metrics::gauge!("flowstate_semantic_tracking"),
            resyncs: metrics::counter!("flowstate_semantic_resyncs_total"),
            changes: metrics::counter!("flowstate_semantic_changes_total"),
            backend,
        });
        if !indexes.dimensions.is_empty() {
            // A connection that died without a word is noticed by a read; the heartbeat makes
            // sure there is one each interval. After a loss, a short pause before reopening.
            let pacing = Pacing {
                first_pause: Duration::from_millis(100),
                max_pause: Duration::from_secs(5),
                heartbeat: indexes.sync_interval,
                ping_timeout: None,
                after_loss: AfterLoss::Pause(Duration::from_millis(100)),
            };
            supervisor::spawn_tracked(&indexes, &indexes.lifeline, indexes.backend.clone(), pacing);
            tokio::spawn(sync(Arc::downgrade(&indexes)));
        }
        indexes
    }

    /// Wakes the sync task (an index found out of step with Redis).
    pub(super) fn wake(&self) {
        self.wake.notify_one();
    }

    /// The namespace's index, registered (and loaded by the sync task) on first use.
    pub(super) fn indexed(
        &self,
        tenant: &Tenant,
        namespace: &str,
        dimension: usize,
    ) -> Arc<Indexed> {
        let keys = self.backend.keys().semantic(tenant, namespace);
        if let Some(found) = self.spaces.read().get(&keys.log) {
            return found.clone();
        }
        let mut spaces = self.spaces.write();
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

    /// Every namespace indexed now.
    pub(super) fn all(&self) -> Vec<Arc<Indexed>> {
        self.spaces.read().values().cloned().collect()
    }

    fn mark_all_dirty(&self) {
        for ns in self.all() {
            ns.dirty.store(true, Ordering::Release);
        }
        self.wake.notify_one();
    }

    /// Connection `connection` is lost (or cannot be trusted): drop it, unless a newer one
    /// replaced it already. (Reads go over the pool until the next one is up.)
    fn lose(&self, connection: u64) {
        let mut conn = self.conn.lock();
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
    }

    /// A push on tracking connection `connection` (in order with its replies; must not block).
    fn handle_push(&self, connection: u64, push: PushInfo) {
        match push.kind {
            PushKind::Invalidate => match push.data.into_iter().next() {
                Some(Value::Array(keys)) => {
                    let spaces = self.spaces.read();
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
            // A late push of an older connection falls through: it must not drop a newer one.
            PushKind::Disconnection if self.lifeline.report_lost(connection) => {
                self.lose(connection);
            }
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
        let conn = self.conn.lock().clone();
        let Some((connection, mut conn)) = conn else {
            return self.backend.pipeline(op, pipe).await;
        };
        let start = Instant::now();
        let replies = pipe.query_async::<Vec<Value>>(&mut conn).await;
        metrics::histogram!("flowstate_store_duration_seconds", "op" => op)
            .record(start.elapsed().as_secs_f64());
        replies.map_err(|e| {
            if (e.is_connection_dropped() || e.is_io_error() || e.is_unrecoverable_error())
                && self.lifeline.report_lost(connection)
            {
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
        let last = ns.last.lock().clone();
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
        let mut index = ns.index.write();
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
        *ns.last.lock() = Some(newest);
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
        *ns.index.write() = fresh;
        *ns.last.lock() = position;
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

/// The tracking connection, as [`supervisor`] keeps it: opened, PINGed each
/// `semantic.sync_interval`, reopened after a short pause when lost.
impl TrackedOwner for Indexes {
    const CLIENT_NAME: &'static str = "flowstate-semantic-cache";
    const LABEL: &'static str = "semantic cache";

    fn on_push(&self, connection: u64, push: PushInfo) {
        self.handle_push(connection, push);
    }

    fn up(&self, connection: u64, conn: &MultiplexedConnection) {
        *self.conn.lock() = Some((connection, conn.clone()));
        self.tracking.set(1.0);
        // Read every log over the new connection: that arms tracking of each.
        self.mark_all_dirty();
    }

    fn down(&self, connection: u64, _: Loss) {
        self.lose(connection);
    }
}

/// One change of a log.
enum LogEntry {
    Added(u64, Vec<f32>),
    Removed(u64),
    Unknown,
}

/// An entry id, as a script returns it (a number) or a sorted set lists it (a string).
pub(super) fn entry_id(v: &Value) -> Result<u64, StoreError> {
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
async fn sync(shared: Weak<Indexes>) {
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

/// Loads `ns` (see [`Indexes::load`]), then wakes the sync task to apply its log since.
async fn load(shared: Arc<Indexes>, ns: Arc<Indexed>) {
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
