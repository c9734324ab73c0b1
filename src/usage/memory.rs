//! The in-memory usage store: buckets in process memory with the same semantics as the
//! scripts (store clock, retention, the dimension-value cap, exact distinct counts where Redis
//! estimates them), one critical section per call.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use parking_lot::{Mutex, MutexGuard};

use super::{
    keys::top_shard,
    model::{Bucketed, Buckets, Granularity, Read, SubjectUsage, TOP_SHARDS},
    store::{Keep, UsageStore},
};
use crate::{
    store::{
        StoreError,
        keys::Keys,
        memory::{Budget, Clock, ExpiryQueue, MemoryBackend},
    },
    tenant::Tenant,
    time::Millis,
};

#[derive(Default)]
struct Bucket {
    fields: HashMap<String, i64>,
    uniques: HashSet<String>,
    expires: Millis,
    bytes: usize,
}

struct State {
    /// Subjects' buckets by key (as Redis names them).
    buckets: HashMap<String, Bucket>,
    /// Top-index buckets by key: subject → total.
    top: HashMap<String, Bucket>,
    /// Batch ids recently recorded (a batch is one critical section here: all of it counted, or
    /// none), with when they are forgotten.
    batches: HashMap<String, Millis>,
    expiry: ExpiryQueue,
    budget: Budget,
}

impl State {
    fn forget(&mut self, key: &str) {
        if let Some(at) = self.batches.remove(key) {
            self.expiry.remove(at, key);
        }
        for map in [&mut self.buckets, &mut self.top] {
            if let Some(b) = map.remove(key) {
                self.expiry.remove(b.expires, key);
                self.budget.release(b.bytes);
            }
        }
    }

    fn sweep(&mut self, now: Millis) -> usize {
        let due = self.expiry.due(now);
        for key in &due {
            self.forget(key);
        }
        due.len()
    }

    /// Drops `key` if it has expired (the sweeper may not have run yet).
    fn expire(&mut self, key: &str, now: Millis) {
        let expires = self
            .buckets
            .get(key)
            .or_else(|| self.top.get(key))
            .map(|b| b.expires)
            .or_else(|| self.batches.get(key).copied());
        if expires.is_some_and(|e| e <= now) {
            self.forget(key);
        }
    }

    /// Adds `amounts` to the bucket `key` of `map` (top: `true`), new fields beyond
    /// `max_fields` counted as `<dimension>=_other`, and sets its expiry.
    fn add(
        &mut self,
        top: bool,
        key: &str,
        amounts: &[(String, i64)],
        uniques: &[String],
        max_fields: usize,
        expires: Millis,
    ) -> usize {
        let map = if top {
            &mut self.top
        } else {
            &mut self.buckets
        };
        let bucket = map.entry(key.to_owned()).or_default();
        let mut grew = 0;
        for (field, amount) in amounts {
            let field = if !top
                && field != "_"
                && !bucket.fields.contains_key(field)
                && bucket.fields.len() >= max_fields
            {
                let dim = field.split_once('=').map_or(field.as_str(), |(d, _)| d);
                format!("{dim}=_other")
            } else {
                field.clone()
            };
            if !bucket.fields.contains_key(&field) {
                grew += field.len() + FIELD_BYTES;
            }
            *bucket.fields.entry(field).or_default() += amount;
        }
        for u in uniques {
            if bucket.uniques.insert(u.clone()) {
                grew += u.len() + UNIQUE_BYTES;
            }
        }
        let old = std::mem::replace(&mut bucket.expires, expires);
        if bucket.bytes == 0 {
            grew += 2 * key.len() + BUCKET_BYTES;
        }
        bucket.bytes += grew;
        if old != expires {
            self.expiry.remove(old, key);
            self.expiry.insert(expires, key.to_owned());
        }
        grew
    }
}

