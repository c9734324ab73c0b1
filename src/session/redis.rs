//! The Redis session store: one Lua script per operation (`lua/*.lua`, each prefixed with
//! the store clock and `lua/prelude.lua`); every timestamp is Redis's `TIME`. Every key a script touches carries the user's hash tag, so the scripts
//! run unchanged on Redis Cluster.

use std::collections::HashMap;

use bytes::Bytes;
use redis::Value;

use super::{
    config::WriteConcern,
    id::{SessionKey, UserTag},
    model::{
        DataLimits, LimitExceeded, NewSession, SessionRecord, SessionUpdate, UpdateOutcome,
        UpdateRefused, data_size,
    },
    store::SessionStore,
};
use crate::{
    store::{
        StoreError,
        redis::{
            RedisBackend, lua,
            reply::{self, int, string, utf8},
            scripts::{LuaScript, ScriptCall},
        },
    },
    tenant::Tenant,
};

/// A session script: the store clock, the session prelude, then the script's own file.
macro_rules! session_lua {
    ($file:literal) => {
        lua!("src/session/lua/prelude.lua", $file)
    };
}

/// The session scripts, registered by name.
struct Scripts {
    create: LuaScript,
    get: LuaScript,
    update: LuaScript,
    rotate: LuaScript,
    delete: LuaScript,
    list: LuaScript,
    delete_user: LuaScript,
}

/// Sessions in Redis.
pub struct RedisSessionStore {
    backend: RedisBackend,
    scripts: Scripts,
    write_concern: WriteConcern,
}

impl RedisSessionStore {
    /// Registers the session scripts with `backend`; writes wait for `write_concern`.
    pub fn new(backend: RedisBackend, write_concern: WriteConcern) -> Result<Self, StoreError> {
        let scripts = Scripts {
            create: backend
                .register("session.create", session_lua!("src/session/lua/create.lua"))?,
            get: backend.register("session.get", session_lua!("src/session/lua/get.lua"))?,
            update: backend
                .register("session.update", session_lua!("src/session/lua/update.lua"))?,
            rotate: backend
                .register("session.rotate", session_lua!("src/session/lua/rotate.lua"))?,
            delete: backend
                .register("session.delete", session_lua!("src/session/lua/delete.lua"))?,
            list: backend.register("session.list", session_lua!("src/session/lua/list.lua"))?,
            delete_user: backend.register(
                "session.delete_user",
                session_lua!("src/session/lua/delete_user.lua"),
            )?,
        };
        Ok(Self {
            backend,
            scripts,
            write_concern,
        })
    }

    /// Runs a script that changes sessions, waiting for the write concern when one is set.
    async fn write<T: redis::FromRedisValue>(
        &self,
        op: &'static str,
        call: &ScriptCall,
    ) -> Result<T, StoreError> {
        let WriteConcern { replicas, timeout } = self.write_concern;
        if replicas == 0 {
            return self.backend.invoke(op, call).await;
        }
        let mut pipe = redis::pipe();
        pipe.add_command(call.cmd());
        let (mut replies, acked) = self
            .backend
            .pipeline_wait(op, &pipe, replicas, timeout)
            .await?;
        if acked < replicas {
            metrics::counter!("flowstate_session_write_concern_missed_total", "op" => op)
                .increment(1);
            return Err(StoreError::NotReplicated {
                acked,
                wanted: replicas,
            });
        }
        let reply = replies
            .pop()
            .ok_or_else(|| StoreError::Protocol(format!("{op}: no reply")))?;
        T::from_redis_value(reply)
            .map_err(|_| StoreError::Protocol(format!("{op}: unexpected reply shape")))
    }
}

