//! The near cache: a per-replica tier in front of Redis for namespaces with `near = true`, kept
//! coherent by Redis itself (server-assisted client-side caching).
//!
//! # How it stays coherent
//! Fresh values are read over one connection of their own with `CLIENT TRACKING ON` (RESP3).
//! Redis remembers every key read over it, the entry and its bucket's generation, and pushes an
//! `invalidate` message on that connection when any client changes the key, deletes it, or it
//! expires or is evicted; the message drops the entry here. A Set, Delete or InvalidateTags
//! through any replica changes or deletes entry keys, an InvalidateNamespace changes the
//! generation keys: every other replica's copy goes within the time the push takes to arrive.
//! Writes through this replica also drop its own copies before they return (read your writes,
//! without waiting for the push).
//!
//! # Bounds
//! - An entry is served at most `cache.near_max_staleness` after it was read, and never past
//!   the end of the value's fresh period (measured from when the read was sent, so a replica's
//!   clock is never involved). Stale values, misses and leases are Redis's business: the near
//!   tier only ever answers fresh hits, so leases and stale-while-revalidate behave as before.
//! - A lost tracking connection (a `Disconnection` push, or a heartbeat that fails) stops all
//!   near hits at once and flushes the tier; hits resume after a new connection has tracking on
//!   (flush, then refill on demand). So even an invalidation that never arrives cannot be served
//!   for longer than `cache.near_max_staleness`.
//! - A read whose reply races an invalidation of the same key (the push is handled while the
//!   reply is on its way to the caller) is answered but not kept: every invalidation gets a
//!   sequence number, and a fill checks none of its keys was invalidated since it was sent.
//! - Memory: at most `cache.near_max_bytes` (keys and values), least recently used first.

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use parking_lot::{Mutex, MutexGuard};
use redis::{PushInfo, PushKind, Value, aio::MultiplexedConnection};

use super::model::{Freshness, Lease, Lookup};
use crate::{
    store::{
        StoreError,
        redis::{
            RedisBackend,
            supervisor::{self, AfterLoss, Lifeline, Loss, Pacing, TrackedOwner},
        },
    },
    tenant::Tenant,
    time::Millis,
};

/// Invalidations remembered for fills in flight (a fill that finds fewer, because older ones
/// were dropped, is not kept).
const RECENT_INVALIDATIONS: usize = 16_384;

/// Bytes an entry costs beyond its key and value (moka's node, our struct).
const ENTRY_OVERHEAD: u64 = 96;

/// Told of an invalidated key, so the cache store stops trusting its memo of it for near hits
/// if it is a bucket generation (`None`: every generation may have changed). The memo keeps the
/// generation (and when its TTL was last refreshed): only a read over the tracking connection
/// confirms it again.
pub type DoubtGeneration = Box<dyn Fn(Option<&str>) + Send + Sync>;

/// A value held near.
#[derive(Clone)]
struct Entry {
    value: Bytes,
    /// The end of the value's fresh period, on this replica's monotonic clock.
    fresh_until: Instant,
    /// Whose and which namespace's (for InvalidateTags, which drops the namespace's entries).
    scope: Arc<str>,
}

/// A fresh hit from the near tier.
pub struct NearHit {
    /// The value.
    pub value: Bytes,
    /// What remains of its fresh period, in ms.
    pub fresh_ms: Millis,
}

impl NearHit {
    /// The hit as a store lookup: fresh, no lease needed.
    pub fn lookup(self) -> Lookup {
        Lookup {
            freshness: Freshness::Fresh,
            value: self.value,
            fresh_ms: self.fresh_ms,
            lease: Lease::None,
        }
    }
}

/// Counters and gauges of the tier.
struct Metrics {
    invalidations: metrics::Counter,
    resyncs: metrics::Counter,
    serving: metrics::Gauge,
}

/// State shared with the connection's push handler and the connection task.
struct Shared {
    entries: moka::sync::Cache<String, Entry>,
    max_staleness: Duration,
    /// Whether near hits may be served: a tracking connection is up and nothing was missed.
    serving: AtomicBool,
    /// The tracking connection and its id (reads that fill the tier go over it).
    conn: Mutex<Option<(u64, MultiplexedConnection)>>,
    /// Invalidations so far, and the recent ones (sequence, key) for fills in flight.
    seq: AtomicU64,
    recent: Mutex<VecDeque<(u64, String)>>,
    /// Numbers the tracking connections, and carries their losses to the supervisor: which
    /// connection is current (a late `Disconnection` push of an earlier one is ignored).
    lifeline: Arc<Lifeline>,
    /// How long a read may take (`redis.command_timeout`).
    command_timeout: Duration,
    /// Fills in flight, by entry key: a miss of a key being filled waits for that fill instead
    /// of reading Redis too (when a hot key's copy ends, one read refills it, not one per
    /// caller in flight).
    filling: Mutex<HashMap<String, Arc<tokio::sync::Notify>>>,
    /// Told of every invalidated key, so the cache store stops trusting its memo of a
    /// generation key for near hits (`None`: all of them).
    doubt_generation: DoubtGeneration,
    metrics: Metrics,
}

