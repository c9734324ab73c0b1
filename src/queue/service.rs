//! The queue domain: validation, job defaults, lease tokens, and the waiting Fetch.
//!
//! A lease token is 256 random bits, returned once with the leased job; the store knows the
//! lease only by its public id (the first 128 bits of the token's SHA-256), so neither a dump
//! of Redis nor another worker can act on a lease it was not given. Each lease of a job gets a
//! new token: once a lease runs out and the job is leased again, the old token is refused.
//!
//! # Waiting
//! A Fetch with `wait` subscribes to its queues' [`Signal`]s first, then tries; when nothing is
//! ready the store says how long until the next scheduled job falls due or the next lease runs
//! out. The caller sleeps until a signal fires (an enqueue, retry, give-back or resume on any
//! replica: Redis Pub/Sub), that time comes, or the wait ends, and tries again. While a signal
//! is not live (the Pub/Sub connection is down) it polls every `queues.poll_interval` instead.
//!
//! # Delivery
//! At least once. A Fetch whose answer never reaches the worker (the call was cancelled, the
//! connection dropped) leaves its jobs leased until their timeout, then they go to another
//! worker; an Ack whose answer is lost is not resent (a resend would report the lease lost),
//! so the worker cannot tell whether it landed and the job may run again. Handlers must be
//! idempotent, as with every at-least-once queue.
//!
//! [`Signal`]: crate::store::signal::Signal

use std::{
    collections::HashMap,
    sync::{Arc, Weak},
    time::{Duration, Instant},
};

use bytes::Bytes;
use futures_util::future::{FutureExt as _, select_all};
use rand::{Rng as _, RngCore as _};

use super::{
    config::{QueueSettings, QueuesConfig},
    model::{DeadJob, Enqueued, Failed, Failure, Leased, NewJob, QueueStats},
    store::QueueStore,
};
use crate::{
    error::Error,
    store::signal::Signal,
    tenant::Tenant,
    time::{Millis, duration_ms},
};

/// Shortest timeout a job may have.
pub const MIN_TIMEOUT: Duration = Duration::from_millis(10);
/// Most dead jobs one ListDead, Retry or Discard handles.
pub const MAX_DEAD_BATCH: u32 = 1000;

/// A job to enqueue, as the caller gave it.
#[derive(Debug, Clone, Default)]
pub struct JobSpec {
    /// The payload.
    pub payload: Bytes,
    /// Ready this long after the enqueue.
    pub delay: Option<Duration>,
    /// Ready at this Unix ms.
    pub run_at: Option<Millis>,
    /// Attempts before it is dead (0: the queue's default).
    pub max_attempts: u32,
    /// The first retry's delay (`None`: the default).
    pub backoff: Option<Duration>,
    /// The longest retry delay (`None`: the default).
    pub max_backoff: Option<Duration>,
    /// At most one live job per key ('' for none).
    pub unique_key: String,
    /// 0 unspecified (normal), 1 high, 2 normal, 3 low (the proto's numbers).
    pub priority: i32,
    /// A lease's length (`None`: the default).
    pub timeout: Option<Duration>,
}

/// A job leased to the caller, with its lease token.
#[derive(Debug, Clone)]
pub struct LeasedJob {
    /// The queue it came from.
    pub queue: String,
    /// The job.
    pub job: Leased,
    /// The lease's secret.
    pub token: String,
}

/// Work queues for every tenant.
#[derive(Clone)]
pub struct Queues {
    store: Arc<dyn QueueStore>,
    config: Arc<QueuesConfig>,
    /// One turn per (tenant, queues) of waiting Fetches on this replica (see [`Queues::fetch`]).
    turns: Arc<parking_lot::Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>>,
}

/// The public id of the lease `token` identifies.
pub fn holder_id(token: &str) -> String {
    crate::lease::public_id(token)
}

fn new_job_id() -> String {
    let mut raw = [0u8; 16];
    rand::rng().fill_bytes(&mut raw);
    hex::encode(raw)
}

fn ms(d: Duration) -> u64 {
    u64::try_from(duration_ms(d)).unwrap_or(u64::MAX)
}

fn lost(queue: &str, id: &str) -> Error {
    Error::FailedPrecondition(format!(
        "job {id:?} of queue {queue:?} is not leased with this token: its lease ran out (it \
         went to another worker or is dead), or it was already acknowledged"
    ))
}

impl Queues {
    /// Queues over `store`, bounded by `config`.
    pub fn new(store: Arc<dyn QueueStore>, config: QueuesConfig) -> Self {
        Self {
            store,
            config: Arc::new(config),
            turns: Arc::default(),
        }
    }

