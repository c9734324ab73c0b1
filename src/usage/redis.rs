//! The Redis usage store: a Record is one pipeline of scripts (`lua/record.lua` per subject,
//! `lua/top.lua` per top-index shard), each deciding its buckets from Redis's clock; a Query
//! is one pipeline of reads of one subject's buckets (one slot); a Top is one script per shard.

use std::collections::BTreeMap;

use redis::Value;

use super::{
    keys::top_shard,
    model::{Bucketed, Buckets, Granularity, Read, SubjectUsage, TOP_SHARDS},
    store::{Keep, UsageStore},
};
use crate::{
    store::{
        StoreError,
        keys::Keys,
        redis::{
            RedisBackend, lua,
            reply::{number, string, unexpected},
            scripts::LuaScript,
        },
    },
    tenant::Tenant,
};

/// Usage in Redis.
pub struct RedisUsageStore {
    backend: RedisBackend,
    record: LuaScript,
    top: LuaScript,
    top_query: LuaScript,
    current: LuaScript,
}

impl RedisUsageStore {
    /// Registers the usage scripts with `backend`.
    pub fn new(backend: RedisBackend) -> Result<Self, StoreError> {
        Ok(Self {
            record: backend.register(
                "usage.record",
                lua!("src/usage/lua/buckets.lua", "src/usage/lua/record.lua"),
            )?,
            top: backend.register(
                "usage.top",
                lua!("src/usage/lua/buckets.lua", "src/usage/lua/top.lua"),
            )?,
            current: backend.register(
                "usage.current",
                lua!("src/usage/lua/buckets.lua", "src/usage/lua/current.lua"),
            )?,
            top_query: backend.register(
                "usage.top_query",
                lua!("src/usage/lua/buckets.lua", "src/usage/lua/top_query.lua"),
            )?,
            backend,
        })
    }
}

#[tonic::async_trait]
impl UsageStore for RedisUsageStore {
    async fn record(
        &self,
        tenant: &Tenant,
        usage: &[SubjectUsage],
        keep: Keep,
        max_fields: usize,
        batch: Option<(&str, i64)>,
    ) -> Result<(), StoreError> {
        let keys = self.backend.keys();
        let (batch_id, remember) = batch.unwrap_or(("", 0));
        let mut pipe = redis::pipe();
        let mut shards: BTreeMap<(&str, u16), Vec<(&str, i64)>> = BTreeMap::new();
        for u in usage {
            let mut call = self.record.call();
            call.key(keys.usage_base(tenant, &u.metric, &u.subject))
                .arg(batch_id)
                .arg(remember);
            for k in keep {
                call.arg(k);
            }
            call.arg(max_fields).arg(u.fields.len());
            for (field, amount) in &u.fields {
                call.arg(field.as_str()).arg(*amount);
            }
            call.arg(u.uniques.len());
            for value in &u.uniques {
                call.arg(value.as_str());
            }
            pipe.add_command(call.cmd());
            if let Some((_, total)) = u.fields.iter().find(|(f, _)| f == "_") {
                shards
                    .entry((u.metric.as_str(), top_shard(&u.subject)))
                    .or_default()
                    .push((u.subject.as_str(), *total));
            }
        }
        for ((metric, shard), subjects) in shards {
            let mut call = self.top.call();
            call.key(keys.usage_top_base(tenant, metric, shard))
                .arg(batch_id)
                .arg(remember);
            for k in keep {
                call.arg(k);
            }
            for (subject, total) in subjects {
                call.arg(subject).arg(total);
            }
            pipe.add_command(call.cmd());
        }
        // Counting twice is worse than failing: never resent after a dropped connection (the
        // caller may resend a batch with an id; the scripts skip what counted it already).
        self.backend.pipeline("usage_record", &pipe).await?;
        Ok(())
    }

