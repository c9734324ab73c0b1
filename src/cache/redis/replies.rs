//! What the cache's scripts and commands answer, parsed: `set.lua`'s stored flags, `get.lua`'s
//! leased lookup, a plain lookup from `HMGET v e s` and the store's `TIME`. Anything of another
//! shape is a protocol error, never a miss.

use bytes::Bytes;
use redis::Value;

use crate::{
    cache::model::{Freshness, Lease, Lookup},
    store::{
        StoreError,
        redis::reply::{self, int},
    },
    time::Millis,
};

/// `set.lua` replies as `stored` flags.
pub(super) fn stored(replies: &[Value], writes: usize) -> Result<Vec<bool>, StoreError> {
    if replies.len() != writes {
        return Err(StoreError::Protocol(format!(
            "cache_set: {} replies for {writes} writes",
            replies.len()
        )));
    }
    replies.iter().map(|r| Ok(int(r)? == 1)).collect()
}

pub(super) fn count_ones(replies: &[Value]) -> Result<u64, StoreError> {
    let mut n = 0;
    for r in replies {
        if int(r)? > 0 {
            n += 1;
        }
    }
    Ok(n)
}

/// A `get.lua` answer.
pub(super) fn leased_lookup(reply: Value, token: &str) -> Result<Lookup, StoreError> {
    let Value::Array(reply) = reply else {
        return Err(reply::unexpected("cache_get", "an array", &reply));
    };
    let [state, value, fresh_ms, lease] = <[Value; 4]>::try_from(reply)
        .map_err(|_| StoreError::Protocol("cache_get: expected four values".into()))?;
    let freshness = match int(&state)? {
        1 => Freshness::Fresh,
        2 => Freshness::Stale,
        _ => Freshness::Miss,
    };
    Ok(Lookup {
        freshness,
        value: match value {
            Value::BulkString(b) => Bytes::from(b),
            _ => Bytes::new(),
        },
        fresh_ms: int(&fresh_ms)?,
        lease: match int(&lease)? {
            1 => Lease::Granted(token.to_owned()),
            2 => Lease::Wait,
            _ => Lease::None,
        },
    })
}

/// A plain lookup from `HMGET v e s`, at the store's `now`.
pub(super) fn lookup_from_hash(reply: Value, now: Millis) -> Result<Lookup, StoreError> {
    let Value::Array(fields) = reply else {
        return Err(reply::unexpected("HMGET", "an array", &reply));
    };
    let mut it = fields.into_iter();
    let (Some(v), Some(e), Some(s)) = (it.next(), it.next(), it.next()) else {
        return Err(StoreError::Protocol("HMGET: three fields expected".into()));
    };
    let num = |v: &Value| match v {
        Value::BulkString(b) => reply::parse_int(b),
        _ => None,
    };
    let (Value::BulkString(value), Some(fresh_until), Some(stale_until)) = (v, num(&e), num(&s))
    else {
        return Ok(Lookup::miss());
    };
    let (freshness, fresh_ms) = if now < fresh_until {
        (Freshness::Fresh, fresh_until - now)
    } else if now < stale_until {
        (Freshness::Stale, 0)
    } else {
        return Ok(Lookup::miss());
    };
    Ok(Lookup {
        freshness,
        value: Bytes::from(value),
        fresh_ms,
        lease: Lease::None,
    })
}

/// A `TIME` reply in Unix milliseconds.
pub(super) fn store_time(reply: &Value) -> Result<Millis, StoreError> {
    match reply {
        Value::Array(parts) => match parts.as_slice() {
            [Value::BulkString(secs), Value::BulkString(micros)] => {
                match (reply::parse_int(secs), reply::parse_int(micros)) {
                    (Some(s), Some(us)) => Ok(s * 1000 + us / 1000),
                    _ => Err(StoreError::Protocol("TIME: not numbers".into())),
                }
            }
            _ => Err(StoreError::Protocol("TIME: unexpected shape".into())),
        },
        other => Err(reply::unexpected("TIME", "an array", other)),
    }
}
