//! Session types shared by the domain, its store contract and both stores: a leaf module
//! (it imports nothing of the session service or the stores), so imports point one way.
//!
//! Time math is done by pure functions of `now` ([`expiry`], [`SessionRecord::touch`],
//! [`SessionRecord::apply`]) so boundaries are unit-tested here. `now` is always the store's
//! clock (Redis `TIME` inside the scripts, which mirror these rules; the memory store's own
//! clock), never the clock of the replica that took the call.

use std::collections::HashMap;

use bytes::Bytes;

use super::id::{SessionId, SessionKey};
use crate::time::Millis;

/// A session's state as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    /// Owner.
    pub user_id: String,
    /// Application data, field by field.
    pub data: HashMap<String, Bytes>,
    /// Descriptive metadata set at creation.
    pub metadata: HashMap<String, String>,
    /// Creation time.
    pub created_at: Millis,
    /// Last activity.
    pub last_seen_at: Millis,
    /// When the session dies: min(idle expiry, absolute expiry).
    pub expires_at: Millis,
    /// The absolute end of life; nothing extends a session past it.
    pub absolute_expires_at: Millis,
    /// Idle timeout of this session.
    pub idle_timeout: Millis,
    /// 1 at creation, +1 per update.
    pub version: u64,
}

/// A session's expiry after activity at `now`: the idle timeout slides, the absolute end does not.
pub fn expiry(now: Millis, idle_timeout: Millis, absolute_expires_at: Millis) -> Millis {
    now.saturating_add(idle_timeout).min(absolute_expires_at)
}

/// A validated session to create. The store stamps it with its own clock.
#[derive(Debug, Clone)]
pub struct NewSession {
    /// Owner.
    pub user_id: String,
    /// Initial data.
    pub data: HashMap<String, Bytes>,
    /// Metadata.
    pub metadata: HashMap<String, String>,
    /// Idle timeout in ms.
    pub idle_timeout: Millis,
    /// Absolute lifetime in ms.
    pub absolute_timeout: Millis,
}

impl NewSession {
    /// The session as created at `now` (store clock).
    pub fn created_at(self, now: Millis) -> SessionRecord {
        let absolute_expires_at = now.saturating_add(self.absolute_timeout);
        SessionRecord {
            user_id: self.user_id,
            data: self.data,
            metadata: self.metadata,
            created_at: now,
            last_seen_at: now,
            expires_at: expiry(now, self.idle_timeout, absolute_expires_at),
            absolute_expires_at,
            idle_timeout: self.idle_timeout,
            version: 1,
        }
    }
}

/// A validated request to change a session's data.
#[derive(Debug, Clone, Default)]
pub struct SessionUpdate {
    /// Fields to set.
    pub set: Vec<(String, Bytes)>,
    /// Fields to remove.
    pub remove: Vec<String>,
    /// 0: unconditional; otherwise the version the session must be at.
    pub expected_version: u64,
}

/// Size limits that hold for a session's data after every update.
#[derive(Debug, Clone, Copy)]
pub struct DataLimits {
    /// Most data fields.
    pub max_fields: usize,
    /// Most bytes of names plus values.
    pub max_bytes: usize,
}

/// What an update did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpdateOutcome {
    /// Applied; the session as it now is.
    Updated(SessionRecord),
    /// No live session.
    NotFound,
    /// Refused; nothing changed.
    Refused(UpdateRefused),
}

/// Why an update was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateRefused {
    /// `expected_version` did not match.
    Conflict {
        /// The session's version.
        current: u64,
    },
    /// The data would exceed a limit.
    TooLarge(LimitExceeded),
}

/// Which data limit an update would break.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitExceeded {
    /// Too many fields.
    Fields,
    /// Too many bytes.
    Bytes,
}

/// Bytes a data map counts against `session.max_data_bytes`: names plus values.
pub fn data_size<'a>(fields: impl IntoIterator<Item = (&'a String, &'a Bytes)>) -> usize {
    fields.into_iter().map(|(k, v)| k.len() + v.len()).sum()
}

impl SessionRecord {
    /// Activity at `now`: moves `last_seen_at` and slides the expiry.
    pub fn touch(&mut self, now: Millis) {
        self.last_seen_at = now;
        self.expires_at = expiry(now, self.idle_timeout, self.absolute_expires_at);
    }

    /// Whether the session is dead at `now`.
    pub fn is_expired(&self, now: Millis) -> bool {
        self.expires_at <= now
    }

