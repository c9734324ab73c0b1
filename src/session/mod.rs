//! Sessions: the domain rules, free of gRPC and Redis types.
//!
//! Time math is done by pure functions of `now` ([`expiry`], [`SessionRecord::touch`],
//! [`SessionRecord::apply`]) so boundaries are unit-tested here; the Redis store mirrors the same
//! rules in Lua and the contract suite checks both stores agree.

pub mod id;

use std::{collections::HashMap, sync::Arc};

use bytes::Bytes;

pub use self::id::{SessionId, SessionKey, UserTag};
use crate::{
    config::SessionConfig,
    error::{Error, Violation},
    store::Store,
    tenant::Tenant,
    time::{Millis, duration_ms},
};

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

/// Session event counters, registered once.
#[derive(Clone)]
struct SessionMetrics {
    created: metrics::Counter,
    rotated: metrics::Counter,
    deleted: metrics::Counter,
    missed: metrics::Counter,
}

impl SessionMetrics {
    fn new() -> Self {
        let counter =
            |event: &'static str| metrics::counter!("flowstate_sessions_total", "event" => event);
        Self {
            created: counter("created"),
            rotated: counter("rotated"),
            deleted: counter("deleted"),
            missed: counter("missed"),
        }
    }
}

/// Session operations for a tenant: policy and validation in front of the store.
#[derive(Clone)]
pub struct Sessions {
    store: Store,
    policy: Arc<SessionConfig>,
    metrics: SessionMetrics,
}

impl Sessions {
    /// Sessions over `store` with `policy`.
    pub fn new(store: Store, policy: SessionConfig) -> Self {
        Self {
            store,
            policy: Arc::new(policy),
            metrics: SessionMetrics::new(),
        }
    }

    fn limits(&self) -> DataLimits {
        DataLimits {
            max_fields: self.policy.max_fields,
            max_bytes: self.policy.max_data_bytes,
        }
    }

    /// Creates a session; evicts the user's oldest when over `max_per_user`.
    pub async fn create(
        &self,
        tenant: &Tenant,
        req: CreateSession,
        now: Millis,
    ) -> Result<Session, Error> {
        let p = &self.policy;
        let (idle, absolute) = validate_create(p, &req)?;
        let absolute_expires_at = now.saturating_add(absolute);
        let record = SessionRecord {
            user_id: req.user_id,
            data: req.data,
            metadata: req.metadata,
            created_at: now,
            last_seen_at: now,
            expires_at: expiry(now, idle, absolute_expires_at),
            absolute_expires_at,
            idle_timeout: idle,
            version: 1,
        };
        let id = SessionId::generate(UserTag::for_user(tenant, &record.user_id));
        let key = id.key();
        let evicted = self
            .store
            .session_create(tenant, &key, &record, p.max_per_user)
            .await?;
        self.metrics.created.increment(1);
        if evicted > 0 {
            self.metrics.deleted.increment(u64::from(evicted));
            tracing::debug!(evicted, "evicted oldest sessions over max_per_user");
        }
        Ok(Session {
            id: Some(id),
            key,
            record,
        })
    }

    /// Reads a live session; with `touch`, slides its idle expiry.
    pub async fn get(
        &self,
        tenant: &Tenant,
        id: &str,
        touch: bool,
        now: Millis,
    ) -> Result<Session, Error> {
        let key = parse_id(id)?.key();
        let record = self
            .store
            .session_get(tenant, &key, now, touch)
            .await?
            .ok_or_else(|| self.missed())?;
        Ok(Session {
            id: None,
            key,
            record,
        })
    }

