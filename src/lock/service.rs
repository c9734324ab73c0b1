//! The lock domain: validation, tokens, and waiting.
//!
//! A holding's token is 256 random bits, returned once; the store knows the holding only by its
//! public id (the first 128 bits of the token's SHA-256), so neither Inspect nor a dump of Redis
//! yields a token that could release someone else's lock.
//!
//! # Waiting
//! An Acquire with `wait` subscribes to the lock's [`Signal`] first, then tries; when the lock
//! is taken the store queues the caller (a ticket, in arrival order) and says how long until
//! the earliest holding expires. The caller sleeps until the signal fires (a release, on any
//! replica: Redis Pub/Sub), that expiry passes, or its place in the queue needs renewing
//! ([`TICKET_TTL`]), whichever comes first, and tries again. While the signal is not live (the
//! Pub/Sub connection is down), it polls every [`POLL_WHEN_DEAF`] instead. A caller that gives
//! up, or whose call is cancelled, leaves the queue; one whose replica dies loses its place
//! within [`TICKET_TTL`], so a dead waiter blocks those behind it for at most that long.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use rand::RngCore as _;

use super::{
    config::LockConfig,
    model::{AcquireArgs, Acquired, Attempt, Grant, LockState},
    store::LockStore,
};
use crate::{error::Error, store::signal::Signal, tenant::Tenant, time::duration_ms};

/// How long a waiter's place in the queue lasts unless its next attempt renews it.
pub const TICKET_TTL: Duration = Duration::from_secs(2);
/// How often a waiter tries again while signals are not being delivered.
pub const POLL_WHEN_DEAF: Duration = Duration::from_millis(50);
/// Shortest TTL a holding may have.
pub const MIN_TTL: Duration = Duration::from_millis(10);
/// Most metadata entries per holding, and their longest key and value.
const MAX_METADATA: usize = 16;
const MAX_METADATA_KEY: usize = 64;
const MAX_METADATA_VALUE: usize = 256;

/// An Acquire request, validated by [`Locks::acquire`].
#[derive(Debug, Clone, Default)]
pub struct AcquireLock {
    /// The lock's name.
    pub name: String,
    /// The holding's TTL.
    pub ttl: Duration,
    /// How long to wait when it is taken.
    pub wait: Duration,
    /// Holders allowed at once (0 means 1).
    pub limit: u32,
    /// The holder's metadata.
    pub metadata: BTreeMap<String, String>,
}

/// Locks and semaphores for every tenant.
#[derive(Clone)]
pub struct Locks {
    store: Arc<dyn LockStore>,
    config: LockConfig,
}

/// The public id of the holding `token` identifies.
pub fn holder_id(token: &str) -> String {
    crate::lease::public_id(token)
}

/// Leaves the queue when an Acquire stops waiting without a grant, even if it was cancelled.
struct LeaveOnDrop {
    store: Arc<dyn LockStore>,
    tenant: Tenant,
    name: String,
    ticket: Option<String>,
}

impl Drop for LeaveOnDrop {
    fn drop(&mut self) {
        if let Some(ticket) = self.ticket.take() {
            let (store, tenant, name) =
                (self.store.clone(), self.tenant.clone(), self.name.clone());
            tokio::spawn(async move {
                if let Err(e) = store.leave(&tenant, &name, &ticket).await {
                    tracing::debug!(error = %e, "leaving a lock's queue failed; the place lapses by itself");
                }
            });
        }
    }
}

impl Locks {
    /// Locks over `store`, bounded by `config`.
    pub fn new(store: Arc<dyn LockStore>, config: LockConfig) -> Self {
        Self { store, config }
    }

    fn check_name(&self, field: &str, name: &str) -> Result<(), Error> {
        crate::error::check_name(field, name, self.config.max_name_bytes.get())
    }

    fn check_ttl(&self, ttl: Duration) -> Result<u64, Error> {
        if ttl < MIN_TTL || ttl > self.config.max_ttl {
            return Err(Error::invalid(
                "ttl",
                format!(
                    "between {} ms and locks.max_ttl ({})",
                    MIN_TTL.as_millis(),
                    humantime::format_duration(self.config.max_ttl)
                ),
            ));
        }
        Ok(u64::try_from(duration_ms(ttl)).unwrap_or(u64::MAX))
    }

    fn check_token(token: &str) -> Result<(), Error> {
        if token.is_empty() || token.len() > 128 {
            return Err(Error::invalid("token", "the token Acquire returned"));
        }
        Ok(())
    }

