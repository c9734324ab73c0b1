//! Wall-clock time as Unix milliseconds. Domain logic takes `now` as an argument (pure functions,
//! testable boundaries); only the API layer reads the clock, through [`now_ms`].

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

/// Unix milliseconds to a protobuf `Timestamp`.
pub fn to_timestamp(ms: Millis) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        // Always in 0..1_000_000_000, so the cast cannot truncate.
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}