    /// Applies `update` at `now` if the version matches and the result fits `limits`.
    /// On success the update counts as activity and the version grows by one; otherwise the
    /// record is left as it was.
    pub fn apply(
        &mut self,
        update: &SessionUpdate,
        limits: DataLimits,
        now: Millis,
    ) -> Result<(), UpdateRefused> {
        if update.expected_version != 0 && update.expected_version != self.version {
            return Err(UpdateRefused::Conflict {
                current: self.version,
            });
        }
        let mut data = self.data.clone();
        for name in &update.remove {
            data.remove(name);
        }
        for (name, value) in &update.set {
            data.insert(name.clone(), value.clone());
        }
        if data.len() > limits.max_fields {
            return Err(UpdateRefused::TooLarge(LimitExceeded::Fields));
        }
        if data_size(&data) > limits.max_bytes {
            return Err(UpdateRefused::TooLarge(LimitExceeded::Bytes));
        }
        self.data = data;
        self.version += 1;
        self.touch(now);
        Ok(())
    }
}

/// A session as the API returns it.
#[derive(Debug, Clone)]
pub struct Session {
    /// The secret id: only right after Create and Rotate.
    pub id: Option<SessionId>,
    /// Where it lives (its handle).
    pub key: SessionKey,
    /// Its state.
    pub record: SessionRecord,
}

/// Input of CreateSession, before validation.
#[derive(Debug, Clone, Default)]
pub struct CreateSession {
    /// Owner.
    pub user_id: String,
    /// Initial data.
    pub data: HashMap<String, Bytes>,
    /// Metadata.
    pub metadata: HashMap<String, String>,
    /// Requested idle timeout in ms (`None`: policy default).
    pub idle_timeout: Option<Millis>,
    /// Requested absolute lifetime in ms (`None`: policy default).
    pub absolute_timeout: Option<Millis>,
}

/// What DeleteSession names.
#[derive(Debug, Clone, Copy)]
pub enum DeleteTarget<'a> {
    /// The secret id.
    Id(&'a str),
    /// The public handle.
    Handle(&'a str),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(now: Millis) -> SessionRecord {
        SessionRecord {
            user_id: "u".into(),
            data: HashMap::new(),
            metadata: HashMap::new(),
            created_at: now,
            last_seen_at: now,
            expires_at: expiry(now, 100, now + 250),
            absolute_expires_at: now + 250,
            idle_timeout: 100,
            version: 1,
        }
    }
    #[test]
    fn touch_slides_idle_expiry_but_never_past_absolute() {
        let mut r = record(1_000);
        assert_eq!(r.expires_at, 1_100);
        r.touch(1_090);
        assert_eq!(r.expires_at, 1_190);
        r.touch(1_200);
        assert_eq!(r.expires_at, 1_250, "capped by the absolute lifetime");
        assert!(!r.is_expired(1_249));
        assert!(r.is_expired(1_250));
    }

    #[test]
    fn apply_checks_version_and_limits_and_changes_nothing_on_failure() {
        let limits = DataLimits {
            max_fields: 2,
            max_bytes: 10,
        };
        let mut r = record(0);
        let set = |pairs: &[(&str, &str)], v| SessionUpdate {
            set: pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), Bytes::copy_from_slice(v.as_bytes())))
                .collect(),
            remove: vec![],
            expected_version: v,
        };
        r.apply(&set(&[("a", "1")], 1), limits, 10)
            .expect("applies");
        assert_eq!((r.version, r.last_seen_at), (2, 10));
        let before = r.clone();
        assert_eq!(
            r.apply(&set(&[("b", "2")], 1), limits, 20),
            Err(UpdateRefused::Conflict { current: 2 })
        );
        assert_eq!(
            r.apply(&set(&[("b", "2"), ("c", "3")], 0), limits, 20),
            Err(UpdateRefused::TooLarge(LimitExceeded::Fields))
        );
        assert_eq!(
            r.apply(&set(&[("b", "123456789")], 0), limits, 20),
            Err(UpdateRefused::TooLarge(LimitExceeded::Bytes))
        );
        assert_eq!(r, before);
        let remove = SessionUpdate {
            remove: vec!["a".into()],
            ..SessionUpdate::default()
        };
        r.apply(&remove, limits, 30).expect("remove applies");
        assert!(r.data.is_empty());
        assert_eq!(r.version, 3);
    }
}
