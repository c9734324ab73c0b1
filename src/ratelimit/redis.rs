//! The Redis rate-limit store: one script (`lua/algorithm.lua` + `lua/check.lua`, on Redis's
//! clock) decides every counter of a request and consumes from all or none.
//!
//! # Counters in several Cluster slots
//! A counter's hash tag is its own key, never the other counters it is checked with (the same
//! counter must land in the same slot whatever it is checked with), so on Redis Cluster the
//! counters of one Check (per user and per tenant, say) are often in different slots, where no
//! script can reach them all. Such a Check is decided in two steps:
//! 1. **reserve**: in every slot at once, `lua/reserve.lua` decides that slot's counters and,
//!    when they all allow, consumes right away;
//! 2. if every slot allowed, the reservations stand: that is the commit, and the success path
//!    stays one round trip. If any slot denied (or failed), `lua/refund.lua` takes back the
//!    reservations of the slots that consumed: what each still holds (all of it for the
//!    windows; for a bucket or GCRA, less what refilled or drained meanwhile, which the
//!    reservation can no longer have kept from anyone).
//!
//! It never over-admits: every admission was consumed in every slot before it was answered,
//! and a refund never gives back more than the reservation still keeps out.
//! It may under-admit: between a reservation and its refund (one round trip, well under a
//! millisecond on a LAN), a concurrent Check of the same counter sees the reservation and may
//! be denied for it. The bound is the cost of the reservations in flight that end up refunded.
//! A refund that fails (the node is down, the process dies between the two steps) leaves its
//! reservation consumed until the counter's window passes: under-admission, never over-, and
//! counted in `flowstate_ratelimit_refund_failures_total`. Refunds are not resent after a
//! dropped connection, since one that ran twice would give back twice.

use super::{
    algorithm::Decision,
    model::{Counter, CounterId, Role, admits},
    store::RateLimitStore,
};
use crate::{
    config::RedisMode,
    store::{
        StoreError,
        keys::slot,
        redis::{
            RedisBackend, lua,
            scripts::{LuaScript, ScriptCall},
        },
    },
    tenant::Tenant,
};

/// Rate-limit counters in Redis. Cheap to clone (a multi-slot Check runs in a task of its own).
#[derive(Clone)]
pub struct RedisRateLimitStore {
    backend: RedisBackend,
    check: LuaScript,
    reserve: LuaScript,
    refund: LuaScript,
}

/// What the slots of a multi-slot Check answered.
struct SlotsOutcome {
    /// Every counter's decision, or the first slot's failure.
    decisions: Result<Vec<Decision>, StoreError>,
    /// Per counter, what `refund.lua` needs (from `reserve.lua`).
    windows: Vec<(i64, i64)>,
    /// Per counter, whether it allowed (known even when another slot failed).
    allowed: Vec<bool>,
    /// The groups that consumed and must be refunded (the request was denied or a slot failed).
    to_refund: Vec<usize>,
}

