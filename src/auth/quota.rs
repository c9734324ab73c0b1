//! Per-tenant request quotas, kept by each replica in memory: a token bucket per tenant
//! (`quota.requests_per_second`, `quota.burst`). It protects the replica's capacity from one
//! tenant, so it needs no store round trip; the number of buckets is bounded by the tenants
//! the keys and client identities name (one with authentication off).

use std::{collections::HashMap, time::Instant};

use parking_lot::Mutex;

use super::config::QuotaConfig;
use crate::tenant::Tenant;

/// One tenant's bucket.
struct Bucket {
    tokens: f64,
    last: Instant,
    rate: f64,
    capacity: f64,
}

/// The buckets of every tenant that called.
pub struct RequestQuotas {
    config: QuotaConfig,
    buckets: Mutex<HashMap<Tenant, Bucket>>,
}

impl RequestQuotas {
    /// Quotas from `config`.
    pub fn new(config: QuotaConfig) -> Self {
        Self {
            config,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `tenant` may make one more call now (and counts it).
    pub fn admit(&self, tenant: &Tenant) -> bool {
        let quota = self.config.for_tenant(tenant.as_str());
        if quota.requests_per_second == 0 {
            return true;
        }
        let now = Instant::now();
        let mut buckets = self.buckets.lock();
        let bucket = buckets.entry(tenant.clone()).or_insert_with(|| {
            let rate = f64::from(quota.requests_per_second);
            let capacity = if quota.burst == 0 {
                rate
            } else {
                f64::from(quota.burst)
            };
            Bucket {
                tokens: capacity,
                last: now,
                rate,
                capacity,
            }
        });
        let idle = now.duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + idle * bucket.rate).min(bucket.capacity);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::config::TenantQuota;

    #[test]
    fn each_tenant_has_its_own_bucket() {
        let mut config = QuotaConfig {
            requests_per_second: 5,
            ..QuotaConfig::default()
        };
        config.tenants.insert(
            "big".into(),
            TenantQuota {
                requests_per_second: Some(0),
                ..TenantQuota::default()
            },
        );
        let quotas = RequestQuotas::new(config);
        let (a, b, big) = (
            Tenant::new("a").expect("t"),
            Tenant::new("b").expect("t"),
            Tenant::new("big").expect("t"),
        );
        let admitted = (0..50).filter(|_| quotas.admit(&a)).count();
        assert!((5..=6).contains(&admitted), "{admitted} admitted at once");
        assert!(quotas.admit(&b), "another tenant's bucket is full");
        assert!(
            (0..1000).all(|_| quotas.admit(&big)),
            "an override lifts the quota"
        );
    }
}
