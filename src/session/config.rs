//! Session policy (`[session]`): timeouts, the per-user limit and input limits.

use std::{
    num::{NonZeroU32, NonZeroUsize},
    time::Duration,
};

use serde::{Deserialize, Serialize};

use crate::config::{PositiveDuration, nonzero, require_positive};

/// Session policy and the limits on session input.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct SessionConfig {
    /// Idle timeout when CreateSession names none: the session dies this long after its last activity.
    pub idle_timeout: PositiveDuration,
    /// Absolute lifetime when CreateSession names none: no activity extends a session past it.
    pub absolute_timeout: PositiveDuration,
    /// Largest idle or absolute timeout a request may ask for.
    #[serde(with = "humantime_serde")]
    pub max_timeout: Duration,
    /// Live sessions per user; creating one more deletes the oldest.
    pub max_per_user: NonZeroU32,
    /// Longest user id, in bytes.
    pub max_user_id_bytes: NonZeroUsize,
    /// Most data fields in one session, and most metadata entries.
    pub max_fields: NonZeroUsize,
    /// Longest data or metadata field name, in bytes.
    pub max_field_name_bytes: NonZeroUsize,
    /// Total size of a session's data (names plus values), in bytes.
    pub max_data_bytes: NonZeroUsize,
    /// Total size of a session's metadata (names plus values), in bytes.
    pub max_metadata_bytes: NonZeroUsize,
    /// Redis only: how many replicas must have a session write before it is answered.
    pub write_concern: WriteConcern,
}

/// A write concern for session writes (`[session.write_concern]`): each create, update,
/// rotation and deletion is followed by Redis's `WAIT replicas timeout`. Redis replicates
/// asynchronously: without it, a write acknowledged by a master that dies before its replica
/// received it is lost in the failover (a new session vanishes, a logout comes undone). With
/// it, a write is answered only once `replicas` replicas have it; one that was not confirmed in
/// time answers UNAVAILABLE (it was made on the master and may or may not survive a failover).
/// Touches are not waited for: a lost touch only brings an idle expiry forward.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(default)]
pub struct WriteConcern {
    /// Replicas that must acknowledge; 0 (the default) waits for none.
    pub replicas: u32,
    /// How long to wait for them.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for WriteConcern {
    fn default() -> Self {
        Self {
            replicas: 0,
            timeout: Duration::from_millis(500),
        }
    }
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            idle_timeout: PositiveDuration::from_secs(nonzero!(24 * 3600)),
            absolute_timeout: PositiveDuration::from_secs(nonzero!(30 * 24 * 3600)),
            max_timeout: Duration::from_secs(30 * 24 * 3600),
            max_per_user: nonzero!(64),
            max_user_id_bytes: nonzero!(256),
            max_fields: nonzero!(128),
            max_field_name_bytes: nonzero!(128),
            max_data_bytes: nonzero!(64 * 1024),
            max_metadata_bytes: nonzero!(4 * 1024),
            write_concern: WriteConcern::default(),
        }
    }
}

impl SessionConfig {
    /// Adds a message per bad value to `bad`.
    pub fn validate(&self, bad: &mut Vec<String>) {
        if self.write_concern.replicas > 0 {
            require_positive(
                bad,
                "session.write_concern.timeout",
                !self.write_concern.timeout.is_zero(),
            );
        }
        for (key, value) in [
            ("session.idle_timeout", self.idle_timeout),
            ("session.absolute_timeout", self.absolute_timeout),
        ] {
            if value.get() > self.max_timeout {
                bad.push(format!(
                    "`{key}` ({}) exceeds `session.max_timeout` ({})",
                    humantime::format_duration(value.get()),
                    humantime::format_duration(self.max_timeout)
                ));
            }
        }
    }
}
