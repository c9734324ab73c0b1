//! Tags: tagged Sets and InvalidateTags.
//!
//! A tagged Set lists the entry under each tag (`lua/tag.lua`, which also reads when the tag was
//! last invalidated) in one round trip and writes it in a second, only once every listing
//! succeeded: no value is ever served without being listed. (Untagged Sets take one round trip.)
//! InvalidateTags marks each tag invalidated, then deletes what its index lists, chunk by chunk
//! (`ZSCAN`), leaving the members in place until they expire: a Set listed but not yet written
//! stays findable, and a call that fails half-way is completed by the next. A leased Set is
//! refused if one of its tags was invalidated at or after its lease was granted.

use std::collections::HashSet;

use redis::{Pipeline, Value};

use super::{
    RedisCacheStore,
    generations::GenerationRead,
    replies::{count_ones, stored},
};
use crate::{
    cache::model::Write,
    store::{
        StoreError,
        redis::reply::{self, int},
    },
    tenant::Tenant,
    time::Millis,
};

/// How much longer than its entry a tag index member is kept: room for the write that follows
/// the listing (one pipeline, or at worst one more round trip within the call's deadline).
const TAG_MARGIN_MS: Millis = 60_000;

/// Tag index members read and deleted per round trip by InvalidateTags: bounds the work of
/// every command, whatever the size of the index.
pub const INVALIDATION_CHUNK: usize = 500;

impl RedisCacheStore {
    /// Adds the listing of `entry` under each of `tags` to `pipe`.
    fn push_tags(
        &self,
        pipe: &mut Pipeline,
        tenant: &Tenant,
        namespace: &str,
        entry: &str,
        w: &Write,
    ) {
        let keys = self.backend.keys();
        let keep = w
            .ttl_ms
            .saturating_add(w.stale_ms)
            .saturating_add(TAG_MARGIN_MS);
        for tag in &w.tags {
            pipe.cmd("EVALSHA")
                .arg(self.scripts.tag.hash())
                .arg(2)
                .arg(keys.cache_tag(tenant, namespace, tag))
                .arg(keys.cache_tag_mark(tenant, namespace, tag))
                .arg(entry)
                .arg(keep);
        }
    }

    /// Sets with tags: list every tagged write under its tags (and read the tags'
    /// invalidation marks) in one round trip, then write in a second, only once every listing
    /// succeeded. (In one pipeline a failed listing would not stop the write after it.)
    pub(super) async fn set_tagged(
        &self,
        tenant: &Tenant,
        namespace: &str,
        writes: &[Write],
    ) -> Result<Vec<bool>, StoreError> {
        let keys: Vec<&str> = writes.iter().map(|w| w.key.as_str()).collect();
        let buckets = self
            .in_generations(
                "cache_set",
                tenant,
                namespace,
                GenerationRead::Write,
                &keys,
                |g, items, pipe| {
                    for &i in items {
                        let w = &writes[i];
                        let entry = self
                            .backend
                            .keys()
                            .cache_entry(tenant, namespace, g, &w.key);
                        self.push_tags(pipe, tenant, namespace, &entry, w);
                    }
                },
            )
            .await?;
        // Each write's bucket generation and the latest invalidation of its tags.
        let mut planned: Vec<Option<(u64, Millis)>> = vec![None; writes.len()];
        for b in buckets {
            let generation = b
                .generation
                .ok_or_else(|| StoreError::Protocol("no generation after creating it".into()))?;
            let mut marks = b.replies.iter();
            for i in b.items {
                let mut invalidated = 0;
                for mark in marks.by_ref().take(writes[i].tags.len()) {
                    invalidated = invalidated.max(int(mark)?);
                }
                planned[i] = Some((generation, invalidated));
            }
        }
        let mut pipe = redis::pipe();
        for (w, plan) in writes.iter().zip(planned) {
            let (generation, invalidated) = plan.ok_or_else(|| {
                StoreError::Protocol("cache_set: a write without a bucket".into())
            })?;
            self.push_set(&mut pipe, tenant, namespace, generation, w, invalidated);
        }
        let replies = self.backend.pipeline("cache_set", &pipe).await?;
        stored(&replies, writes.len())
    }