/// The near tier of one cache store (see the module docs).
pub struct NearCache {
    shared: Arc<Shared>,
}

impl NearCache {
    /// A tier of at most `max_bytes` whose entries live at most `max_staleness`; opens its
    /// tracking connection on `backend` in the background and keeps it open while the tier
    /// lives. `doubt_generation` is told when a bucket generation may have changed (or all).
    pub fn new(
        backend: RedisBackend,
        max_bytes: u64,
        max_staleness: Duration,
        doubt_generation: DoubtGeneration,
    ) -> Self {
        let entries = moka::sync::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|k: &String, e: &Entry| {
                u32::try_from(k.len() as u64 + e.value.len() as u64 + ENTRY_OVERHEAD)
                    .unwrap_or(u32::MAX)
            })
            .time_to_live(max_staleness)
            .support_invalidation_closures()
            .build();
        let shared = Arc::new(Shared {
            entries,
            max_staleness,
            serving: AtomicBool::new(false),
            conn: Mutex::new(None),
            seq: AtomicU64::new(0),
            recent: Mutex::new(VecDeque::new()),
            lifeline: Arc::new(Lifeline::new()),
            command_timeout: backend.command_timeout(),
            filling: Mutex::new(HashMap::new()),
            doubt_generation,
            metrics: Metrics {
                invalidations: metrics::counter!("flowstate_cache_near_invalidations_total"),
                resyncs: metrics::counter!("flowstate_cache_near_resyncs_total"),
                serving: metrics::gauge!("flowstate_cache_near_serving"),
            },
        });
        // Checked every quarter of the staleness bound, so a connection that died without a word
        // stops near hits well within the bound; reopened at once when lost, with a pause that
        // grows to 5 s while opens fail.
        let pacing = Pacing {
            first_pause: Duration::from_millis(100),
            max_pause: Duration::from_secs(5),
            heartbeat: (max_staleness / 4).max(Duration::from_millis(10)),
            ping_timeout: None,
            after_loss: AfterLoss::Pause(Duration::ZERO),
        };
        supervisor::spawn_tracked(&shared, &shared.lifeline, backend, pacing);
        Self { shared }
    }

    /// The fresh value held for `entry_key`, if near hits are being served.
    pub fn get(&self, entry_key: &str) -> Option<NearHit> {
        let shared = &self.shared;
        if !shared.serving.load(Ordering::Acquire) {
            return None;
        }
        let entry = shared.entries.get(entry_key)?;
        let left = entry.fresh_until.checked_duration_since(Instant::now())?;
        if left.is_zero() {
            return None;
        }
        Some(NearHit {
            value: entry.value,
            fresh_ms: Millis::try_from(left.as_millis()).unwrap_or(Millis::MAX),
        })
    }

    /// Joins the fill of `entry_key`: `Some` makes this caller the one that fills it (the guard
    /// wakes the others when dropped); `None` means another caller's fill ended meanwhile (look
    /// again with [`get`](Self::get); still nothing: read through the pool).
    pub async fn fill(&self, entry_key: &str) -> Option<FillGuard> {
        let shared = &self.shared;
        let running = {
            let mut filling = shared.filling.lock();
            match filling.get(entry_key) {
                Some(running) => running.clone(),
                None => {
                    filling.insert(entry_key.to_owned(), Arc::new(tokio::sync::Notify::new()));
                    return Some(FillGuard {
                        shared: shared.clone(),
                        key: entry_key.to_owned(),
                    });
                }
            }
        };
        let done = running.notified();
        tokio::pin!(done);
        // Registered before looking again, so the filler's wake-up cannot fall in between.
        done.as_mut().enable();
        let still = shared
            .filling
            .lock()
            .get(entry_key)
            .is_some_and(|r| Arc::ptr_eq(r, &running));
        if still {
            let _ = tokio::time::timeout(shared.command_timeout, done).await;
        }
        None
    }

    /// Reads over the tracking connection (so Redis tracks the keys read), or `None` when there
    /// is none now (the caller reads through the pool instead). Returns the replies, and a
    /// ticket for [`keep`](Self::keep).
    pub async fn read(
        &self,
        pipe: &redis::Pipeline,
    ) -> Option<Result<(Vec<Value>, Ticket), StoreError>> {
        let shared = &self.shared;
        // The sequence first: an invalidation or loss from here on makes the fill's value not
        // kept, including one that replaces the connection before the read is sent.
        let seq = shared.seq.load(Ordering::Acquire);
        if !shared.serving.load(Ordering::Acquire) {
            return None;
        }
        let (connection, mut conn) = shared.conn.lock().clone()?;
        let ticket = Ticket {
            seq,
            connection,
            sent: Instant::now(),
        };
        let start = Instant::now();
        let replies = pipe.query_async::<Vec<Value>>(&mut conn).await;
        metrics::histogram!("flowstate_store_duration_seconds", "op" => "cache_get_near")
            .record(start.elapsed().as_secs_f64());
        Some(match replies {
            Ok(replies) => Ok((replies, ticket)),
            Err(e) => {
                // A broken connection can no longer be trusted to deliver invalidations (a slow
                // reply or an error reply says nothing about them: the heartbeat decides).
                if (e.is_connection_dropped() || e.is_io_error() || e.is_unrecoverable_error())
                    && shared.lifeline.report_lost(connection)
                {
                    shared.lose();
                }
                Err(crate::store::redis::classify(&e, shared.command_timeout))
            }
        })
    }

    /// Keeps a fresh value read with `ticket` for `fresh_ms` from when it was read, and runs
    /// `confirm` (the read also confirmed the bucket's generation), unless the connection it
    /// was read over is no longer the current one or one of its keys (entry, generation, its
    /// namespace's scope) was invalidated since. Checked and inserted under the lock that
    /// invalidations take too, so an invalidation is either seen here or removes the entry.
    pub fn keep(&self, ticket: Ticket, fill: Fill<'_>, value: Bytes, fresh_ms: Millis) {
        let shared = &self.shared;
        let recent = shared.lock_recent();
        if !shared.serving.load(Ordering::Acquire)
            || !shared.lifeline.is_current(ticket.connection)
            || invalidated_since(
                &recent,
                shared.seq.load(Ordering::Acquire),
                ticket.seq,
                &[fill.entry_key, fill.generation_key, fill.scope],
            )
        {
            return;
        }
        let fresh = Duration::from_millis(u64::try_from(fresh_ms).unwrap_or(0));
        shared.entries.insert(
            fill.entry_key.to_owned(),
            Entry {
                value,
                fresh_until: ticket.sent + fresh.min(shared.max_staleness),
                scope: fill.scope.clone(),
            },
        );
        (fill.confirm)();
        drop(recent);
    }

    /// Drops `keys` here at once (a write through this replica: read your writes without
    /// waiting for Redis's push).
    pub fn invalidate(&self, keys: &[String]) {
        for key in keys {
            self.shared.invalidate(key);
        }
    }

    /// Drops every entry of a namespace (InvalidateTags and InvalidateNamespace through this
    /// replica, which do not name the entries they drop).
    pub fn invalidate_scope(&self, scope: &str) {
        let shared = &self.shared;
        let mut recent = shared.lock_recent();
        // Fills in flight of this namespace must not be kept either.
        shared.record(&mut recent, scope);
        let scope: Arc<str> = Arc::from(scope);
        if let Err(e) = shared
            .entries
            .invalidate_entries_if(move |_, e| e.scope == scope)
        {
            tracing::warn!(error = %e, "near cache: dropping a namespace failed; dropping all");
            shared.entries.invalidate_all();
        }
    }

    /// Entries and their bytes (for the metrics collector).
    pub fn size(&self) -> (u64, u64) {
        let entries = &self.shared.entries;
        entries.run_pending_tasks();
        (entries.entry_count(), entries.weighted_size())
    }
}