    /// Takes the lock (or a semaphore slot), waiting up to `wait` (within the call's deadline).
    pub async fn acquire(&self, tenant: &Tenant, req: AcquireLock) -> Result<Acquired, Error> {
        self.check_name("name", &req.name)?;
        let ttl_ms = self.check_ttl(req.ttl)?;
        let limit = req.limit.max(1);
        if limit > self.config.max_limit.get() {
            return Err(Error::invalid(
                "limit",
                format!("at most locks.max_limit ({})", self.config.max_limit),
            ));
        }
        check_metadata(&req.metadata)?;
        let metadata_json = serde_json::to_string(&req.metadata)
            .map_err(|_| Error::invalid("metadata", "not encodable"))?;
        let token = crate::lease::new_token();
        let holder = holder_id(&token);
        let start = Instant::now();
        // Waiting ends in time for the answer to reach the caller before its deadline.
        let wait = crate::deadline::bounded_wait(req.wait);
        let end = start + wait;
        let waits = !wait.is_zero();
        let ticket = waits.then(|| {
            let mut t = [0u8; 12];
            rand::rng().fill_bytes(&mut t);
            hex::encode(t)
        });
        // Subscribed before the first attempt, so a release right after it is not missed.
        let mut signal: Option<Signal> = match waits {
            true => Some(self.store.signal(tenant, &req.name).await),
            false => None,
        };
        let mut leave = LeaveOnDrop {
            store: self.store.clone(),
            tenant: tenant.clone(),
            name: req.name.clone(),
            ticket: None,
        };
        let mut woken = 0u32;
        loop {
            let args = AcquireArgs {
                name: &req.name,
                holder_id: &holder,
                ttl_ms,
                limit,
                ticket: ticket.as_deref(),
                ticket_ttl_ms: u64::try_from(TICKET_TTL.as_millis()).unwrap_or(2000),
                metadata_json: &metadata_json,
            };
            match self.store.acquire(tenant, &args).await? {
                Attempt::Granted { grant, .. } => {
                    // The grant took the ticket out of the queue.
                    leave.ticket = None;
                    let outcome = if woken == 0 {
                        "acquired"
                    } else {
                        "acquired_after_wait"
                    };
                    metrics::counter!("flowstate_lock_acquires_total", "outcome" => outcome)
                        .increment(1);
                    if waits {
                        metrics::histogram!("flowstate_lock_wait_seconds")
                            .record(start.elapsed().as_secs_f64());
                    }
                    return Ok(Acquired::Held {
                        token,
                        holder_id: holder,
                        grant,
                    });
                }
                Attempt::Busy {
                    retry_after_ms,
                    holders,
                    queued,
                } => {
                    if queued {
                        leave.ticket.clone_from(&ticket);
                    }
                    let now = Instant::now();
                    if now >= end {
                        metrics::counter!("flowstate_lock_acquires_total", "outcome" => "busy")
                            .increment(1);
                        // Leaves the queue now (the guard spawns it), not when the place lapses.
                        drop(leave);
                        return Ok(Acquired::Busy {
                            retry_after_ms,
                            holders,
                        });
                    }
                    let mut nap = Duration::from_millis(retry_after_ms.saturating_add(1))
                        .min(TICKET_TTL / 3)
                        .min(end - now);
                    let deaf = signal.as_ref().is_none_or(|s| !s.is_live());
                    if deaf {
                        nap = nap.min(POLL_WHEN_DEAF);
                    }
                    match signal.as_mut() {
                        Some(s) => {
                            tokio::select! {
                                () = s.changed() => {}
                                () = tokio::time::sleep(nap) => {}
                            }
                        }
                        None => tokio::time::sleep(nap).await,
                    }
                    woken += 1;
                }
            }
        }
    }

    /// A new TTL for the holding `token`; FAILED_PRECONDITION when it is not held any more.
    pub async fn extend(
        &self,
        tenant: &Tenant,
        name: &str,
        token: &str,
        ttl: Duration,
    ) -> Result<Grant, Error> {
        self.check_name("name", name)?;
        Self::check_token(token)?;
        let ttl_ms = self.check_ttl(ttl)?;
        match self
            .store
            .extend(tenant, name, &holder_id(token), ttl_ms)
            .await?
        {
            Some(grant) => Ok(grant),
            None => {
                metrics::counter!("flowstate_lock_lost_total", "op" => "extend").increment(1);
                Err(lost(name))
            }
        }
    }

    /// Ends the holding `token`; FAILED_PRECONDITION when it was not held any more.
    pub async fn release(&self, tenant: &Tenant, name: &str, token: &str) -> Result<(), Error> {
        self.check_name("name", name)?;
        Self::check_token(token)?;
        if self.store.release(tenant, name, &holder_id(token)).await? {
            metrics::counter!("flowstate_lock_releases_total").increment(1);
            Ok(())
        } else {
            metrics::counter!("flowstate_lock_lost_total", "op" => "release").increment(1);
            Err(lost(name))
        }
    }

    /// Holders, waiters and the last fencing token of `name`.
    pub async fn inspect(&self, tenant: &Tenant, name: &str) -> Result<LockState, Error> {
        self.check_name("name", name)?;
        Ok(self.store.inspect(tenant, name).await?)
    }
}

fn lost(name: &str) -> Error {
    Error::FailedPrecondition(format!(
        "lock {name:?} is not held with this token: it expired or was released (writes it \
         guarded must stop; a fencing check refuses them)"
    ))
}

fn check_metadata(metadata: &BTreeMap<String, String>) -> Result<(), Error> {
    if metadata.len() > MAX_METADATA {
        return Err(Error::invalid(
            "metadata",
            format!("at most {MAX_METADATA} entries"),
        ));
    }
    for (k, v) in metadata {
        if k.is_empty() || k.len() > MAX_METADATA_KEY {
            return Err(Error::invalid(
                format!("metadata[{k:?}]"),
                format!("keys are 1 to {MAX_METADATA_KEY} bytes"),
            ));
        }
        if v.len() > MAX_METADATA_VALUE {
            return Err(Error::invalid(
                format!("metadata[{k:?}]"),
                format!("values are at most {MAX_METADATA_VALUE} bytes"),
            ));
        }
    }
    Ok(())
}
