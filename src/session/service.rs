//! Sessions: policy and validation in front of the store, free of gRPC and Redis types.

use std::sync::Arc;

use super::{
    config::SessionConfig,
    id::{SessionId, UserTag},
    model::{
        CreateSession, DataLimits, DeleteTarget, LimitExceeded, NewSession, Session, SessionUpdate,
        UpdateOutcome, UpdateRefused,
    },
    store::SessionStore,
    validate::{check_fields, check_user_id, parse_handle, parse_id, validate_create},
};
use crate::events::{Events, service::SESSIONS_TOPIC};
use crate::{
    error::{Error, Violation},
    tenant::Tenant,
};

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
    store: Arc<dyn SessionStore>,
    policy: Arc<SessionConfig>,
    metrics: SessionMetrics,
    /// Where revocations are announced (`flowstate.sessions`), when events are on.
    events: Option<Events>,
}

impl Sessions {
    /// Sessions over `store` with `policy`.
    pub fn new(store: Arc<dyn SessionStore>, policy: SessionConfig) -> Self {
        Self {
            store,
            policy: Arc::new(policy),
            metrics: SessionMetrics::new(),
            events: None,
        }
    }

    fn limits(&self) -> DataLimits {
        DataLimits {
            max_fields: self.policy.max_fields.get(),
            max_bytes: self.policy.max_data_bytes.get(),
        }
    }

    /// Creates a session; evicts the user's oldest when over `max_per_user`.
    pub async fn create(&self, tenant: &Tenant, req: CreateSession) -> Result<Session, Error> {
        let p = &self.policy;
        let (idle_timeout, absolute_timeout) = validate_create(p, &req)?;
        let id = SessionId::generate(UserTag::for_user(tenant, &req.user_id));
        let key = id.key();
        let new = NewSession {
            user_id: req.user_id,
            data: req.data,
            metadata: req.metadata,
            idle_timeout,
            absolute_timeout,
        };
        let (record, evicted) = self
            .store
            .create(tenant, &key, new, p.max_per_user.get())
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
    pub async fn get(&self, tenant: &Tenant, id: &str, touch: bool) -> Result<Session, Error> {
        let key = parse_id(id)?.key();
        let record = self
            .store
            .get(tenant, &key, touch)
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
            p.max_fields.get(),
            p.max_field_name_bytes.get(),
            p.max_data_bytes.get(),
            &mut bad,
        );
        check_fields(
            "remove",
            update.remove.iter().map(|k| (k.as_str(), 0)),
            p.max_fields.get(),
            p.max_field_name_bytes.get(),
            usize::MAX,
            &mut bad,
        );
        if update
            .remove
            .iter()
            .any(|r| update.set.iter().any(|(s, _)| s == r))
        {
            bad.push(Violation::new("remove", "a field is both set and removed"));
        }
        let Some(key) = key.filter(|_| bad.is_empty()) else {
            return Err(Error::InvalidArgument(bad));
        };
        match self
            .store
            .update(tenant, &key, &update, self.limits())
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

    /// The same sessions, announcing revocations (deleted, rotated, logged out everywhere) on
    /// `flowstate.sessions`: handles and user ids, never a session id.
    pub fn with_events(mut self, events: Events) -> Self {
        self.events = Some(events);
        self
    }

    async fn announce(&self, tenant: &Tenant, event: serde_json::Value) {
        if let Some(events) = &self.events {
            events
                .publish_own(tenant, SESSIONS_TOPIC, event.to_string())
                .await;
        }
    }

    /// Replaces the id; the old one is dead when this returns.
    pub async fn rotate(&self, tenant: &Tenant, id: &str) -> Result<Session, Error> {
        let old = parse_id(id)?;
        let new = SessionId::generate(old.tag());
        let key = new.key();
        let record = self
            .store
            .rotate(tenant, &old.key(), &key)
            .await?
            .ok_or_else(|| self.missed())?;
        self.metrics.rotated.increment(1);
        self.announce(
            tenant,
            serde_json::json!({
                "type": "session.rotated",
                "user_id": record.user_id,
                "handle": old.key().handle(),
                "new_handle": key.handle(),
            }),
        )
        .await;
        Ok(Session {
            id: Some(new),
            key,
            record,
        })
    }

    /// Deletes a session by id or handle; false when it was already gone.
    pub async fn delete(&self, tenant: &Tenant, target: DeleteTarget<'_>) -> Result<bool, Error> {
        let key = match target {
            DeleteTarget::Id(id) => parse_id(id)?.key(),
            DeleteTarget::Handle(h) => parse_handle("handle", h)?,
        };
        let Some(user_id) = self.store.delete(tenant, &key).await? else {
            return Ok(false);
        };
        self.metrics.deleted.increment(1);
        self.announce(
            tenant,
            serde_json::json!({
                "type": "session.deleted",
                "user_id": user_id,
                "handle": key.handle(),
            }),
        )
        .await;
        Ok(true)
    }

    /// The user's live sessions, oldest first.
    pub async fn list(&self, tenant: &Tenant, user_id: &str) -> Result<Vec<Session>, Error> {
        self.check_user_id_only(user_id)?;
        let tag = UserTag::for_user(tenant, user_id);
        let mut sessions: Vec<Session> = self
            .store
            .list(tenant, tag, user_id)
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
    ) -> Result<u64, Error> {
        self.check_user_id_only(user_id)?;
        let keep = keep_handle
            .map(|h| parse_handle("keep_handle", h))
            .transpose()?;
        let tag = UserTag::for_user(tenant, user_id);
        let deleted = self
            .store
            .delete_user(tenant, tag, user_id, keep.as_ref())
            .await?;
        self.metrics.deleted.increment(deleted);
        if deleted > 0 {
            self.announce(
                tenant,
                serde_json::json!({
                    "type": "session.user_logged_out",
                    "user_id": user_id,
                    "deleted": deleted,
                    "kept_handle": keep.as_ref().map(|k| k.handle()),
                }),
            )
            .await;
        }
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
