//! gRPC services: one file per service. A handler validates and converts the request, calls the
//! domain, and converts the answer; errors map to `Status` through `From<Error>`.

pub mod cache;
pub mod ratelimit;
pub mod session;

use crate::time::Millis;

/// A protobuf `Duration` as whole milliseconds (saturating; negative stays negative so the domain
/// can reject it).
pub(crate) fn duration_ms(d: &prost_types::Duration) -> Millis {
    d.seconds
        .saturating_mul(1000)
        .saturating_add(i64::from(d.nanos) / 1_000_000)
}
