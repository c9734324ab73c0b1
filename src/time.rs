//! Wall-clock time as Unix milliseconds, and protobuf time conversions. No decision reads this
//! process's clock: the stores decide by their own (Redis `TIME`; the memory backend's `Clock`,
//! the one caller of [`now_ms`]), and domain logic takes `now` from them as an argument.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch.
pub type Millis = i64;

/// The current wall-clock time in Unix milliseconds.
pub fn now_ms() -> Millis {
    // A clock before 1970 is a broken host; treat it as the epoch rather than panic.
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A duration as whole milliseconds, saturating.
pub fn duration_ms(d: Duration) -> Millis {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Whole seconds and the nanoseconds left over, for protobuf `Timestamp` and `Duration`.
fn split(ms: Millis) -> (i64, i32) {
    // rem_euclid is in 0..1000, so the nanoseconds are below 10^9 and fit an i32.
    (
        ms.div_euclid(1000),
        (ms.rem_euclid(1000) * 1_000_000) as i32,
    )
}

/// Unix milliseconds to a protobuf `Timestamp`.
pub fn to_timestamp(ms: Millis) -> prost_types::Timestamp {
    let (seconds, nanos) = split(ms);
    prost_types::Timestamp { seconds, nanos }
}

/// A protobuf `Timestamp` as Unix milliseconds (saturating).
pub fn from_timestamp(t: &prost_types::Timestamp) -> Millis {
    t.seconds
        .saturating_mul(1000)
        .saturating_add(i64::from(t.nanos) / 1_000_000)
}

/// Milliseconds (non-negative) to a protobuf `Duration`.
pub fn to_duration(ms: Millis) -> prost_types::Duration {
    let (seconds, nanos) = split(ms.max(0));
    prost_types::Duration { seconds, nanos }
}

/// A protobuf `Duration` as whole milliseconds (saturating; negative stays negative so the
/// domain can reject it).
pub fn from_duration(d: &prost_types::Duration) -> Millis {
    d.seconds
        .saturating_mul(1000)
        .saturating_add(i64::from(d.nanos) / 1_000_000)
}
