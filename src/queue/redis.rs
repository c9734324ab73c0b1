//! The Redis queue store: one script per operation (`lua/`, each prefixed with
//! `lua/common.lua`), on Redis's clock, over the eleven keys of a queue (one hash tag: one
//! slot). Ready jobs are entries of Redis Streams read through a consumer group; an entry stays
//! pending in the group while its job is leased and is acknowledged and deleted when the job is
//! done, retried or dead, so the streams hold only live work. Changes that make a job ready are
//! announced with `PUBLISH` on the queue's normal-priority stream name, which wakes waiting
//! workers on every replica.

use bytes::Bytes;
use redis::Value;

use super::{
    model::{DeadJob, DeadPolicy, Enqueued, Failed, Failure, Fetched, Leased, NewJob, QueueStats},
    store::QueueStore,
};
use crate::{
    store::{
        StoreError,
        redis::{
            RedisBackend, lua,
            reply::{self, int},
            scripts::{LuaScript, ScriptCall},
        },
        signal::Signal,
    },
    tenant::Tenant,
};

/// Queues in Redis.
pub struct RedisQueueStore {
    backend: RedisBackend,
    enqueue: LuaScript,
    fetch: LuaScript,
    ack: LuaScript,
    fail: LuaScript,
    extend: LuaScript,
    give_back: LuaScript,
    dead: LuaScript,
    revive: LuaScript,
    stats: LuaScript,
    pause: LuaScript,
}

macro_rules! queue_lua {
    ($file:literal) => {
        lua!("src/queue/lua/common.lua", $file)
    };
}

impl RedisQueueStore {
    /// Registers the queue scripts with `backend`.
    pub fn new(backend: RedisBackend) -> Result<Self, StoreError> {
        Ok(Self {
            enqueue: backend.register("queue.enqueue", queue_lua!("src/queue/lua/enqueue.lua"))?,
            fetch: backend.register("queue.fetch", queue_lua!("src/queue/lua/fetch.lua"))?,
            ack: backend.register("queue.ack", queue_lua!("src/queue/lua/ack.lua"))?,
            fail: backend.register("queue.fail", queue_lua!("src/queue/lua/fail.lua"))?,
            extend: backend.register("queue.extend", queue_lua!("src/queue/lua/extend.lua"))?,
            give_back: backend
                .register("queue.give_back", queue_lua!("src/queue/lua/give_back.lua"))?,
            dead: backend.register("queue.dead", queue_lua!("src/queue/lua/dead.lua"))?,
            revive: backend.register("queue.revive", queue_lua!("src/queue/lua/revive.lua"))?,
            stats: backend.register("queue.stats", queue_lua!("src/queue/lua/stats.lua"))?,
            pause: backend.register("queue.pause", queue_lua!("src/queue/lua/pause.lua"))?,
            backend,
        })
    }

    fn call(&self, script: &LuaScript, tenant: &Tenant, queue: &str) -> ScriptCall {
        let mut call = script.call();
        for key in self.backend.keys().queue(tenant, queue) {
            call.key(key);
        }
        call
    }
}

fn u64_of(v: &Value) -> Result<u64, StoreError> {
    reply::u64_of(v, "a queue reply")
}

fn u32_of(v: &Value) -> Result<u32, StoreError> {
    reply::u32_of(v, "a queue reply")
}

fn bytes_of(v: Value) -> Result<Bytes, StoreError> {
    match v {
        Value::BulkString(b) => Ok(Bytes::from(b)),
        other => Err(reply::unexpected("queue reply", "a payload", &other)),
    }
}

/// Ids as script arguments: the given ones, or none (meaning all, up to the limit).
fn ids_args(call: &mut ScriptCall, ids: Option<&[String]>) {
    for id in ids.unwrap_or_default() {
        call.arg(id);
    }
}