    async fn query(
        &self,
        tenant: &Tenant,
        buckets: Buckets<'_>,
        read: &Read,
    ) -> Result<Bucketed, StoreError> {
        let Buckets {
            metric,
            subject,
            granularity: g,
            first,
            last,
        } = buckets;
        let base = self.backend.keys().usage_base(tenant, metric, subject);
        let mut pipe = redis::pipe();
        for i in first..=last {
            match read {
                Read::Field(field) => {
                    pipe.cmd("HGET")
                        .arg(Keys::usage_bucket(&base, g, i))
                        .arg(field);
                }
                Read::Group(_) => {
                    pipe.cmd("HGETALL").arg(Keys::usage_bucket(&base, g, i));
                }
                Read::Unique => {
                    pipe.cmd("PFCOUNT").arg(Keys::usage_unique(&base, g, i));
                }
            }
        }
        if *read == Read::Unique {
            let mut all = redis::cmd("PFCOUNT");
            for i in first..=last {
                all.arg(Keys::usage_unique(&base, g, i));
            }
            pipe.add_command(all);
        }
        let replies = self
            .backend
            .retry_once("usage_query", || {
                self.backend.pipeline("usage_query", &pipe)
            })
            .await?;
        let mut out = Bucketed::default();
        let buckets = usize::try_from(last - first + 1).unwrap_or(0);
        for reply in replies.iter().take(buckets) {
            let values = match (read, reply) {
                (_, Value::Nil) => Vec::new(),
                (Read::Field(field), v) => vec![(field.clone(), number(v, "usage_query")?)],
                (Read::Unique, v) => vec![(String::new(), number(v, "usage_query")?)],
                (Read::Group(dim), v) => {
                    let pairs: Vec<(&Value, &Value)> = match v {
                        Value::Array(items) => {
                            items.chunks_exact(2).map(|kv| (&kv[0], &kv[1])).collect()
                        }
                        Value::Map(items) => items.iter().map(|(k, v)| (k, v)).collect(),
                        other => return Err(unexpected("usage_query", "a hash", other)),
                    };
                    let prefix = format!("{dim}=");
                    let mut values = Vec::new();
                    for (field, value) in pairs {
                        let field = string(field.clone())?;
                        if let Some(v) = field.strip_prefix(&prefix) {
                            values.push((v.to_owned(), number(value, "usage_query")?));
                        }
                    }
                    values
                }
            };
            out.buckets.push(values);
        }
        if *read == Read::Unique {
            out.distinct = Some(match replies.get(buckets) {
                Some(v) => number(v, "usage_query")?,
                None => 0,
            });
        }
        Ok(out)
    }

    async fn top(
        &self,
        tenant: &Tenant,
        metric: &str,
        g: Granularity,
        count: usize,
        n: usize,
    ) -> Result<(Vec<(String, i64)>, i64), StoreError> {
        let mut pipe = redis::pipe();
        let nonce: u64 = rand::random();
        for shard in 0..TOP_SHARDS {
            let mut call = self.top_query.call();
            call.key(self.backend.keys().usage_top_base(tenant, metric, shard))
                .arg(g.code())
                .arg(count)
                .arg(n)
                .arg(nonce);
            pipe.add_command(call.cmd());
        }
        let replies = self
            .backend
            .retry_once("usage_top", || self.backend.pipeline("usage_top", &pipe))
            .await?;
        let mut current = i64::MIN;
        let mut all: Vec<(String, i64)> = Vec::new();
        for reply in &replies {
            let Value::Array(items) = reply else {
                return Err(StoreError::Protocol("usage_top: not an array".into()));
            };
            let Some((head, rows)) = items.split_first() else {
                continue;
            };
            current = current.max(number(head, "usage_top")?);
            for row in rows.chunks_exact(2) {
                all.push((string(row[0].clone())?, number(&row[1], "usage_top")?));
            }
        }
        all.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        all.truncate(n);
        Ok((all, current))
    }

    async fn current(
        &self,
        tenant: &Tenant,
        metric: &str,
        subject: &str,
        g: Granularity,
    ) -> Result<(i64, i64), StoreError> {
        let mut call = self.current.call();
        call.key(self.backend.keys().usage_base(tenant, metric, subject))
            .arg(g.code());
        let reply: Vec<i64> = self
            .backend
            .invoke_idempotent("usage_current", &call)
            .await?;
        match reply.as_slice() {
            [used, left] => Ok((*used, *left)),
            _ => Err(StoreError::Protocol(
                "usage_current: not two numbers".into(),
            )),
        }
    }
}
