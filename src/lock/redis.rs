//! The Redis lock store: one script per operation (`lua/`), on Redis's clock, over the five
//! keys of a lock (one hash tag: one slot). Releases are announced with `PUBLISH` on the lock's
//! holders key, which is what wakes waiters on every replica.

use redis::Value;

use super::{
    model::{AcquireArgs, Attempt, Grant, Holding, LockState},
    store::LockStore,
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

/// Locks in Redis.
pub struct RedisLockStore {
    backend: RedisBackend,
    acquire: LuaScript,
    extend: LuaScript,
    release: LuaScript,
    inspect: LuaScript,
    leave: LuaScript,
    max_waiters: u32,
    fence_retention_ms: u64,
}

impl RedisLockStore {
    /// Registers the lock scripts with `backend`.
    pub fn new(backend: RedisBackend) -> Result<Self, StoreError> {
        Self::with_limits(backend, 1000, 30 * 24 * 3600 * 1000)
    }

    /// [`new`](Self::new) with `locks.max_waiters` and `locks.fence_retention` (ms).
    pub fn with_limits(
        backend: RedisBackend,
        max_waiters: u32,
        fence_retention_ms: u64,
    ) -> Result<Self, StoreError> {
        Ok(Self {
            acquire: backend.register("lock.acquire", lua!("src/lock/lua/acquire.lua"))?,
            extend: backend.register("lock.extend", lua!("src/lock/lua/extend.lua"))?,
            release: backend.register("lock.release", lua!("src/lock/lua/release.lua"))?,
            inspect: backend.register("lock.inspect", lua!("src/lock/lua/inspect.lua"))?,
            leave: backend.register("lock.leave", lua!("src/lock/lua/leave.lua"))?,
            backend,
            max_waiters,
            fence_retention_ms,
        })
    }

    fn call(&self, script: &LuaScript, tenant: &Tenant, name: &str) -> ScriptCall {
        let mut call = script.call();
        for key in self.backend.keys().lock(tenant, name) {
            call.key(key);
        }
        call
    }
}

fn u64_of(v: &Value) -> Result<u64, StoreError> {
    reply::u64_of(v, "a lock reply")
}

fn u32_of(v: &Value) -> Result<u32, StoreError> {
    reply::u32_of(v, "a lock reply")
}

/// Parses a holding's stored `fence|acquired ms|metadata json`.
pub(super) fn parse_holding(
    holder_id: String,
    expires_at: i64,
    stored: &str,
) -> Result<Holding, StoreError> {
    let bad = || StoreError::Protocol("malformed lock holding".into());
    let mut parts = stored.splitn(3, '|');
    let fence = parts.next().and_then(|f| f.parse().ok()).ok_or_else(bad)?;
    let acquired_at = parts.next().and_then(|a| a.parse().ok()).ok_or_else(bad)?;
    let metadata = match parts.next() {
        Some(json) if !json.is_empty() => serde_json::from_str(json).map_err(|_| bad())?,
        _ => Default::default(),
    };
    Ok(Holding {
        holder_id,
        fence,
        acquired_at,
        expires_at,
        metadata,
    })
}

#[tonic::async_trait]
impl LockStore for RedisLockStore {
    async fn acquire(
        &self,
        tenant: &Tenant,
        args: &AcquireArgs<'_>,
    ) -> Result<Attempt, StoreError> {
        let mut call = self.call(&self.acquire, tenant, args.name);
        call.arg(args.holder_id)
            .arg(args.ttl_ms)
            .arg(args.limit)
            .arg(args.ticket.unwrap_or(""))
            .arg(args.ticket_ttl_ms)
            .arg(args.metadata_json)
            .arg(self.fence_retention_ms)
            .arg(self.max_waiters);
        // Sent again after a dropped connection: an attempt that ran finds its own holding
        // and answers the same grant, so a resend never takes two slots.
        let reply: Vec<Value> = self
            .backend
            .invoke_idempotent("lock_acquire", &call)
            .await?;
        match reply.as_slice() {
            [flag, fence, expires, holders] if int(flag)? == 1 => Ok(Attempt::Granted {
                grant: Grant {
                    fence: u64_of(fence)?,
                    expires_at: int(expires)?,
                },
                holders: u32_of(holders)?,
            }),
            [_, retry, holders, queued] => Ok(Attempt::Busy {
                retry_after_ms: u64_of(retry)?,
                holders: u32_of(holders)?,
                queued: int(queued)? == 1,
            }),
            _ => Err(StoreError::Protocol(
                "lock.acquire: unexpected reply".into(),
            )),
        }
    }

    async fn extend(
        &self,
        tenant: &Tenant,
        name: &str,
        holder_id: &str,
        ttl_ms: u64,
    ) -> Result<Option<Grant>, StoreError> {
        let mut call = self.call(&self.extend, tenant, name);
        call.arg(holder_id).arg(ttl_ms);
        // Idempotent: a second run sets the same TTL from a moment later.
        let reply: Vec<Value> = self.backend.invoke_idempotent("lock_extend", &call).await?;
        match reply.as_slice() {
            [] => Ok(None),
            [fence, expires] => Ok(Some(Grant {
                fence: u64_of(fence)?,
                expires_at: int(expires)?,
            })),
            _ => Err(StoreError::Protocol("lock.extend: unexpected reply".into())),
        }
    }

    async fn release(
        &self,
        tenant: &Tenant,
        name: &str,
        holder_id: &str,
    ) -> Result<bool, StoreError> {
        let mut call = self.call(&self.release, tenant, name);
        call.arg(holder_id);
        // Not resent: a release that ran and is sent again would report "not held".
        let released: i64 = self.backend.invoke("lock_release", &call).await?;
        Ok(released == 1)
    }

    async fn inspect(&self, tenant: &Tenant, name: &str) -> Result<LockState, StoreError> {
        let call = self.call(&self.inspect, tenant, name);
        let reply: Vec<Value> = self
            .backend
            .invoke_idempotent("lock_inspect", &call)
            .await?;
        let (head, rest) = reply
            .split_at_checked(2)
            .ok_or_else(|| StoreError::Protocol("lock.inspect: short reply".into()))?;
        let mut state = LockState {
            last_fence: u64_of(&head[0])?,
            waiters: u32_of(&head[1])?,
            holders: Vec::with_capacity(rest.len() / 3),
        };
        for h in rest.chunks(3) {
            let [id, expires, stored] = h else {
                return Err(StoreError::Protocol("lock.inspect: ragged reply".into()));
            };
            let id = reply::string(id.clone())?;
            let stored = reply::string(stored.clone())?;
            state
                .holders
                .push(parse_holding(id, int(expires)?, &stored)?);
        }
        Ok(state)
    }

    async fn leave(&self, tenant: &Tenant, name: &str, ticket: &str) -> Result<(), StoreError> {
        let mut call = self.call(&self.leave, tenant, name);
        call.arg(ticket);
        let _: i64 = self.backend.invoke_idempotent("lock_leave", &call).await?;
        Ok(())
    }

    async fn signal(&self, tenant: &Tenant, name: &str) -> Signal {
        let [holders, ..] = self.backend.keys().lock(tenant, name);
        self.backend.signal(&holders).await
    }
}