/// The one fill in flight of a key; wakes the callers waiting for it when dropped.
pub struct FillGuard {
    shared: Arc<Shared>,
    key: String,
}

impl Drop for FillGuard {
    fn drop(&mut self) {
        let mut filling = self.shared.filling.lock();
        if let Some(done) = filling.remove(&self.key) {
            done.notify_waiters();
        }
    }
}

/// When a fill was sent: the invalidations seen by then, the connection, and the instant.
#[derive(Clone, Copy)]
pub struct Ticket {
    seq: u64,
    connection: u64,
    sent: Instant,
}

/// What a fill read, for [`NearCache::keep`].
pub struct Fill<'a> {
    /// The entry's Redis key.
    pub entry_key: &'a str,
    /// Its bucket's generation key (the read confirmed the generation).
    pub generation_key: &'a str,
    /// Its namespace's [`scope`].
    pub scope: &'a Arc<str>,
    /// Run when the value is kept: the cache store trusts the generation again.
    pub confirm: &'a dyn Fn(),
}

/// The scope of a namespace's entries: tenant and namespace, in a form no key can take.
pub fn scope(tenant: &Tenant, namespace: &str) -> Arc<str> {
    Arc::from(format!("{}\u{0}{namespace}", tenant.as_str()))
}

/// Whether any of `keys` (a fill's entry key, generation key and scope) was invalidated after
/// sequence `since` (`now`: the current one), or everything was. Unsure (older invalidations
/// dropped from `recent`) means yes.
fn invalidated_since(
    recent: &VecDeque<(u64, String)>,
    now: u64,
    since: u64,
    keys: &[&str],
) -> bool {
    if now == since {
        return false;
    }
    match recent.front() {
        Some((oldest, _)) if *oldest <= since + 1 => {}
        _ => return true,
    }
    recent
        .iter()
        .rev()
        .take_while(|(seq, _)| *seq > since)
        .any(|(_, k)| k.is_empty() || keys.contains(&k.as_str()))
}