    /// The turn of waiting Fetches of `queues` for `tenant` on this replica.
    fn turn(&self, tenant: &Tenant, queues: &[String]) -> Arc<tokio::sync::Mutex<()>> {
        let key = format!("{}\0{}", tenant.as_str(), queues.join("\0"));
        let mut turns = self.turns.lock();
        if let Some(turn) = turns.get(&key).and_then(Weak::upgrade) {
            return turn;
        }
        // Forget the turns nobody waits on any more before adding one.
        turns.retain(|_, t| t.strong_count() > 0);
        let turn = Arc::new(tokio::sync::Mutex::new(()));
        turns.insert(key, Arc::downgrade(&turn));
        turn
    }

    fn check_queue(&self, field: &str, name: &str) -> Result<QueueSettings, Error> {
        crate::error::check_name(field, name, self.config.max_name_bytes.get())?;
        Ok(self.config.settings(name))
    }

    fn check_job_ref(id: &str, token: Option<&str>) -> Result<(), Error> {
        if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::invalid(
                "job_id",
                "a job id Enqueue or Fetch returned",
            ));
        }
        if let Some(token) = token
            && (token.is_empty() || token.len() > 128)
        {
            return Err(Error::invalid(
                "lease_token",
                "the lease token Fetch returned",
            ));
        }
        Ok(())
    }

    fn check_timeout(&self, field: &str, t: Duration) -> Result<u64, Error> {
        if t < MIN_TIMEOUT || t > self.config.max_timeout {
            return Err(Error::invalid(
                field,
                format!(
                    "between {} ms and queues.max_timeout ({})",
                    MIN_TIMEOUT.as_millis(),
                    humantime::format_duration(self.config.max_timeout)
                ),
            ));
        }
        Ok(ms(t))
    }

    fn resolve(&self, at: &str, settings: &QueueSettings, spec: JobSpec) -> Result<NewJob, Error> {
        let c = &self.config;
        if spec.payload.len() > c.max_payload_bytes.get() {
            return Err(Error::invalid(
                format!("{at}payload"),
                format!("at most queues.max_payload_bytes ({})", c.max_payload_bytes),
            ));
        }
        if spec.delay.is_some() && spec.run_at.is_some() {
            return Err(Error::invalid(
                format!("{at}options.delay"),
                "either delay or run_at, not both",
            ));
        }
        if spec.delay.is_some_and(|d| d > c.max_delay.get()) {
            return Err(Error::invalid(
                format!("{at}options.delay"),
                "at most queues.max_delay",
            ));
        }
        if let Some(run_at) = spec.run_at
            && run_at
                > crate::time::now_ms()
                    .saturating_add(i64::try_from(ms(c.max_delay.get())).unwrap_or(i64::MAX))
        {
            return Err(Error::invalid(
                format!("{at}options.run_at"),
                "at most queues.max_delay ahead",
            ));
        }
        if spec.max_attempts > c.max_attempts_limit.get() {
            return Err(Error::invalid(
                format!("{at}options.max_attempts"),
                format!(
                    "at most queues.max_attempts_limit ({})",
                    c.max_attempts_limit
                ),
            ));
        }
        if spec.unique_key.len() > c.max_unique_key_bytes.get() {
            return Err(Error::invalid(
                format!("{at}options.unique_key"),
                format!("at most {} bytes", c.max_unique_key_bytes),
            ));
        }
        let priority = match spec.priority {
            1 => 0,
            0 | 2 => 1,
            3 => 2,
            _ => {
                return Err(Error::invalid(
                    format!("{at}options.priority"),
                    "HIGH, NORMAL or LOW",
                ));
            }
        };
        let timeout = self.check_timeout(
            &format!("{at}options.timeout"),
            spec.timeout.unwrap_or(settings.timeout),
        )?;
        let backoff = spec.backoff.unwrap_or(settings.backoff);
        let max_backoff = spec
            .max_backoff
            .unwrap_or(settings.max_backoff.max(backoff));
        if backoff > c.max_delay.get() || max_backoff > c.max_delay.get() || max_backoff < backoff {
            return Err(Error::invalid(
                format!("{at}options.max_backoff"),
                "at least backoff, and both at most queues.max_delay",
            ));
        }
        Ok(NewJob {
            id: new_job_id(),
            payload: spec.payload,
            delay_ms: spec.delay.map(ms),
            run_at: spec.run_at,
            max_attempts: if spec.max_attempts == 0 {
                settings.max_attempts
            } else {
                spec.max_attempts
            },
            timeout_ms: timeout,
            backoff_ms: ms(backoff),
            max_backoff_ms: ms(max_backoff),
            priority,
            unique_key: spec.unique_key,
        })
    }

    /// Adds jobs to `queue`, all or none.
    pub async fn enqueue(
        &self,
        tenant: &Tenant,
        queue: &str,
        specs: Vec<JobSpec>,
        batch: bool,
    ) -> Result<Vec<Enqueued>, Error> {
        let settings = self.check_queue("queue", queue)?;
        if specs.is_empty() || specs.len() > self.config.max_batch.get() {
            return Err(Error::invalid(
                "jobs",
                format!("1 to queues.max_batch ({})", self.config.max_batch),
            ));
        }
        let mut jobs = Vec::with_capacity(specs.len());
        for (i, spec) in specs.into_iter().enumerate() {
            let at = if batch {
                format!("jobs[{i}].")
            } else {
                String::new()
            };
            jobs.push(self.resolve(&at, &settings, spec)?);
        }
        let Some(out) = self
            .store
            .enqueue(tenant, queue, &jobs, self.config.max_jobs.get())
            .await?
        else {
            metrics::counter!("flowstate_queue_full_total", "queue" => settings.label).increment(1);
            return Err(Error::ResourceExhausted(format!(
                "queue {queue:?} holds queues.max_jobs ({}) jobs: nothing was added",
                self.config.max_jobs
            )));
        };
        let added = out.iter().filter(|e| !e.duplicate).count() as u64;
        metrics::counter!("flowstate_queue_jobs_enqueued_total", "queue" => settings.label.clone())
            .increment(added);
        if added < out.len() as u64 {
            metrics::counter!("flowstate_queue_jobs_duplicate_total", "queue" => settings.label)
                .increment(out.len() as u64 - added);
        }
        Ok(out)
    }

    /// Leases up to `max` jobs from `queues` in order, waiting up to `wait` (within the call's
    /// deadline) for one to be ready.
    pub async fn fetch(
        &self,
        tenant: &Tenant,
        queues: &[String],
        max: u32,
        wait: Duration,
    ) -> Result<Vec<LeasedJob>, Error> {
        if queues.is_empty() || queues.len() > self.config.max_fetch_queues.get() {
            return Err(Error::invalid(
                "queues",
                format!(
                    "1 to queues.max_fetch_queues ({})",
                    self.config.max_fetch_queues
                ),
            ));
        }
        let mut settings = Vec::with_capacity(queues.len());
        for (i, q) in queues.iter().enumerate() {
            settings.push(self.check_queue(&format!("queues[{i}]"), q)?);
        }
        let max = max.max(1);
        if max > self.config.max_fetch {
            return Err(Error::invalid(
                "max",
                format!("at most queues.max_fetch ({})", self.config.max_fetch),
            ));
        }
        if wait > Duration::from_secs(3600) {
            return Err(Error::invalid("wait", "at most 1h"));
        }
        let start = Instant::now();
        // Waiting ends in time for the answer (with its leases) to reach the caller before its
        // deadline: a Fetch that leased jobs and then timed out would strand them.
        let wait = crate::deadline::bounded_wait(wait);
        let end = start + wait;
        let mut signals: Vec<Signal> = Vec::new();
        if !wait.is_zero() {
            for q in queues {
                signals.push(self.store.signal(tenant, q).await);
            }
        }
        // Waiting Fetches of the same queues on this replica take turns: only the one holding
        // the turn goes back to the store when woken, and it hands the turn on when it returns
        // (with jobs, or at the end of its wait), so the next one looks at once. Without it an
        // enqueue would wake every idle worker of the replica into a script call for one job.
        let mut turn: Option<tokio::sync::OwnedMutexGuard<()>> = None;
        loop {
            let mut out: Vec<LeasedJob> = Vec::new();
            let mut next: Option<u64> = None;
            for (q, s) in queues.iter().zip(&settings) {
                let want = max as usize - out.len();
                if want == 0 {
                    break;
                }
                let tokens: Vec<String> = (0..want).map(|_| crate::lease::new_token()).collect();
                let holders: Vec<String> = tokens.iter().map(|t| holder_id(t)).collect();
                let fetched = match self.store.fetch(tenant, q, &holders, s.dead).await {
                    Ok(fetched) => fetched,
                    // Jobs already leased from an earlier queue of this Fetch go to the caller:
                    // dropped, they would wait out their timeout as a lost attempt.
                    Err(e) if !out.is_empty() => {
                        tracing::warn!(error = %e, queue = %q, "fetch from a later queue failed; returning the jobs already leased");
                        return Ok(out);
                    }
                    Err(e) => return Err(e.into()),
                };
                #[allow(clippy::cast_precision_loss)]
                metrics::gauge!("flowstate_queue_ready_jobs", "queue" => s.label.clone())
                    .set(fetched.ready_left as f64);
                next = match (next, fetched.next_due_ms) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                let started = fetched.jobs.len() as u64;
                if started > 0 {
                    metrics::counter!("flowstate_queue_jobs_started_total", "queue" => s.label.clone())
                        .increment(started);
                }
                for (job, token) in fetched.jobs.into_iter().zip(tokens) {
                    #[allow(clippy::cast_precision_loss)]
                    metrics::histogram!("flowstate_queue_wait_duration_seconds", "queue" => s.label.clone())
                        .record(job.waited_ms as f64 / 1000.0);
                    out.push(LeasedJob {
                        queue: q.clone(),
                        job,
                        token,
                    });
                }
            }
            let now = Instant::now();
            if !out.is_empty() || now >= end {
                return Ok(out);
            }
            if turn.is_none() {
                let waiting = self.turn(tenant, queues).lock_owned();
                match tokio::time::timeout_at(end.into(), waiting).await {
                    // Jobs may have come while it queued for the turn: look at once.
                    Ok(held) => {
                        turn = Some(held);
                        continue;
                    }
                    Err(_) => return Ok(out),
                }
            }
            let mut nap = end - now;
            if let Some(ms) = next {
                nap = nap.min(Duration::from_millis(ms));
            }
            if signals.iter().any(|s| !s.is_live()) {
                nap = nap.min(self.config.poll_interval.get());
            }
            let woken = select_all(signals.iter_mut().map(|s| s.changed().boxed()));
            tokio::select! {
                _ = woken => {}
                () = tokio::time::sleep(nap) => {}
            }
        }
    }

    /// The job is done.
    pub async fn ack(
        &self,
        tenant: &Tenant,
        queue: &str,
        id: &str,
        token: &str,
    ) -> Result<(), Error> {
        let s = self.check_queue("queue", queue)?;
        Self::check_job_ref(id, Some(token))?;
        if self
            .store
            .ack(tenant, queue, id, &holder_id(token), s.dead)
            .await?
        {
            metrics::counter!("flowstate_queue_jobs_succeeded_total", "queue" => s.label)
                .increment(1);
            Ok(())
        } else {
            metrics::counter!("flowstate_queue_lost_leases_total", "op" => "ack").increment(1);
            Err(lost(queue, id))
        }
    }

    /// The attempt failed: retried later, or dead.
    pub async fn fail(
        &self,
        tenant: &Tenant,
        queue: &str,
        id: &str,
        token: &str,
        error: &str,
        retry_after: Option<Duration>,
    ) -> Result<Failed, Error> {
        let s = self.check_queue("queue", queue)?;
        Self::check_job_ref(id, Some(token))?;
        if retry_after.is_some_and(|d| d > self.config.max_delay.get()) {
            return Err(Error::invalid("retry_after", "at most queues.max_delay"));
        }
        let error = truncate(error, self.config.max_error_bytes.get());
        let jitter: f64 = rand::rng().random();
        match self
            .store
            .fail(
                tenant,
                queue,
                id,
                &holder_id(token),
                Failure {
                    error,
                    retry_after_ms: retry_after.map(ms),
                    jitter,
                },
                s.dead,
            )
            .await?
        {
            Some(outcome) => {
                metrics::counter!("flowstate_queue_jobs_failed_total", "queue" => s.label.clone())
                    .increment(1);
                if outcome == Failed::Dead {
                    metrics::counter!("flowstate_queue_jobs_dead_total", "queue" => s.label)
                        .increment(1);
                }
                Ok(outcome)
            }
            None => {
                metrics::counter!("flowstate_queue_lost_leases_total", "op" => "fail").increment(1);
                Err(lost(queue, id))
            }
        }
    }

    /// A new lease deadline from now; returns it (Unix ms, store clock).
    pub async fn extend(
        &self,
        tenant: &Tenant,
        queue: &str,
        id: &str,
        token: &str,
        timeout: Option<Duration>,
    ) -> Result<Millis, Error> {
        self.check_queue("queue", queue)?;
        Self::check_job_ref(id, Some(token))?;
        let timeout = timeout
            .map(|t| self.check_timeout("timeout", t))
            .transpose()?;
        match self
            .store
            .extend(tenant, queue, id, &holder_id(token), timeout)
            .await?
        {
            Some(at) => Ok(at),
            None => {
                metrics::counter!("flowstate_queue_lost_leases_total", "op" => "extend")
                    .increment(1);
                Err(lost(queue, id))
            }
        }
    }

    /// Hands a leased job back unfinished.
    pub async fn give_back(
        &self,
        tenant: &Tenant,
        queue: &str,
        id: &str,
        token: &str,
    ) -> Result<(), Error> {
        let s = self.check_queue("queue", queue)?;
        Self::check_job_ref(id, Some(token))?;
        if self
            .store
            .give_back(tenant, queue, id, &holder_id(token))
            .await?
        {
            metrics::counter!("flowstate_queue_jobs_given_back_total", "queue" => s.label)
                .increment(1);
            Ok(())
        } else {
            metrics::counter!("flowstate_queue_lost_leases_total", "op" => "give_back")
                .increment(1);
            Err(lost(queue, id))
        }
    }

    /// Dead jobs, most recent first.
    pub async fn list_dead(
        &self,
        tenant: &Tenant,
        queue: &str,
        limit: u32,
    ) -> Result<Vec<DeadJob>, Error> {
        self.check_queue("queue", queue)?;
        let limit = if limit == 0 { 100 } else { limit };
        if limit > MAX_DEAD_BATCH {
            return Err(Error::invalid("limit", format!("at most {MAX_DEAD_BATCH}")));
        }
        Ok(self.store.list_dead(tenant, queue, limit).await?)
    }

    fn dead_selection(ids: &[String], all: bool) -> Result<Option<&[String]>, Error> {
        match (ids.is_empty(), all) {
            (true, true) => Ok(None),
            (false, false) => {
                if ids.len() > MAX_DEAD_BATCH as usize {
                    return Err(Error::invalid(
                        "job_ids",
                        format!("at most {MAX_DEAD_BATCH}"),
                    ));
                }
                for (i, id) in ids.iter().enumerate() {
                    if Self::check_job_ref(id, None).is_err() {
                        return Err(Error::invalid(format!("job_ids[{i}]"), "a job id"));
                    }
                }
                Ok(Some(ids))
            }
            _ => Err(Error::invalid(
                "job_ids",
                "either job ids or all, not both or neither",
            )),
        }
    }

    /// Dead jobs back to ready; NOT_FOUND when ids were named and none of them is dead.
    pub async fn retry_dead(
        &self,
        tenant: &Tenant,
        queue: &str,
        ids: &[String],
        all: bool,
    ) -> Result<u32, Error> {
        let s = self.check_queue("queue", queue)?;
        let sel = Self::dead_selection(ids, all)?;
        let n = self
            .store
            .retry_dead(tenant, queue, sel, MAX_DEAD_BATCH)
            .await?;
        if n == 0 && sel.is_some() {
            return Err(Error::NotFound("dead job".into()));
        }
        metrics::counter!("flowstate_queue_jobs_retried_total", "queue" => s.label)
            .increment(u64::from(n));
        Ok(n)
    }

    /// Dead jobs deleted; NOT_FOUND when ids were named and none of them is dead.
    pub async fn discard_dead(
        &self,
        tenant: &Tenant,
        queue: &str,
        ids: &[String],
        all: bool,
    ) -> Result<u32, Error> {
        self.check_queue("queue", queue)?;
        let sel = Self::dead_selection(ids, all)?;
        let n = self
            .store
            .discard_dead(tenant, queue, sel, MAX_DEAD_BATCH)
            .await?;
        if n == 0 && sel.is_some() {
            return Err(Error::NotFound("dead job".into()));
        }
        Ok(n)
    }

    /// A queue's counts.
    pub async fn stats(&self, tenant: &Tenant, queue: &str) -> Result<QueueStats, Error> {
        let s = self.check_queue("queue", queue)?;
        let stats = self.store.stats(tenant, queue).await?;
        #[allow(clippy::cast_precision_loss)]
        metrics::gauge!("flowstate_queue_ready_jobs", "queue" => s.label).set(stats.ready as f64);
        Ok(stats)
    }

    /// Pauses or resumes a queue.
    pub async fn set_paused(
        &self,
        tenant: &Tenant,
        queue: &str,
        paused: bool,
    ) -> Result<(), Error> {
        self.check_queue("queue", queue)?;
        Ok(self.store.set_paused(tenant, queue, paused).await?)
    }
}

/// `s` cut to at most `max` bytes, at a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
