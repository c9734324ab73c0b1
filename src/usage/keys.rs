//! Usage key formats.
//!
//! - `{prefix}:{tenant}:us:{TENANT/METRIC/SUBJECT}:<g>:<index>`: a subject's bucket of a
//!   metric (a hash: `_` the total, `dimension=value` per value), and `…:u:<g>:<index>` its
//!   HyperLogLog of unique values. The hash tag is the metric and subject: one subject's
//!   buckets are one slot (a Query is one request), and no metric is one hot slot.
//! - `{prefix}:{tenant}:ut:{TENANT/METRIC/SHARD}:<g>:<index>`: one shard of a metric's top
//!   index (a sorted set of subjects by total); subjects are spread over
//!   [`super::model::TOP_SHARDS`] shards.
//!
//! The scripts append `<g>:<index>` to the base keys below, from the store's clock.

use super::model::{Granularity, TOP_SHARDS};
use crate::{
    store::keys::{Keys, crc16},
    tenant::Tenant,
};

impl Keys {
    /// The base key (ending in `:`) of a subject's buckets of a metric.
    pub fn usage_base(&self, tenant: &Tenant, metric: &str, subject: &str) -> String {
        let [base] = self.tagged(tenant, "us", &format!("{metric}/{subject}"), [""]);
        base
    }

    /// The base key (ending in `:`) of a top-index shard of a metric.
    pub fn usage_top_base(&self, tenant: &Tenant, metric: &str, shard: u16) -> String {
        let [base] = self.tagged(tenant, "ut", &format!("{metric}/{shard}"), [""]);
        base
    }

    /// A bucket's key under a base.
    pub fn usage_bucket(base: &str, g: Granularity, index: i64) -> String {
        format!("{base}{}:{index}", g.code())
    }

    /// A bucket's HyperLogLog key under a base.
    pub fn usage_unique(base: &str, g: Granularity, index: i64) -> String {
        format!("{base}u:{}:{index}", g.code())
    }
}

/// The top-index shard of a subject.
pub fn top_shard(subject: &str) -> u16 {
    crc16(subject.as_bytes()) % TOP_SHARDS
}