impl Shared {
    /// The invalidation log; held while an invalidation is recorded and applied, and while a
    /// fill is checked and kept, so the two never interleave.
    fn lock_recent(&self) -> MutexGuard<'_, VecDeque<(u64, String)>> {
        self.recent.lock()
    }

    /// Numbers an invalidation of `key` (empty: everything) for fills in flight.
    fn record(&self, recent: &mut VecDeque<(u64, String)>, key: &str) {
        let seq = self.seq.fetch_add(1, Ordering::AcqRel) + 1;
        if recent.len() >= RECENT_INVALIDATIONS {
            recent.pop_front();
        }
        recent.push_back((seq, key.to_owned()));
    }

    fn invalidate(&self, key: &str) {
        let mut recent = self.lock_recent();
        self.record(&mut recent, key);
        self.entries.invalidate(key);
        (self.doubt_generation)(Some(key));
    }

    /// Drops everything (a flush, a lost or new connection).
    fn flush(&self) {
        let mut recent = self.lock_recent();
        self.record(&mut recent, "");
        self.entries.invalidate_all();
        (self.doubt_generation)(None);
    }

    /// Stops serving and flushes: the tracking connection is gone or cannot be trusted.
    fn lose(&self) {
        let was = self.serving.swap(false, Ordering::AcqRel);
        self.metrics.serving.set(0.0);
        *self.conn.lock() = None;
        self.flush();
        if was {
            tracing::warn!(
                "near cache: tracking connection lost; serving from Redis until it is back"
            );
        }
    }
}

/// The tracking connection, as [`supervisor`] keeps it: opened, PINGed every quarter of the
/// staleness bound, reopened at once when lost.
impl TrackedOwner for Shared {
    const CLIENT_NAME: &'static str = "flowstate-near-cache";
    const LABEL: &'static str = "near cache";

    /// A push on tracking connection `connection` (called in order with its replies, must not
    /// block).
    fn on_push(&self, connection: u64, push: PushInfo) {
        match push.kind {
            PushKind::Invalidate => {
                // [keys] when keys changed; [nil] when the whole database was flushed.
                match push.data.into_iter().next() {
                    Some(Value::Array(keys)) => {
                        for key in keys {
                            if let Value::BulkString(k) = key {
                                self.metrics.invalidations.increment(1);
                                self.invalidate(&String::from_utf8_lossy(&k));
                            }
                        }
                    }
                    _ => {
                        self.metrics.invalidations.increment(1);
                        self.flush();
                    }
                }
            }
            // Stops near hits before the next reply on this connection is handled (a late
            // push of an older connection falls through: it must not drop the current one).
            PushKind::Disconnection if self.lifeline.report_lost(connection) => self.lose(),
            _ => {}
        }
    }

    /// Flush, then refill: nothing read before this connection tracked it stays. (Lost while
    /// being set up: the supervisor calls [`down`](Self::down) next, which stops serving again.)
    fn up(&self, connection: u64, conn: &MultiplexedConnection) {
        self.flush();
        *self.conn.lock() = Some((connection, conn.clone()));
        self.serving.store(true, Ordering::Release);
        self.metrics.serving.set(1.0);
        self.metrics.resyncs.increment(1);
        tracing::info!("near cache: tracking connection up");
    }

    fn down(&self, _: u64, loss: Loss) {
        if let Loss::Heartbeat(e) = &loss {
            tracing::warn!(error = %e, "near cache: tracking connection failed its check");
        }
        self.lose();
    }
}