#[tonic::async_trait]
impl SessionStore for RedisSessionStore {
    async fn create(
        &self,
        tenant: &Tenant,
        key: &SessionKey,
        new: NewSession,
        max_per_user: u32,
    ) -> Result<(SessionRecord, u32), StoreError> {
        let mut call = self.scripts.create.call();
        call.key(self.backend.keys().session(tenant, key))
            .key(self.backend.keys().user_index(tenant, key.tag()))
            .arg(max_per_user)
            .arg(self.backend.keys().session_base(tenant, key.tag()))
            .arg(key.member())
            .arg(new.user_id.as_str())
            .arg(new.idle_timeout)
            .arg(new.absolute_timeout)
            .arg(new.data.len())
            .arg(data_size(&new.data));
        encode_fields(&mut call, &new);
        let reply: Vec<i64> = self.write("session_create", &call).await?;
        let [evicted, created_at, expires_at, absolute_expires_at] = <[i64; 4]>::try_from(reply)
            .map_err(|_| StoreError::Protocol("session_create: expected four integers".into()))?;
        let mut record = new.created_at(created_at);
        // The store computed the same expiries from the same clock reading; its figures win.
        record.expires_at = expires_at;
        record.absolute_expires_at = absolute_expires_at;
        Ok((record, u32::try_from(evicted).unwrap_or(0)))
    }

    async fn get(
        &self,
        tenant: &Tenant,
        key: &SessionKey,
        touch: bool,
    ) -> Result<Option<SessionRecord>, StoreError> {
        let mut call = self.scripts.get.call();
        call.key(self.backend.keys().session(tenant, key))
            .key(self.backend.keys().user_index(tenant, key.tag()))
            .arg(if touch { "1" } else { "0" });
        let reply: Value = if touch {
            self.backend.invoke("session_get", &call).await?
        } else {
            self.backend.invoke_idempotent("session_get", &call).await?
        };
        match reply {
            Value::Nil => Ok(None),
            other => decode_record(other).map(Some),
        }
    }

    async fn update(
        &self,
        tenant: &Tenant,
        key: &SessionKey,
        update: &SessionUpdate,
        limits: DataLimits,
    ) -> Result<UpdateOutcome, StoreError> {
        let mut call = self.scripts.update.call();
        call.key(self.backend.keys().session(tenant, key))
            .key(self.backend.keys().user_index(tenant, key.tag()))
            .arg(update.expected_version)
            .arg(limits.max_fields)
            .arg(limits.max_bytes)
            .arg(update.set.len());
        for (name, value) in &update.set {
            call.arg(name.as_str()).arg(value.as_ref());
        }
        let mut removed: Vec<&str> = update.remove.iter().map(String::as_str).collect();
        removed.sort_unstable();
        removed.dedup();
        for name in removed {
            call.arg(name);
        }
        let reply: Vec<Value> = self.write("session_update", &call).await?;
        let mut reply = reply.into_iter();
        let status = reply.next().map(|v| int(&v)).transpose()?;
        match (status, reply.next()) {
            (Some(1), Some(hash)) => decode_record(hash).map(UpdateOutcome::Updated),
            (Some(0), None) => Ok(UpdateOutcome::NotFound),
            (Some(-1), Some(v)) => Ok(UpdateOutcome::Refused(UpdateRefused::Conflict {
                current: u64::try_from(int(&v)?).unwrap_or(0),
            })),
            (Some(-2), Some(Value::BulkString(which))) => Ok(UpdateOutcome::Refused(
                UpdateRefused::TooLarge(if which == b"fields" {
                    LimitExceeded::Fields
                } else {
                    LimitExceeded::Bytes
                }),
            )),
            _ => Err(StoreError::Protocol(
                "session_update returned an unexpected reply".into(),
            )),
        }
    }

    async fn rotate(
        &self,
        tenant: &Tenant,
        old: &SessionKey,
        new: &SessionKey,
    ) -> Result<Option<SessionRecord>, StoreError> {
        let mut call = self.scripts.rotate.call();
        call.key(self.backend.keys().session(tenant, old))
            .key(self.backend.keys().session(tenant, new))
            .key(self.backend.keys().user_index(tenant, old.tag()))
            .arg(old.member())
            .arg(new.member());
        match self.write::<Value>("session_rotate", &call).await? {
            Value::Nil => Ok(None),
            other => decode_record(other).map(Some),
        }
    }