#[tonic::async_trait]
impl QueueStore for RedisQueueStore {
    async fn enqueue(
        &self,
        tenant: &Tenant,
        queue: &str,
        jobs: &[NewJob],
        max_jobs: u64,
    ) -> Result<Option<Vec<Enqueued>>, StoreError> {
        let mut call = self.call(&self.enqueue, tenant, queue);
        call.arg(max_jobs).arg(jobs.len());
        for j in jobs {
            call.arg(&j.id)
                .arg(j.payload.as_ref())
                .arg(
                    j.delay_ms
                        .map_or(-1, |d| i64::try_from(d).unwrap_or(i64::MAX)),
                )
                .arg(j.run_at.unwrap_or(-1))
                .arg(j.max_attempts)
                .arg(j.timeout_ms)
                .arg(j.backoff_ms)
                .arg(j.max_backoff_ms)
                .arg(j.priority)
                .arg(&j.unique_key);
        }
        // Not resent: a resend of an enqueue that ran would add the jobs twice.
        let reply: Vec<Value> = self.backend.invoke("queue_enqueue", &call).await?;
        if matches!(reply.first(), Some(Value::Int(-1))) {
            return Ok(None);
        }
        let mut out = Vec::with_capacity(jobs.len());
        for chunk in reply.chunks(3) {
            let [id, dup, due] = chunk else {
                return Err(StoreError::Protocol("queue.enqueue: ragged reply".into()));
            };
            out.push(Enqueued {
                id: reply::string(id.clone())?,
                duplicate: int(dup)? == 1,
                run_at: int(due)?,
            });
        }
        Ok(Some(out))
    }

    async fn fetch(
        &self,
        tenant: &Tenant,
        queue: &str,
        holders: &[String],
        dead: DeadPolicy,
    ) -> Result<Fetched, StoreError> {
        let mut call = self.call(&self.fetch, tenant, queue);
        call.arg(dead.max_age_ms).arg(dead.max_count);
        for h in holders {
            call.arg(h);
        }
        // Not resent: a fetch that ran leased its jobs; a resend would lease others while the
        // first ones wait out their timeout.
        let reply: Vec<Value> = self.backend.invoke("queue_fetch", &call).await?;
        let (head, rest) = reply
            .split_at_checked(4)
            .ok_or_else(|| StoreError::Protocol("queue.fetch: short reply".into()))?;
        let next = int(&head[1])?;
        let mut out = Fetched {
            jobs: Vec::with_capacity(rest.len() / 10),
            paused: int(&head[0])? == 1,
            next_due_ms: u64::try_from(next).ok(),
            ready_left: u64_of(&head[2])?,
        };
        for j in rest.chunks(10) {
            let [
                id,
                payload,
                attempt,
                max,
                enqueued,
                lease,
                err,
                prio,
                waited,
                timeout,
            ] = j
            else {
                return Err(StoreError::Protocol("queue.fetch: ragged reply".into()));
            };
            out.jobs.push(Leased {
                id: reply::string(id.clone())?,
                payload: bytes_of(payload.clone())?,
                attempt: u32_of(attempt)?,
                max_attempts: u32_of(max)?,
                enqueued_at: int(enqueued)?,
                lease_expires_at: int(lease)?,
                last_error: reply::string(err.clone())?,
                priority: u8::try_from(int(prio)?).unwrap_or(1),
                waited_ms: u64_of(waited)?,
                timeout_ms: u64_of(timeout)?,
            });
        }
        Ok(out)
    }

    async fn ack(
        &self,
        tenant: &Tenant,
        queue: &str,
        id: &str,
        holder: &str,
        dead: DeadPolicy,
    ) -> Result<bool, StoreError> {
        let mut call = self.call(&self.ack, tenant, queue);
        call.arg(id).arg(holder).arg(dead.max_age_ms);
        // Not resent: an ack that ran and is sent again would report the lease lost.
        let done: i64 = self.backend.invoke("queue_ack", &call).await?;
        Ok(done == 1)
    }

    async fn fail(
        &self,
        tenant: &Tenant,
        queue: &str,
        id: &str,
        holder: &str,
        failure: Failure<'_>,
        dead: DeadPolicy,
    ) -> Result<Option<Failed>, StoreError> {
        let Failure {
            error,
            retry_after_ms,
            jitter,
        } = failure;
        let mut call = self.call(&self.fail, tenant, queue);
        call.arg(id)
            .arg(holder)
            .arg(error)
            .arg(retry_after_ms.map_or(-1, |d| i64::try_from(d).unwrap_or(i64::MAX)))
            .arg(jitter)
            .arg(dead.max_age_ms)
            .arg(dead.max_count);
        let reply: Vec<Value> = self.backend.invoke("queue_fail", &call).await?;
        match reply.as_slice() {
            [] => Ok(None),
            [dead] if int(dead)? == 1 => Ok(Some(Failed::Dead)),
            [_, at] => Ok(Some(Failed::Retry { at: int(at)? })),
            _ => Err(StoreError::Protocol("queue.fail: unexpected reply".into())),
        }
    }

