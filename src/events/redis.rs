//! The Redis event store: a Redis Stream per topic, written and read by scripts (`lua/`) that
//! trim to the topic's retention and tell a reader exactly when events it has not seen were
//! trimmed away (`lua/trim.lua` records the largest id trimmed as the stream's
//! `max-deleted-entry-id`, which `XINFO STREAM` reports). New events are announced with
//! `PUBLISH` on the stream's key, which wakes the topic's reader on every replica.

use bytes::Bytes;
use redis::Value;

use super::{
    model::{Batch, EventId, Retention, StoredEvent},
    store::{EventStore, is_gap},
};
use crate::{
    store::{
        StoreError,
        redis::{
            RedisBackend, lua,
            reply::{self, unexpected},
            scripts::LuaScript,
        },
        signal::Signal,
    },
    tenant::Tenant,
};

/// Topics in Redis Streams.
pub struct RedisEventStore {
    backend: RedisBackend,
    publish: LuaScript,
    read: LuaScript,
    head: LuaScript,
    touch: LuaScript,
}

impl RedisEventStore {
    /// Registers the event scripts with `backend`.
    pub fn new(backend: RedisBackend) -> Result<Self, StoreError> {
        Ok(Self {
            publish: backend.register(
                "events.publish",
                lua!("src/events/lua/trim.lua", "src/events/lua/publish.lua"),
            )?,
            read: backend.register("events.read", lua!("src/events/lua/read.lua"))?,
            head: backend.register("events.head", lua!("src/events/lua/head.lua"))?,
            touch: backend.register(
                "events.touch",
                lua!("src/events/lua/trim.lua", "src/events/lua/touch.lua"),
            )?,
            backend,
        })
    }
}

fn id_of(v: Value) -> Result<EventId, StoreError> {
    let s = match v {
        Value::SimpleString(s) => s,
        other => reply::string(other)?,
    };
    s.parse()
        .map_err(|()| StoreError::Protocol("a stream id that does not parse".into()))
}

/// One XRANGE entry: `[id, [field, value, ...]]`.
fn entry(v: Value) -> Result<StoredEvent, StoreError> {
    let Value::Array(parts) = v else {
        return Err(unexpected("XRANGE", "an entry", &v));
    };
    let mut parts = parts.into_iter();
    let (Some(id), Some(Value::Array(fields))) = (parts.next(), parts.next()) else {
        return Err(StoreError::Protocol("XRANGE: malformed entry".into()));
    };
    let mut event = StoredEvent {
        id: id_of(id)?,
        payload: Bytes::new(),
        key: String::new(),
    };
    let mut fields = fields.into_iter();
    while let (Some(name), Some(value)) = (fields.next(), fields.next()) {
        let Value::BulkString(value) = value else {
            return Err(StoreError::Protocol(
                "XRANGE: a field that is not a string".into(),
            ));
        };
        match name {
            Value::BulkString(n) if n == b"p" => event.payload = Bytes::from(value),
            Value::BulkString(n) if n == b"k" => event.key = reply::utf8(value)?,
            _ => {}
        }
    }
    Ok(event)
}

#[tonic::async_trait]
impl EventStore for RedisEventStore {
    async fn publish(
        &self,
        tenant: &Tenant,
        topic: &str,
        retention: Retention,
        payload: Bytes,
        key: &str,
    ) -> Result<EventId, StoreError> {
        let mut call = self.publish.call();
        call.key(self.backend.keys().topic(tenant, topic))
            .arg(payload.as_ref())
            .arg(key)
            .arg(retention.max_len)
            .arg(retention.max_age_ms);
        // Not resent after a dropped connection: a publish that ran twice is two events.
        let id: Value = self.backend.invoke("events_publish", &call).await?;
        id_of(id)
    }

    async fn read(
        &self,
        tenant: &Tenant,
        topic: &str,
        after: EventId,
        count: usize,
    ) -> Result<Batch, StoreError> {
        let mut call = self.read.call();
        call.key(self.backend.keys().topic(tenant, topic))
            .arg(after.to_string())
            .arg(count);
        let reply: Vec<Value> = self.backend.invoke_idempotent("events_read", &call).await?;
        let mut parts = reply.into_iter();
        let (Some(trimmed), Some(first), Some(last), Some(Value::Array(entries))) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            // The topic holds nothing (never had events, or was forgotten).
            return Ok(Batch {
                gap: is_gap(after, None),
                ..Batch::default()
            });
        };
        let trimmed = id_of(trimmed)?;
        let first = match reply::string(first)? {
            f if f.is_empty() => None,
            f => Some(
                f.parse()
                    .map_err(|()| StoreError::Protocol("a stream id that does not parse".into()))?,
            ),
        };
        Ok(Batch {
            events: entries.into_iter().map(entry).collect::<Result<_, _>>()?,
            gap: is_gap(after, Some(trimmed)),
            first,
            last: id_of(last)?,
        })
    }

    async fn head(&self, tenant: &Tenant, topic: &str) -> Result<EventId, StoreError> {
        let mut call = self.head.call();
        call.key(self.backend.keys().topic(tenant, topic));
        let last: Value = self.backend.invoke_idempotent("events_head", &call).await?;
        id_of(last)
    }

    async fn touch(
        &self,
        tenant: &Tenant,
        topic: &str,
        retention: Retention,
    ) -> Result<(), StoreError> {
        let mut call = self.touch.call();
        call.key(self.backend.keys().topic(tenant, topic))
            .arg(retention.max_age_ms)
            .arg(retention.max_len);
        let _: i64 = self
            .backend
            .invoke_idempotent("events_touch", &call)
            .await?;
        Ok(())
    }

    async fn signal(&self, tenant: &Tenant, topic: &str) -> Signal {
        self.backend
            .signal(&self.backend.keys().topic(tenant, topic))
            .await
    }
}