    /// Field-level update with optional compare-and-set.
    pub async fn update(
        &self,
        tenant: &Tenant,
        id: &str,
        update: SessionUpdate,
        now: Millis,
    ) -> Result<Session, Error> {
        let p = &self.policy;
        let mut bad = Vec::new();
        let key = parse_id(id)
            .map_err(|e| bad.push(e))
            .ok()
            .map(|id| id.key());
        if update.set.is_empty() && update.remove.is_empty() {
            bad.push(Violation::new(
                "set",
                "set or remove must name at least one field",
            ));
        }
        check_fields(
            "set",
            update.set.iter().map(|(k, v)| (k.as_str(), v.len())),
            p.max_fields,
            p.max_field_name_bytes,
            p.max_data_bytes,
            &mut bad,
        );
        check_fields(
            "remove",
            update.remove.iter().map(|k| (k.as_str(), 0)),
            p.max_fields,
            p.max_field_name_bytes,
            usize::MAX,
            &mut bad,
        );
        if let Some(name) = update
            .remove
            .iter()
            .find(|r| update.set.iter().any(|(s, _)| s == *r))
        {
            bad.push(Violation::new(
                "remove",
                format!("field {name:?} is both set and removed"),
            ));
        }
        let Some(key) = key.filter(|_| bad.is_empty()) else {
            return Err(Error::InvalidArgument(bad));
        };
        match self
            .store
            .session_update(tenant, &key, now, &update, self.limits())
            .await?
        {
            UpdateOutcome::Updated(record) => Ok(Session {
                id: None,
                key,
                record,
            }),
            UpdateOutcome::NotFound => Err(self.missed()),
            UpdateOutcome::Refused(UpdateRefused::Conflict { current }) => {
                Err(Error::VersionConflict {
                    expected: update.expected_version,
                    current,
                })
            }
            UpdateOutcome::Refused(UpdateRefused::TooLarge(LimitExceeded::Fields)) => {
                Err(Error::invalid(
                    "set",
                    format!(
                        "the session would have more than {} data fields",
                        p.max_fields
                    ),
                ))
            }
            UpdateOutcome::Refused(UpdateRefused::TooLarge(LimitExceeded::Bytes)) => {
                Err(Error::invalid(
                    "set",
                    format!("the session's data would exceed {} bytes", p.max_data_bytes),
                ))
            }
        }
    }

    /// Replaces the id; the old one is dead when this returns.
    pub async fn rotate(&self, tenant: &Tenant, id: &str, now: Millis) -> Result<Session, Error> {
        let old = parse_id(id)?;
        let new = SessionId::generate(old.tag());
        let key = new.key();
        let record = self
            .store
            .session_rotate(tenant, &old.key(), &key, now)
            .await?
            .ok_or_else(|| self.missed())?;
        self.metrics.rotated.increment(1);
        Ok(Session {
            id: Some(new),
            key,
            record,
        })
    }

    /// Deletes a session by id or handle; false when it was already gone.
    pub async fn delete(
        &self,
        tenant: &Tenant,
        target: DeleteTarget<'_>,
        now: Millis,
    ) -> Result<bool, Error> {
        let key = match target {
            DeleteTarget::Id(id) => parse_id(id)?.key(),
            DeleteTarget::Handle(h) => parse_handle("handle", h)?,
        };
        let deleted = self.store.session_delete(tenant, &key, now).await?;
        if deleted {
            self.metrics.deleted.increment(1);
        }
        Ok(deleted)
    }

    /// The user's live sessions, oldest first.
    pub async fn list(
        &self,
        tenant: &Tenant,
        user_id: &str,
        now: Millis,
    ) -> Result<Vec<Session>, Error> {
        self.check_user_id_only(user_id)?;
        let tag = UserTag::for_user(tenant, user_id);
        let mut sessions: Vec<Session> = self
            .store
            .session_list(tenant, tag, user_id, now)
            .await?
            .into_iter()
            .map(|(key, record)| Session {
                id: None,
                key,
                record,
            })
            .collect();
        sessions.sort_by_key(|s| (s.record.created_at, s.key.member()));
        Ok(sessions)
    }

    /// Deletes all of the user's sessions but `keep_handle`; returns how many went.
    pub async fn delete_user(
        &self,
        tenant: &Tenant,
        user_id: &str,
        keep_handle: Option<&str>,
        now: Millis,
    ) -> Result<u64, Error> {
        self.check_user_id_only(user_id)?;
        let keep = keep_handle
            .map(|h| parse_handle("keep_handle", h))
            .transpose()?;
        let tag = UserTag::for_user(tenant, user_id);
        let deleted = self
            .store
            .session_delete_user(tenant, tag, user_id, keep.as_ref(), now)
            .await?;
        self.metrics.deleted.increment(deleted);
        Ok(deleted)
    }

    /// NOT_FOUND for a session that is absent or expired, counted.
    fn missed(&self) -> Error {
        self.metrics.missed.increment(1);
        Error::NotFound("session".into())
    }

    fn check_user_id_only(&self, user_id: &str) -> Result<(), Error> {
        let mut bad = Vec::new();
        check_user_id(user_id, &self.policy, &mut bad);
        if bad.is_empty() {
            Ok(())
        } else {
            Err(Error::InvalidArgument(bad))
        }
    }
}