    async fn delete(
        &self,
        tenant: &Tenant,
        key: &SessionKey,
    ) -> Result<Option<String>, StoreError> {
        let mut call = self.scripts.delete.call();
        call.key(self.backend.keys().session(tenant, key))
            .key(self.backend.keys().user_index(tenant, key.tag()))
            .arg(key.member());
        // Not retried: deleting twice ends in the same state, but the second answer ("already
        // gone") would hide that the first attempt deleted it.
        self.write::<Option<String>>("session_delete", &call).await
    }

    async fn list(
        &self,
        tenant: &Tenant,
        tag: UserTag,
        user_id: &str,
    ) -> Result<Vec<(SessionKey, SessionRecord)>, StoreError> {
        let mut call = self.scripts.list.call();
        call.key(self.backend.keys().user_index(tenant, tag))
            .arg(self.backend.keys().session_base(tenant, tag));
        let reply: Vec<Value> = self
            .backend
            .invoke_idempotent("session_list", &call)
            .await?;
        let mut out = Vec::with_capacity(reply.len() / 2);
        let mut it = reply.into_iter();
        while let (Some(member), Some(hash)) = (it.next(), it.next()) {
            let member = string(member)?;
            let record = decode_record(hash)?;
            if record.user_id != user_id {
                continue;
            }
            let key = SessionKey::from_member(tag, &member)
                .ok_or_else(|| StoreError::Protocol("malformed session index member".into()))?;
            out.push((key, record));
        }
        Ok(out)
    }

    async fn delete_user(
        &self,
        tenant: &Tenant,
        tag: UserTag,
        user_id: &str,
        keep: Option<&SessionKey>,
    ) -> Result<u64, StoreError> {
        let mut call = self.scripts.delete_user.call();
        call.key(self.backend.keys().user_index(tenant, tag))
            .arg(self.backend.keys().session_base(tenant, tag))
            .arg(user_id)
            .arg(keep.map(SessionKey::member).unwrap_or_default());
        // Not retried, for the same reason as session_delete: the count would be wrong.
        self.write("session_delete_user", &call).await
    }
}

/// HSET arguments for a new session's data and metadata (see `lua/prelude.lua`).
fn encode_fields(call: &mut ScriptCall, new: &NewSession) {
    let mut name = String::new();
    for (k, v) in &new.data {
        name.clear();
        name.push_str("d:");
        name.push_str(k);
        call.arg(name.as_str()).arg(v.as_ref());
    }
    for (k, v) in &new.metadata {
        name.clear();
        name.push_str("m:");
        name.push_str(k);
        call.arg(name.as_str()).arg(v.as_str());
    }
}

/// Rebuilds a record from an HGETALL reply.
fn decode_record(hash: Value) -> Result<SessionRecord, StoreError> {
    let Value::Array(items) = hash else {
        return Err(reply::unexpected("session", "a hash", &hash));
    };
    let mut r = SessionRecord {
        user_id: String::new(),
        data: HashMap::new(),
        metadata: HashMap::new(),
        created_at: 0,
        last_seen_at: 0,
        expires_at: 0,
        absolute_expires_at: 0,
        idle_timeout: 0,
        version: 0,
    };
    let mut it = items.into_iter();
    while let (Some(Value::BulkString(field)), Some(Value::BulkString(value))) =
        (it.next(), it.next())
    {
        let num = || -> Result<i64, StoreError> {
            std::str::from_utf8(&value)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| StoreError::Protocol("non-numeric session field".into()))
        };
        match field.as_slice() {
            b"_u" => r.user_id = utf8(value)?,
            b"_c" => r.created_at = num()?,
            b"_l" => r.last_seen_at = num()?,
            b"_e" => r.expires_at = num()?,
            b"_a" => r.absolute_expires_at = num()?,
            b"_i" => r.idle_timeout = num()?,
            b"_v" => r.version = u64::try_from(num()?).unwrap_or(0),
            [b'd', b':', name @ ..] => {
                r.data.insert(utf8(name.to_vec())?, Bytes::from(value));
            }
            [b'm', b':', name @ ..] => {
                r.metadata.insert(utf8(name.to_vec())?, utf8(value)?);
            }
            _ => {}
        }
    }
    if r.user_id.is_empty() || r.version == 0 {
        return Err(StoreError::Protocol("incomplete session hash".into()));
    }
    Ok(r)
}