/// Usage in process memory. Cheap to clone.
#[derive(Clone)]
pub struct MemoryUsageStore {
    state: Arc<Mutex<State>>,
    keys: Keys,
    clock: Clock,
}

impl MemoryUsageStore {
    /// An empty store whose sweeper runs until the store is dropped.
    pub fn new(backend: &MemoryBackend) -> Self {
        let state = Arc::new(Mutex::new(State {
            buckets: HashMap::new(),
            top: HashMap::new(),
            batches: HashMap::new(),
            expiry: ExpiryQueue::default(),
            budget: backend.budget().clone(),
        }));
        backend.spawn_sweeper("usage buckets", Arc::downgrade(&state), State::sweep);
        Self {
            state,
            keys: backend.keys().clone(),
            clock: backend.clock().clone(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock()
    }
}

/// Bytes a new field costs beyond its name (a `dimension=_other` field is at most 7 longer than
/// `dimension=`, so this also bounds a redirected one), a unique value beyond itself, and a
/// bucket beyond its key.
const FIELD_BYTES: usize = 56;
const UNIQUE_BYTES: usize = 32;
const BUCKET_BYTES: usize = 96;

/// The most a batch can add: every bucket, field and unique value new (key names are counted
/// with room for the granularity and index).
fn upper_bound(keys: &Keys, tenant: &Tenant, usage: &[SubjectUsage]) -> usize {
    let grans = Granularity::ALL.len();
    usage
        .iter()
        .map(|u| {
            let key = keys.usage_base(tenant, &u.metric, &u.subject).len() + 32;
            let fields: usize = u.fields.iter().map(|(f, _)| f.len() + FIELD_BYTES).sum();
            let uniques: usize = u.uniques.iter().map(|v| v.len() + UNIQUE_BYTES).sum();
            let top = keys.usage_top_base(tenant, &u.metric, 0).len() + 32;
            grans * (2 * key + BUCKET_BYTES + fields)
                + (grans - 1) * (2 * key + BUCKET_BYTES + uniques)
                + grans * (2 * top + BUCKET_BYTES + u.subject.len() + FIELD_BYTES)
        })
        .sum()
}

/// When bucket `index` of `g` ends.
fn ends(g: Granularity, index: i64) -> Millis {
    g.start(index + 1)
}

#[tonic::async_trait]
impl UsageStore for MemoryUsageStore {
    async fn record(
        &self,
        tenant: &Tenant,
        usage: &[SubjectUsage],
        keep: Keep,
        max_fields: usize,
        batch: Option<(&str, i64)>,
    ) -> Result<(), StoreError> {
        let now = self.clock.now();
        let mut state = self.lock();
        if let Some((id, remember)) = batch {
            let marker = self.keys.usage_base(tenant, "_batch", id);
            state.expire(&marker, now);
            if state.batches.contains_key(&marker) {
                return Ok(());
            }
            let until = now.saturating_add(remember);
            state.batches.insert(marker.clone(), until);
            state.expiry.insert(until, marker);
        }
        // The most the batch can add (every bucket and field new) is charged first, so a full
        // store records nothing; what it did not need is given back after.
        let charged = upper_bound(&self.keys, tenant, usage);
        state.budget.charge(charged)?;
        let mut grew = 0;
        for u in usage {
            let base = self.keys.usage_base(tenant, &u.metric, &u.subject);
            let shard_base = self
                .keys
                .usage_top_base(tenant, &u.metric, top_shard(&u.subject));
            let total: Vec<(String, i64)> = u
                .fields
                .iter()
                .find(|(f, _)| f == "_")
                .map(|(_, t)| (u.subject.clone(), *t))
                .into_iter()
                .collect();
            for (g, keep) in Granularity::ALL.into_iter().zip(keep) {
                let index = g.index(now);
                let expires = ends(g, index).saturating_add(keep);
                let key = Keys::usage_bucket(&base, g, index);
                state.expire(&key, now);
                grew += state.add(false, &key, &u.fields, &[], max_fields, expires);
                if g != Granularity::Minute && !u.uniques.is_empty() {
                    let key = Keys::usage_unique(&base, g, index);
                    state.expire(&key, now);
                    grew += state.add(false, &key, &[], &u.uniques, max_fields, expires);
                }
                if !total.is_empty() {
                    let key = Keys::usage_bucket(&shard_base, g, index);
                    state.expire(&key, now);
                    grew += state.add(true, &key, &total, &[], usize::MAX, expires);
                }
            }
        }
        state.budget.release(charged.saturating_sub(grew));
        Ok(())
    }

    async fn query(
        &self,
        tenant: &Tenant,
        buckets: Buckets<'_>,
        read: &Read,
    ) -> Result<Bucketed, StoreError> {
        let Buckets {
            metric,
            subject,
            granularity: g,
            first,
            last,
        } = buckets;
        let now = self.clock.now();
        let base = self.keys.usage_base(tenant, metric, subject);
        let mut state = self.lock();
        let mut out = Bucketed::default();
        let mut distinct: HashSet<String> = HashSet::new();
        for i in first..=last {
            let key = if *read == Read::Unique {
                Keys::usage_unique(&base, g, i)
            } else {
                Keys::usage_bucket(&base, g, i)
            };
            state.expire(&key, now);
            let Some(bucket) = state.buckets.get(&key) else {
                out.buckets.push(Vec::new());
                continue;
            };
            out.buckets.push(match read {
                Read::Field(field) => bucket
                    .fields
                    .get(field)
                    .map(|v| vec![(field.clone(), *v)])
                    .unwrap_or_default(),
                Read::Group(dim) => {
                    let prefix = format!("{dim}=");
                    let mut values: Vec<(String, i64)> = bucket
                        .fields
                        .iter()
                        .filter_map(|(f, v)| f.strip_prefix(&prefix).map(|s| (s.to_owned(), *v)))
                        .collect();
                    values.sort();
                    values
                }
                Read::Unique => {
                    distinct.extend(bucket.uniques.iter().cloned());
                    if bucket.uniques.is_empty() {
                        Vec::new()
                    } else {
                        vec![(String::new(), bucket.uniques.len() as i64)]
                    }
                }
            });
        }
        if *read == Read::Unique {
            out.distinct = Some(distinct.len() as i64);
        }
        Ok(out)
    }

    async fn top(
        &self,
        tenant: &Tenant,
        metric: &str,
        g: Granularity,
        count: usize,
        n: usize,
    ) -> Result<(Vec<(String, i64)>, i64), StoreError> {
        let now = self.clock.now();
        let current = g.index(now);
        let mut state = self.lock();
        let mut sums: HashMap<String, i64> = HashMap::new();
        for shard in 0..TOP_SHARDS {
            let base = self.keys.usage_top_base(tenant, metric, shard);
            for back in 0..count as i64 {
                let key = Keys::usage_bucket(&base, g, current - back);
                state.expire(&key, now);
                if let Some(bucket) = state.top.get(&key) {
                    for (s, v) in &bucket.fields {
                        *sums.entry(s.clone()).or_default() += v;
                    }
                }
            }
        }
        let mut all: Vec<(String, i64)> = sums.into_iter().collect();
        all.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        all.truncate(n);
        Ok((all, current))
    }

    async fn current(
        &self,
        tenant: &Tenant,
        metric: &str,
        subject: &str,
        g: Granularity,
    ) -> Result<(i64, i64), StoreError> {
        let now = self.clock.now();
        let index = g.index(now);
        let key = Keys::usage_bucket(&self.keys.usage_base(tenant, metric, subject), g, index);
        let mut state = self.lock();
        state.expire(&key, now);
        let used = state
            .buckets
            .get(&key)
            .and_then(|b| b.fields.get("_"))
            .copied()
            .unwrap_or(0);
        Ok((used, ends(g, index) - now))
    }
}
