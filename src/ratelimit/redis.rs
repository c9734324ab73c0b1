//! The Redis rate-limit store: one script (`lua/algorithm.lua` + `lua/check.lua`, on Redis's
//! clock) decides every counter of a request and consumes from all or none.

use super::{
    algorithm::Decision,
    model::{Counter, CounterId},
    store::RateLimitStore,
};
use crate::{
    store::{
        StoreError,
        redis::{RedisBackend, lua, scripts::LuaScript},
    },
    tenant::Tenant,
};

/// Rate-limit counters in Redis.
pub struct RedisRateLimitStore {
    backend: RedisBackend,
    check: LuaScript,
}

impl RedisRateLimitStore {
    /// Registers the check script with `backend`.
    pub fn new(backend: RedisBackend) -> Result<Self, StoreError> {
        let check = backend.register(
            "ratelimit.check",
            lua!(
                "src/ratelimit/lua/algorithm.lua",
                "src/ratelimit/lua/check.lua"
            ),
        )?;
        Ok(Self { backend, check })
    }
}

#[tonic::async_trait]
impl RateLimitStore for RedisRateLimitStore {
    /// One script for every counter of the request: all-or-nothing on standalone Redis. On Redis
    /// Cluster the counters' different hash tags would need reserve-then-commit per slot instead.
    async fn check(
        &self,
        tenant: &Tenant,
        counters: &[Counter],
        cost: u64,
        commit: bool,
    ) -> Result<Vec<Decision>, StoreError> {
        let mut call = self.check.call();
        call.arg(cost).arg(if commit { "1" } else { "0" });
        for c in counters {
            call.key(self.backend.keys().counter(tenant, &c.id))
                .arg(c.policy.algorithm.code())
                .arg(c.policy.limit)
                .arg(c.policy.period_ms)
                .arg(c.policy.capacity());
        }
        // A consuming check is never retried: the first attempt may have counted.
        let reply: Vec<i64> = if commit {
            self.backend.invoke("ratelimit_check", &call).await?
        } else {
            self.backend
                .invoke_idempotent("ratelimit_check", &call)
                .await?
        };
        if reply.len() != counters.len() * 4 {
            return Err(StoreError::Protocol(format!(
                "ratelimit_check returned {} values for {} counters",
                reply.len(),
                counters.len()
            )));
        }
        Ok(reply
            .chunks_exact(4)
            .map(|r| Decision {
                allowed: r[0] == 1,
                remaining: u64::try_from(r[1]).unwrap_or(0),
                reset_after_ms: r[2],
                retry_after_ms: r[3],
            })
            .collect())
    }

    async fn reset(&self, tenant: &Tenant, id: &CounterId) -> Result<(), StoreError> {
        let key = self.backend.keys().counter(tenant, id);
        // Deleting twice ends in the same state: safe to retry.
        self.backend
            .retry_once("ratelimit_reset", || {
                self.backend.with_connection("ratelimit_reset", |mut conn| {
                    let key = key.clone();
                    async move {
                        redis::cmd("DEL")
                            .arg(key)
                            .query_async::<()>(&mut conn)
                            .await
                    }
                })
            })
            .await
    }
}