/// The counters of one Check that share a slot: their positions in the request.
#[derive(Clone)]
struct SlotGroup {
    positions: Vec<usize>,
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
        let reserve = backend.register(
            "ratelimit.reserve",
            lua!(
                "src/ratelimit/lua/algorithm.lua",
                "src/ratelimit/lua/reserve.lua"
            ),
        )?;
        let refund = backend.register(
            "ratelimit.refund",
            lua!(
                "src/ratelimit/lua/algorithm.lua",
                "src/ratelimit/lua/refund.lua"
            ),
        )?;
        Ok(Self {
            backend,
            check,
            reserve,
            refund,
        })
    }

    /// The counters grouped by hash slot, in order of first appearance; a single group on a
    /// standalone or sentinel Redis (one server holds every key).
    fn slot_groups(&self, keys: &[String]) -> Vec<SlotGroup> {
        if self.backend.mode() != RedisMode::Cluster {
            return vec![SlotGroup {
                positions: (0..keys.len()).collect(),
            }];
        }
        let mut groups: Vec<(u16, SlotGroup)> = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            let s = slot(key.as_bytes());
            match groups.iter_mut().find(|(g, _)| *g == s) {
                Some((_, group)) => group.positions.push(i),
                None => groups.push((s, SlotGroup { positions: vec![i] })),
            }
        }
        groups.into_iter().map(|(_, g)| g).collect()
    }

    /// The `check.lua` / `reserve.lua` call for the counters at `positions`.
    fn decide_call(
        &self,
        script: &LuaScript,
        keys: &[String],
        counters: &[Counter],
        positions: &[usize],
        commit: bool,
    ) -> ScriptCall {
        let mut call = script.call();
        call.arg(if commit { "1" } else { "0" });
        for &i in positions {
            let c = &counters[i];
            call.key(&keys[i])
                .arg(c.policy.algorithm.code())
                .arg(c.policy.limit)
                .arg(c.policy.period_ms)
                .arg(c.policy.capacity())
                .arg(c.cost)
                .arg(c.role.code());
        }
        call
    }

    /// A Check over counters in several slots: reserve in each, refund if any denied (see the
    /// module docs). Runs in a task of its own, to completion even if the RPC is cancelled
    /// (deadline, client gone) meanwhile: reservations made must be refunded either way. The
    /// reservations retry within the RPC's deadline (`deadline`); the refunds within
    /// `redis.failover_wait` alone.
    async fn check_across_slots(
        self,
        keys: Vec<String>,
        counters: Vec<Counter>,
        groups: Vec<SlotGroup>,
        commit: bool,
        deadline: Option<std::time::Instant>,
    ) -> Result<Vec<Decision>, StoreError> {
        let decide = self.decide_across_slots(&keys, &counters, &groups, commit);
        let outcome = match deadline {
            Some(deadline) => crate::deadline::scope(deadline, decide).await,
            None => decide.await,
        };
        if !outcome.to_refund.is_empty() {
            // Only what the reservations consumed: the counters that allowed, with a cost.
            let written = |i: &usize| counters[*i].cost > 0 && outcome.allowed[*i];
            let reserved: Vec<SlotGroup> = outcome
                .to_refund
                .iter()
                .map(|&g| SlotGroup {
                    positions: groups[g]
                        .positions
                        .iter()
                        .copied()
                        .filter(written)
                        .collect(),
                })
                .filter(|g| !g.positions.is_empty())
                .collect();
            let reserved: Vec<&SlotGroup> = reserved.iter().collect();
            self.refund(&keys, &counters, &reserved, &outcome.windows)
                .await;
        }
        outcome.decisions
    }

    /// Every slot's part of the Check, at once.
    async fn decide_across_slots(
        &self,
        keys: &[String],
        counters: &[Counter],
        groups: &[SlotGroup],
        commit: bool,
    ) -> SlotsOutcome {
        let script = if commit { &self.reserve } else { &self.check };
        let width = if commit { 6 } else { 4 };
        let calls: Vec<ScriptCall> = groups
            .iter()
            .map(|g| self.decide_call(script, keys, counters, &g.positions, commit))
            .collect();
        // Every slot at once; each outcome kept, since a failed slot must not hide which
        // others consumed.
        let replies = futures_util::future::join_all(calls.iter().map(|call| async move {
            if commit {
                self.backend
                    .invoke::<Vec<i64>>("ratelimit_reserve", call)
                    .await
            } else {
                self.backend
                    .invoke_idempotent::<Vec<i64>>("ratelimit_check", call)
                    .await
            }
        }))
        .await;
        let mut decisions = vec![Decision::default(); counters.len()];
        let mut windows = vec![(0i64, 0i64); counters.len()];
        let mut reserved = Vec::new();
        let mut failure = None;
        for (g, (group, reply)) in groups.iter().zip(replies).enumerate() {
            let reply = match reply.and_then(|r| {
                if r.len() == group.positions.len() * width {
                    Ok(r)
                } else {
                    Err(StoreError::Protocol(format!(
                        "ratelimit: {} values for {} counters",
                        r.len(),
                        group.positions.len()
                    )))
                }
            }) {
                Ok(reply) => reply,
                Err(e) => {
                    failure.get_or_insert(e);
                    continue;
                }
            };
            // A slot writes when its own enforced counters allow (`run_check` with windows).
            let mut slot_writes = true;
            for (&i, r) in group.positions.iter().zip(reply.chunks_exact(width)) {
                decisions[i] = decision(r);
                if counters[i].role == Role::Enforced {
                    slot_writes &= decisions[i].allowed;
                }
                if commit {
                    windows[i] = (r[4], r[5]);
                }
            }
            if commit && slot_writes {
                reserved.push(g);
            }
        }
        let admitted = failure.is_none() && admits(counters.iter().map(|c| c.role).zip(&decisions));
        if admitted || !commit {
            reserved.clear();
        }
        let allowed = decisions.iter().map(|d| d.allowed).collect();
        SlotsOutcome {
            allowed,
            decisions: match failure {
                Some(e) => Err(e),
                None => Ok(decisions),
            },
            windows,
            to_refund: reserved,
        }
    }

    /// Takes back the reservations of `groups`; a failure is logged and counted, never
    /// resent blindly (see the module docs).
    async fn refund(
        &self,
        keys: &[String],
        counters: &[Counter],
        groups: &[&SlotGroup],
        windows: &[(i64, i64)],
    ) {
        let calls: Vec<ScriptCall> = groups
            .iter()
            .map(|g| {
                let mut call = self.refund.call();
                for &i in &g.positions {
                    let c = &counters[i];
                    call.key(&keys[i])
                        .arg(c.policy.algorithm.code())
                        .arg(c.policy.limit)
                        .arg(c.policy.period_ms)
                        .arg(c.policy.capacity())
                        .arg(c.cost)
                        .arg(windows[i].0)
                        .arg(windows[i].1);
                }
                call
            })
            .collect();
        let results = futures_util::future::join_all(
            calls
                .iter()
                .map(|call| self.backend.invoke::<i64>("ratelimit_refund", call)),
        )
        .await;
        for result in results {
            if let Err(e) = result {
                metrics::counter!("flowstate_ratelimit_refund_failures_total").increment(1);
                tracing::warn!(error = %e, "a rate-limit reservation could not be refunded: its counters stay consumed until their window passes");
            }
        }
    }
}

