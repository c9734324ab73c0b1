//! The queue store contract: each operation one atomic step on the store's clock (one script
//! on Redis, one critical section in memory). Both implementations run the same contract suite
//! (`tests/it/queue_contract.rs`).
//!
//! A fetch first moves the queue's due scheduled jobs to ready and takes back its expired
//! leases (a step bounded per call), so no background mover is needed: any replica's next fetch
//! does it (a waiting fetch wakes at the next due time for it), and the step being atomic, no
//! job moves twice. Stats counts due scheduled jobs as ready.

use super::model::{DeadJob, DeadPolicy, Enqueued, Failed, Failure, Fetched, NewJob, QueueStats};
use crate::{
    store::{StoreError, signal::Signal},
    tenant::Tenant,
};

/// What a queue store does.
#[tonic::async_trait]
pub trait QueueStore: Send + Sync + 'static {
    /// Adds `jobs` (all or none): `None` when the queue would hold more than `max_jobs`.
    async fn enqueue(
        &self,
        tenant: &Tenant,
        queue: &str,
        jobs: &[NewJob],
        max_jobs: u64,
    ) -> Result<Option<Vec<Enqueued>>, StoreError>;

    /// Leases up to `holders.len()` ready jobs, one per holder id (high priority first, each
    /// priority oldest first). An expired lease whose job has no attempts left makes it dead.
    async fn fetch(
        &self,
        tenant: &Tenant,
        queue: &str,
        holders: &[String],
        dead: DeadPolicy,
    ) -> Result<Fetched, StoreError>;

    /// Removes a job leased to `holder`; false when it is not (any more). A queue left with
    /// only dead jobs then expires with them (`dead.max_age_ms` after the newest).
    async fn ack(
        &self,
        tenant: &Tenant,
        queue: &str,
        id: &str,
        holder: &str,
        dead: DeadPolicy,
    ) -> Result<bool, StoreError>;

    /// Ends `holder`'s attempt as failed: retried after the failure's delay (or the backoff),
    /// or dead. `None` when the job is not leased to `holder`.
    async fn fail(
        &self,
        tenant: &Tenant,
        queue: &str,
        id: &str,
        holder: &str,
        failure: Failure<'_>,
        dead: DeadPolicy,
    ) -> Result<Option<Failed>, StoreError>;

    /// A new lease deadline (`timeout_ms` from now, or the job's own timeout). `None` when the
    /// job is not leased to `holder`.
    async fn extend(
        &self,
        tenant: &Tenant,
        queue: &str,
        id: &str,
        holder: &str,
        timeout_ms: Option<u64>,
    ) -> Result<Option<i64>, StoreError>;

    /// Makes a job leased to `holder` ready again, this attempt not counted.
    async fn give_back(
        &self,
        tenant: &Tenant,
        queue: &str,
        id: &str,
        holder: &str,
    ) -> Result<bool, StoreError>;

    /// Dead jobs, most recent first.
    async fn list_dead(
        &self,
        tenant: &Tenant,
        queue: &str,
        limit: u32,
    ) -> Result<Vec<DeadJob>, StoreError>;

    /// Dead jobs (`ids`, or up to `limit` of them when `None`) back to ready with no attempts.
    async fn retry_dead(
        &self,
        tenant: &Tenant,
        queue: &str,
        ids: Option<&[String]>,
        limit: u32,
    ) -> Result<u32, StoreError>;

    /// Deletes dead jobs (`ids`, or up to `limit` of them when `None`).
    async fn discard_dead(
        &self,
        tenant: &Tenant,
        queue: &str,
        ids: Option<&[String]>,
        limit: u32,
    ) -> Result<u32, StoreError>;

    /// A queue's counts.
    async fn stats(&self, tenant: &Tenant, queue: &str) -> Result<QueueStats, StoreError>;

    /// Pauses or resumes a queue.
    async fn set_paused(
        &self,
        tenant: &Tenant,
        queue: &str,
        paused: bool,
    ) -> Result<(), StoreError>;

    /// A signal fired when a job of the queue may have become ready (or its schedule changed).
    async fn signal(&self, tenant: &Tenant, queue: &str) -> Signal;
}
