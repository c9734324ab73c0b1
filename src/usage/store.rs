//! The usage store contract. Both implementations run the same contract suite
//! (`tests/it/usage_contract.rs`).

use super::model::{Bucketed, Buckets, Granularity, Read, SubjectUsage};
use crate::{store::StoreError, tenant::Tenant};

/// Retention per granularity, finest first (ms after a bucket ends).
pub type Keep = [i64; 4];

/// What a usage store does.
#[tonic::async_trait]
pub trait UsageStore: Send + Sync + 'static {
    /// Adds each subject's usage to its buckets of every granularity at the store's now (each
    /// subject in one atomic step), and each subject's total to the metric's top index. The
    /// whole batch is one round trip; it is not resent after a dropped connection. With a
    /// `batch` (id, how long it is remembered in ms), a subject or top-index shard that already
    /// counted this batch is skipped, so the caller may resend it.
    async fn record(
        &self,
        tenant: &Tenant,
        usage: &[SubjectUsage],
        keep: Keep,
        max_fields: usize,
        batch: Option<(&str, i64)>,
    ) -> Result<(), StoreError>;

    /// Reads `buckets`.
    async fn query(
        &self,
        tenant: &Tenant,
        buckets: Buckets<'_>,
        read: &Read,
    ) -> Result<Bucketed, StoreError>;

    /// The `n` subjects with the highest sums over the last `count` buckets of `g` (the
    /// current one included, by the store's clock), highest first, and the current bucket's
    /// index.
    async fn top(
        &self,
        tenant: &Tenant,
        metric: &str,
        g: Granularity,
        count: usize,
        n: usize,
    ) -> Result<(Vec<(String, i64)>, i64), StoreError>;

    /// A subject's total in the current bucket of `g` by the store's clock, and the
    /// milliseconds until that bucket ends (a usage quota's reading).
    async fn current(
        &self,
        tenant: &Tenant,
        metric: &str,
        subject: &str,
        g: Granularity,
    ) -> Result<(i64, i64), StoreError>;
}
