//! `flowstate.v1.SessionService`.

use tonic::{Request, Response, Status};

use crate::{
    proto::v1::{self as pb, session_service_server::SessionService},
    session::{CreateSession, Session, SessionUpdate, Sessions, model::DeleteTarget},
    tenant::Tenant,
    time::{from_duration, to_timestamp},
};

/// The SessionService handlers.
pub struct SessionApi {
    sessions: Sessions,
    tenant: Tenant,
}

impl SessionApi {
    /// Handlers over `sessions`, acting for `tenant` (until authentication picks it per call).
    pub fn new(sessions: Sessions, tenant: Tenant) -> Self {
        Self { sessions, tenant }
    }
}

#[tonic::async_trait]
impl SessionService for SessionApi {
    async fn create_session(
        &self,
        request: Request<pb::CreateSessionRequest>,
    ) -> Result<Response<pb::Session>, Status> {
        let r = request.into_inner();
        let input = CreateSession {
            user_id: r.user_id,
            data: r.data,
            metadata: r.metadata,
            idle_timeout: r.idle_timeout.as_ref().map(from_duration),
            absolute_timeout: r.absolute_timeout.as_ref().map(from_duration),
        };
        let session = self.sessions.create(&self.tenant, input).await?;
        Ok(Response::new(session.into()))
    }

    async fn get_session(
        &self,
        request: Request<pb::GetSessionRequest>,
    ) -> Result<Response<pb::Session>, Status> {
        let r = request.into_inner();
        let session = self.sessions.get(&self.tenant, &r.id, r.touch).await?;
        Ok(Response::new(session.into()))
    }

    async fn update_session(
        &self,
        request: Request<pb::UpdateSessionRequest>,
    ) -> Result<Response<pb::Session>, Status> {
        let r = request.into_inner();
        let update = SessionUpdate {
            set: r.set.into_iter().collect(),
            remove: r.remove,
            expected_version: r.expected_version,
        };
        let session = self.sessions.update(&self.tenant, &r.id, update).await?;
        Ok(Response::new(session.into()))
    }

    async fn touch_session(
        &self,
        request: Request<pb::TouchSessionRequest>,
    ) -> Result<Response<pb::Session>, Status> {
        let r = request.into_inner();
        let session = self.sessions.get(&self.tenant, &r.id, true).await?;
        Ok(Response::new(session.into()))
    }

    async fn rotate_session(
        &self,
        request: Request<pb::RotateSessionRequest>,
    ) -> Result<Response<pb::Session>, Status> {
        let r = request.into_inner();
        let session = self.sessions.rotate(&self.tenant, &r.id).await?;
        Ok(Response::new(session.into()))
    }

    async fn delete_session(
        &self,
        request: Request<pb::DeleteSessionRequest>,
    ) -> Result<Response<pb::DeleteSessionResponse>, Status> {
        use pb::delete_session_request::Target;
        let target = match &request.get_ref().target {
            Some(Target::Id(id)) => DeleteTarget::Id(id),
            Some(Target::Handle(handle)) => DeleteTarget::Handle(handle),
            None => DeleteTarget::Id(""),
        };
        let deleted = self.sessions.delete(&self.tenant, target).await?;
        Ok(Response::new(pb::DeleteSessionResponse { deleted }))
    }

    async fn list_user_sessions(
        &self,
        request: Request<pb::ListUserSessionsRequest>,
    ) -> Result<Response<pb::ListUserSessionsResponse>, Status> {
        let r = request.into_inner();
        let sessions = self.sessions.list(&self.tenant, &r.user_id).await?;
        Ok(Response::new(pb::ListUserSessionsResponse {
            sessions: sessions.into_iter().map(Into::into).collect(),
        }))
    }

    async fn delete_user_sessions(
        &self,
        request: Request<pb::DeleteUserSessionsRequest>,
    ) -> Result<Response<pb::DeleteUserSessionsResponse>, Status> {
        let r = request.into_inner();
        let deleted = self
            .sessions
            .delete_user(&self.tenant, &r.user_id, r.keep_handle.as_deref())
            .await?;
        Ok(Response::new(pb::DeleteUserSessionsResponse { deleted }))
    }
}

impl From<Session> for pb::Session {
    fn from(s: Session) -> Self {
        let r = s.record;
        pb::Session {
            id: s.id.map(|id| id.encode()).unwrap_or_default(),
            handle: s.key.handle(),
            user_id: r.user_id,
            data: r.data,
            metadata: r.metadata,
            created_at: Some(to_timestamp(r.created_at)),
            last_seen_at: Some(to_timestamp(r.last_seen_at)),
            expires_at: Some(to_timestamp(r.expires_at)),
            version: r.version,
        }
    }
}
