//! Session policy (`[session]`): timeouts, the per-user limit and input limits.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::require_positive;

/// Session policy and the limits on session input.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct SessionConfig {
    /// Idle timeout when CreateSession names none: the session dies this long after its last activity.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Absolute lifetime when CreateSession names none: no activity extends a session past it.
    #[serde(with = "humantime_serde")]
    pub absolute_timeout: Duration,
    /// Largest idle or absolute timeout a request may ask for.
    #[serde(with = "humantime_serde")]
    pub max_timeout: Duration,
    /// Live sessions per user; creating one more deletes the oldest.
    pub max_per_user: u32,
    /// Longest user id, in bytes.
    pub max_user_id_bytes: usize,
    /// Most data fields in one session, and most metadata entries.
    pub max_fields: usize,
    /// Longest data or metadata field name, in bytes.
    pub max_field_name_bytes: usize,
    /// Total size of a session's data (names plus values), in bytes.
    pub max_data_bytes: usize,
    /// Total size of a session's metadata (names plus values), in bytes.
    pub max_metadata_bytes: usize,
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
            idle_timeout: Duration::from_secs(24 * 3600),
            absolute_timeout: Duration::from_secs(30 * 24 * 3600),
            max_timeout: Duration::from_secs(30 * 24 * 3600),
            max_per_user: 64,
            max_user_id_bytes: 256,
            max_fields: 128,
            max_field_name_bytes: 128,
            max_data_bytes: 64 * 1024,
            max_metadata_bytes: 4 * 1024,
            write_concern: WriteConcern::default(),
        }
    }
}

impl SessionConfig {
    /// Adds a message per bad value to `bad`.
    pub fn validate(&self, bad: &mut Vec<String>) {
        require_positive(bad, "session.idle_timeout", !self.idle_timeout.is_zero());
        require_positive(
            bad,
            "session.absolute_timeout",
            !self.absolute_timeout.is_zero(),
        );
        require_positive(bad, "session.max_per_user", self.max_per_user > 0);
        require_positive(bad, "session.max_user_id_bytes", self.max_user_id_bytes > 0);
        require_positive(bad, "session.max_fields", self.max_fields > 0);
        require_positive(
            bad,
            "session.max_field_name_bytes",
            self.max_field_name_bytes > 0,
        );
        require_positive(bad, "session.max_data_bytes", self.max_data_bytes > 0);
        require_positive(
            bad,
            "session.max_metadata_bytes",
            self.max_metadata_bytes > 0,
        );
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
            if value > self.max_timeout {
                bad.push(format!(
                    "`{key}` ({}) exceeds `session.max_timeout` ({})",
                    humantime::format_duration(value),
                    humantime::format_duration(self.max_timeout)
                ));
            }
        }
    }
}