/// One counter's four values from `check.lua` / `reserve.lua`.
fn decision(r: &[i64]) -> Decision {
    Decision {
        allowed: r[0] == 1,
        remaining: u64::try_from(r[1]).unwrap_or(0),
        reset_after_ms: r[2],
        retry_after_ms: r[3],
    }
}

#[tonic::async_trait]
impl RateLimitStore for RedisRateLimitStore {
    /// One script for every counter of the request: all-or-nothing in one step, whenever the
    /// counters share a server (standalone, sentinel) or a slot. Counters in several Cluster
    /// slots are reserved and refunded instead (see the module docs).
    async fn check(
        &self,
        tenant: &Tenant,
        counters: &[Counter],
        commit: bool,
    ) -> Result<Vec<Decision>, StoreError> {
        let keys: Vec<String> = counters
            .iter()
            .map(|c| self.backend.keys().counter(tenant, &c.id))
            .collect();
        let groups = self.slot_groups(&keys);
        if groups.len() > 1 {
            let task = tokio::spawn(self.clone().check_across_slots(
                keys,
                counters.to_vec(),
                groups,
                commit,
                crate::deadline::current(),
            ));
            return task
                .await
                .map_err(|e| StoreError::Protocol(format!("rate-limit check task: {e}")))?;
        }
        let Some(group) = groups.first() else {
            return Ok(Vec::new());
        };
        let call = self.decide_call(&self.check, &keys, counters, &group.positions, commit);
        // A consuming check is never resent after a dropped connection: the first attempt may
        // have counted.
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
        Ok(reply.chunks_exact(4).map(decision).collect())
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