/// Checks a CreateSession request against the policy; returns the (idle, absolute) timeouts in
/// ms to use. Every violation is reported at once, each naming its field.
pub fn validate_create(p: &SessionConfig, req: &CreateSession) -> Result<(Millis, Millis), Error> {
    let mut bad = Vec::new();
    check_user_id(&req.user_id, p, &mut bad);
    check_fields(
        "data",
        req.data.iter().map(|(k, v)| (k.as_str(), v.len())),
        p.max_fields,
        p.max_field_name_bytes,
        p.max_data_bytes,
        &mut bad,
    );
    check_fields(
        "metadata",
        req.metadata.iter().map(|(k, v)| (k.as_str(), v.len())),
        p.max_fields,
        p.max_field_name_bytes,
        p.max_metadata_bytes,
        &mut bad,
    );
    let max = duration_ms(p.max_timeout);
    let idle = check_timeout(
        "idle_timeout",
        req.idle_timeout,
        p.idle_timeout,
        max,
        &mut bad,
    );
    let absolute = check_timeout(
        "absolute_timeout",
        req.absolute_timeout,
        p.absolute_timeout,
        max,
        &mut bad,
    );
    if bad.is_empty() {
        Ok((idle, absolute))
    } else {
        Err(Error::InvalidArgument(bad))
    }
}

/// What DeleteSession names.
#[derive(Debug, Clone, Copy)]
pub enum DeleteTarget<'a> {
    /// The secret id.
    Id(&'a str),
    /// The public handle.
    Handle(&'a str),
}

fn parse_id(id: &str) -> Result<SessionId, Violation> {
    SessionId::parse(id).ok_or_else(|| {
        Violation::new(
            "id",
            if id.is_empty() {
                "must not be empty".to_owned()
            } else {
                format!(
                    "not a session id (expected {} URL-safe base64 characters)",
                    id::ID_CHARS
                )
            },
        )
    })
}

fn parse_handle(field: &str, handle: &str) -> Result<SessionKey, Violation> {
    SessionKey::parse_handle(handle).ok_or_else(|| {
        Violation::new(
            field,
            format!(
                "not a session handle (expected {} URL-safe base64 characters)",
                id::HANDLE_CHARS
            ),
        )
    })
}

impl From<Violation> for Error {
    fn from(v: Violation) -> Self {
        Error::InvalidArgument(vec![v])
    }
}

fn check_user_id(user_id: &str, p: &SessionConfig, bad: &mut Vec<Violation>) {
    if user_id.is_empty() {
        bad.push(Violation::new("user_id", "must not be empty"));
    } else if user_id.len() > p.max_user_id_bytes {
        bad.push(Violation::new(
            "user_id",
            format!("longer than {} bytes", p.max_user_id_bytes),
        ));
    }
}

/// Checks a map of named fields: count, name length, total size (names plus values).
fn check_fields<'a>(
    field: &str,
    entries: impl ExactSizeIterator<Item = (&'a str, usize)>,
    max_fields: usize,
    max_name: usize,
    max_bytes: usize,
    bad: &mut Vec<Violation>,
) {
    if entries.len() > max_fields {
        bad.push(Violation::new(
            field,
            format!(
                "{} fields, more than the limit of {max_fields}",
                entries.len()
            ),
        ));
        return;
    }
    let mut total = 0usize;
    for (name, value_len) in entries {
        if name.is_empty() {
            bad.push(Violation::new(field, "field names must not be empty"));
        } else if name.len() > max_name {
            bad.push(Violation::new(
                format!("{field}[{name:?}]"),
                format!("field name longer than {max_name} bytes"),
            ));
        }
        total = total.saturating_add(name.len()).saturating_add(value_len);
    }
    if total > max_bytes {
        bad.push(Violation::new(
            field,
            format!("{total} bytes, more than the limit of {max_bytes}"),
        ));
    }
}

fn check_timeout(
    field: &str,
    requested: Option<Millis>,
    default: std::time::Duration,
    max: Millis,
    bad: &mut Vec<Violation>,
) -> Millis {
    match requested {
        None => duration_ms(default),
        Some(ms) if ms <= 0 => {
            bad.push(Violation::new(field, "must be positive"));
            0
        }
        Some(ms) if ms > max => {
            bad.push(Violation::new(
                field,
                format!("longer than the limit of {max} ms (session.max_timeout)"),
            ));
            0
        }
        Some(ms) => ms,
    }
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

    #[test]
    fn field_checks_name_the_field() {
        let mut bad = Vec::new();
        let big = "x".repeat(11);
        check_fields(
            "data",
            [("", 1), (big.as_str(), 1)].into_iter(),
            5,
            10,
            100,
            &mut bad,
        );
        assert_eq!(bad.len(), 2);
        assert_eq!(bad[0].field, "data");
        assert!(bad[1].field.starts_with("data["));
        bad.clear();
        check_fields("data", [("a", 200)].into_iter(), 5, 10, 100, &mut bad);
        assert_eq!(bad[0].field, "data");
    }
}