    pub(super) async fn invalidate_tags_untracked(
        &self,
        tenant: &Tenant,
        namespace: &str,
        tags: &[String],
    ) -> Result<u64, StoreError> {
        let keys = self.backend.keys();
        let indexes: Vec<String> = tags
            .iter()
            .map(|t| keys.cache_tag(tenant, namespace, t))
            .collect();
        // Round trip 1: mark every tag invalidated and read the first chunk of its index.
        let mark_keep = self.settings.lease_ttl_ms.saturating_add(TAG_MARGIN_MS);
        let mut pipe = redis::pipe();
        for (tag, index) in tags.iter().zip(&indexes) {
            pipe.cmd("EVALSHA")
                .arg(self.scripts.invalidate_tag.hash())
                .arg(2)
                .arg(index)
                .arg(keys.cache_tag_mark(tenant, namespace, tag))
                .arg(mark_keep)
                .arg(INVALIDATION_CHUNK);
        }
        let mut seen: HashSet<Vec<u8>> = HashSet::new();
        let mut pending: Vec<Vec<u8>> = Vec::new();
        // Indexes still being scanned: (index, cursor, the store's time at the invalidation).
        let mut scanning: Vec<(&String, u64, Millis)> = Vec::new();
        let replies = self
            .backend
            .pipeline("cache_invalidate_tags", &pipe)
            .await?;
        for (index, reply) in indexes.iter().zip(replies) {
            let Value::Array(items) = reply else {
                return Err(reply::unexpected("invalidate_tag", "an array", &reply));
            };
            let mut items = items.into_iter();
            let (Some(now), Some(cursor)) = (items.next(), items.next()) else {
                return Err(StoreError::Protocol("invalidate_tag: short reply".into()));
            };
            let cursor = u64::try_from(int(&cursor)?)
                .map_err(|_| StoreError::Protocol("invalidate_tag: negative cursor".into()))?;
            if cursor != 0 {
                scanning.push((index, cursor, int(&now)?));
            }
            for m in items {
                if let Value::BulkString(m) = m
                    && seen.insert(m.clone())
                {
                    pending.push(m);
                }
            }
        }
        // Then chunk by chunk: delete what was read, read the next chunk, in one round trip.
        // Only entries of their bucket's current generation count as deleted: older ones are
        // invisible already.
        let mut deleted = 0;
        while !pending.is_empty() || !scanning.is_empty() {
            let mut pipe = redis::pipe();
            let mut deleting = 0;
            for entry in &pending {
                if self
                    .push_delete(&mut pipe, tenant, namespace, entry)
                    .is_some()
                {
                    deleting += 1;
                }
            }
            for (index, cursor, _) in &scanning {
                pipe.cmd("ZSCAN")
                    .arg(*index)
                    .arg(*cursor)
                    .arg("COUNT")
                    .arg(INVALIDATION_CHUNK);
            }
            let replies = self
                .backend
                .pipeline("cache_invalidate_tags", &pipe)
                .await?;
            if replies.len() != deleting + scanning.len() {
                return Err(StoreError::Protocol(
                    "invalidate_tags: reply count mismatch".into(),
                ));
            }
            deleted += count_ones(&replies[..deleting])?;
            pending.clear();
            let mut next = Vec::new();
            for ((index, _, now), reply) in scanning.iter().zip(&replies[deleting..]) {
                let (cursor, items) = scan_reply(reply)?;
                for pair in items.chunks_exact(2) {
                    let live = match &pair[1] {
                        Value::BulkString(score) => {
                            reply::parse_int(score).is_none_or(|s| s > *now)
                        }
                        _ => true,
                    };
                    if let Value::BulkString(m) = &pair[0]
                        && live
                        && seen.insert(m.clone())
                    {
                        pending.push(m.clone());
                    }
                }
                if cursor != 0 {
                    next.push((*index, cursor, *now));
                }
            }
            scanning = next;
        }
        Ok(deleted)
    }
}

/// A `ZSCAN` reply: the next cursor and the member/score pairs.
fn scan_reply(reply: &Value) -> Result<(u64, &[Value]), StoreError> {
    match reply {
        Value::Array(parts) => match parts.as_slice() {
            [Value::BulkString(cursor), Value::Array(items)] => Ok((
                // A cursor that does not parse must not end the scan as if it were done.
                reply::parse_int(cursor)
                    .and_then(|c| u64::try_from(c).ok())
                    .ok_or_else(|| {
                        StoreError::Protocol("ZSCAN: the cursor is not a number".into())
                    })?,
                items.as_slice(),
            )),
            _ => Err(StoreError::Protocol("ZSCAN: unexpected reply shape".into())),
        },
        other => Err(reply::unexpected("ZSCAN", "an array", other)),
    }
}
