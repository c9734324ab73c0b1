//! What a Redis error means for the caller: whether Redis refused the command without running
//! it (so it may be resent), and which store failure it is, in words safe for logs.

use std::time::Duration;

use redis::{ErrorKind, RedisError};

use crate::store::StoreError;

/// Whether Redis refused the command without running it, so sending it again cannot apply
/// it twice: a redirection (MOVED, ASK), a cluster or server state that passes (TRYAGAIN,
/// CLUSTERDOWN, LOADING, MASTERDOWN, BUSY), a write sent to a replica (READONLY), or no
/// connection to send it on (refused, no node for the slot).
pub fn not_executed(e: &RedisError) -> bool {
    matches!(
        e.code(),
        Some(
            "MOVED"
                | "ASK"
                | "TRYAGAIN"
                | "CLUSTERDOWN"
                | "LOADING"
                | "MASTERDOWN"
                | "READONLY"
                | "BUSY"
        )
    ) || e.is_connection_refusal()
        || e.kind() == ErrorKind::ClusterConnectionNotFound
}

/// Whether `e` says the server cannot take writes as a master right now.
pub(super) fn server_changed_role(e: &RedisError) -> bool {
    matches!(e.code(), Some("READONLY" | "LOADING" | "MASTERDOWN"))
}

/// Sorts a Redis error into the store's failure kinds.
pub fn classify(e: &RedisError, timeout: Duration) -> StoreError {
    if e.is_timeout() {
        return StoreError::Timeout(timeout);
    }
    // The cluster client reports a refused password while connecting to its seeds as an I/O
    // error ("Failed to create initial connections") whose text names the cause: a
    // configuration fault all the same, never a passing state.
    if e.kind() == ErrorKind::Io && {
        let text = e.to_string();
        ["AuthenticationFailed", "WRONGPASS", "NOAUTH", "NOPERM"]
            .iter()
            .any(|cause| text.contains(cause))
    } {
        return StoreError::Refused(describe(e));
    }
    if e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.kind() == ErrorKind::ClusterConnectionNotFound
    {
        return StoreError::Unavailable(describe(e));
    }
    if e.kind() == ErrorKind::AuthenticationFailed {
        return StoreError::Refused(describe(e));
    }
    match e.code() {
        // Server states that pass: loading a dataset, a busy script, a failover in progress, a
        // server that cannot take writes right now.
        Some(
            "LOADING" | "BUSY" | "TRYAGAIN" | "MASTERDOWN" | "READONLY" | "CLUSTERDOWN" | "MOVED"
            | "ASK",
        ) => StoreError::Unavailable(describe(e)),
        Some("OOM") => StoreError::Full("Redis is at maxmemory and refuses writes"),
        // flowstate's credentials or ACL: a fault to fix, not to wait out.
        Some("NOAUTH" | "WRONGPASS" | "NOPERM") => StoreError::Refused(describe(e)),
        _ => StoreError::Protocol(describe(e)),
    }
}

/// What `e` says, in words safe for logs: the server's own error (codes and messages never
/// carry stored data), the OS's for I/O, otherwise only the category. Never `e.to_string()` of
/// a reply that did not convert: redis-rs puts the reply's value into that text.
fn describe(e: &RedisError) -> String {
    match (e.code(), e.kind()) {
        (Some(code), _) => match e.detail() {
            Some(detail) => format!("{code} {detail}"),
            None => code.to_owned(),
        },
        (None, ErrorKind::Io) => e.to_string(),
        _ => e.category().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use redis::Value;

    use super::*;

    #[test]
    fn a_reply_that_does_not_convert_stays_out_of_the_error() {
        let e = <i64 as redis::FromRedisValue>::from_redis_value(Value::BulkString(
            b"user-secret".to_vec(),
        ))
        .expect_err("not an integer");
        let e = RedisError::from(e);
        let classified = classify(&e, Duration::from_secs(1)).to_string();
        assert!(!classified.contains("user-secret"), "{classified}");
    }
}