    async fn extend(
        &self,
        tenant: &Tenant,
        queue: &str,
        id: &str,
        holder: &str,
        timeout_ms: Option<u64>,
    ) -> Result<Option<i64>, StoreError> {
        let mut call = self.call(&self.extend, tenant, queue);
        call.arg(id)
            .arg(holder)
            .arg(timeout_ms.map_or(-1, |t| i64::try_from(t).unwrap_or(i64::MAX)));
        // Idempotent: a second run sets the same deadline from a moment later.
        let at: i64 = self
            .backend
            .invoke_idempotent("queue_extend", &call)
            .await?;
        Ok((at >= 0).then_some(at))
    }

    async fn give_back(
        &self,
        tenant: &Tenant,
        queue: &str,
        id: &str,
        holder: &str,
    ) -> Result<bool, StoreError> {
        let mut call = self.call(&self.give_back, tenant, queue);
        call.arg(id).arg(holder);
        let done: i64 = self.backend.invoke("queue_give_back", &call).await?;
        Ok(done == 1)
    }

    async fn list_dead(
        &self,
        tenant: &Tenant,
        queue: &str,
        limit: u32,
    ) -> Result<Vec<DeadJob>, StoreError> {
        let mut call = self.call(&self.dead, tenant, queue);
        call.arg(limit);
        let reply: Vec<Value> = self.backend.invoke_idempotent("queue_dead", &call).await?;
        let mut out = Vec::with_capacity(reply.len() / 6);
        for j in reply.chunks(6) {
            let [id, payload, attempts, err, died, enqueued] = j else {
                return Err(StoreError::Protocol("queue.dead: ragged reply".into()));
            };
            out.push(DeadJob {
                id: reply::string(id.clone())?,
                payload: bytes_of(payload.clone())?,
                attempts: u32_of(attempts)?,
                last_error: reply::string(err.clone())?,
                died_at: int(died)?,
                enqueued_at: int(enqueued)?,
            });
        }
        Ok(out)
    }

    async fn retry_dead(
        &self,
        tenant: &Tenant,
        queue: &str,
        ids: Option<&[String]>,
        limit: u32,
    ) -> Result<u32, StoreError> {
        let mut call = self.call(&self.revive, tenant, queue);
        call.arg("retry").arg(limit);
        ids_args(&mut call, ids);
        let n: i64 = self.backend.invoke("queue_retry", &call).await?;
        Ok(u32::try_from(n).unwrap_or(0))
    }

    async fn discard_dead(
        &self,
        tenant: &Tenant,
        queue: &str,
        ids: Option<&[String]>,
        limit: u32,
    ) -> Result<u32, StoreError> {
        let mut call = self.call(&self.revive, tenant, queue);
        call.arg("discard").arg(limit);
        ids_args(&mut call, ids);
        let n: i64 = self.backend.invoke("queue_discard", &call).await?;
        Ok(u32::try_from(n).unwrap_or(0))
    }

    async fn stats(&self, tenant: &Tenant, queue: &str) -> Result<QueueStats, StoreError> {
        let call = self.call(&self.stats, tenant, queue);
        let reply: Vec<Value> = self.backend.invoke_idempotent("queue_stats", &call).await?;
        match reply.as_slice() {
            [ready, scheduled, in_flight, dead, age, paused] => Ok(QueueStats {
                ready: u64_of(ready)?,
                scheduled: u64_of(scheduled)?,
                in_flight: u64_of(in_flight)?,
                dead: u64_of(dead)?,
                oldest_ready_ms: u64_of(age)?,
                paused: int(paused)? == 1,
            }),
            _ => Err(StoreError::Protocol("queue.stats: unexpected reply".into())),
        }
    }

    async fn set_paused(
        &self,
        tenant: &Tenant,
        queue: &str,
        paused: bool,
    ) -> Result<(), StoreError> {
        let mut call = self.call(&self.pause, tenant, queue);
        call.arg(u8::from(paused));
        let _: i64 = self.backend.invoke_idempotent("queue_pause", &call).await?;
        Ok(())
    }

    async fn signal(&self, tenant: &Tenant, queue: &str) -> Signal {
        let [_, channel, ..] = self.backend.keys().queue(tenant, queue);
        self.backend.signal(&channel).await
    }
}
