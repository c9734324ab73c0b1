//! `flowstate.v1.SessionService`.

use tonic::{Request, Response, Status};

use crate::{
    auth::{MethodPermissions, permission::Permission, require, tenant_and},
    proto::v1::{self as pb, session_service_server::SessionService},
    session::{CreateSession, Session, SessionUpdate, Sessions, model::DeleteTarget},
    time::{from_duration, to_timestamp},
};

/// The SessionService handlers.
pub struct SessionApi {
    sessions: Sessions,
}

impl SessionApi {
    /// Handlers over `sessions`; each call acts for its caller's tenant.
    pub fn new(sessions: Sessions) -> Self {
        Self { sessions }
    }
}

/// The permission each method needs (checked by the auth layer before the handler runs).
pub const PERMISSIONS: MethodPermissions = (
    pb::session_service_server::SERVICE_NAME,
    &[
        ("CreateSession", Permission::SessionsWrite),
        ("GetSession", Permission::SessionsRead),
        ("UpdateSession", Permission::SessionsWrite),
        ("TouchSession", Permission::SessionsWrite),
        ("RotateSession", Permission::SessionsWrite),
        ("DeleteSession", Permission::SessionsWrite),
        ("ListUserSessions", Permission::SessionsRead),
        ("DeleteUserSessions", Permission::SessionsWrite),
    ],
);

#[tonic::async_trait]
impl SessionService for SessionApi {
    async fn create_session(
        &self,
        request: Request<pb::CreateSessionRequest>,
    ) -> Result<Response<pb::Session>, Status> {
        let (tenant, r) = tenant_and(request)?;
        let input = CreateSession {
            user_id: r.user_id,
            data: r.data,
            metadata: r.metadata,
            idle_timeout: r.idle_timeout.as_ref().map(from_duration),
            absolute_timeout: r.absolute_timeout.as_ref().map(from_duration),
        };
        let session = self.sessions.create(&tenant, input).await?;
        Ok(Response::new(session.into()))
    }

    async fn get_session(
        &self,
        request: Request<pb::GetSessionRequest>,
    ) -> Result<Response<pb::Session>, Status> {
        // Touching extends the session: a write, like TouchSession.
        if request.get_ref().touch {
            require(&request, Permission::SessionsWrite)?;
        }
        let (tenant, r) = tenant_and(request)?;
        let session = self.sessions.get(&tenant, &r.id, r.touch).await?;
        Ok(Response::new(session.into()))
    }

    async fn update_session(
        &self,
        request: Request<pb::UpdateSessionRequest>,
    ) -> Result<Response<pb::Session>, Status> {
        let (tenant, r) = tenant_and(request)?;
        let update = SessionUpdate {
            set: r.set.into_iter().collect(),
            remove: r.remove,
            expected_version: r.expected_version,
        };
        let session = self.sessions.update(&tenant, &r.id, update).await?;
        Ok(Response::new(session.into()))
    }

    async fn touch_session(
        &self,
        request: Request<pb::TouchSessionRequest>,
    ) -> Result<Response<pb::Session>, Status> {
        let (tenant, r) = tenant_and(request)?;
        let session = self.sessions.get(&tenant, &r.id, true).await?;
        Ok(Response::new(session.into()))
    }

    async fn rotate_session(
        &self,
        request: Request<pb::RotateSessionRequest>,
    ) -> Result<Response<pb::Session>, Status> {
        let (tenant, r) = tenant_and(request)?;
        let session = self.sessions.rotate(&tenant, &r.id).await?;
        Ok(Response::new(session.into()))
    }

    async fn delete_session(
        &self,
        request: Request<pb::DeleteSessionRequest>,
    ) -> Result<Response<pb::DeleteSessionResponse>, Status> {
        use pb::delete_session_request::Target;
        let (tenant, r) = tenant_and(request)?;
        let target = match &r.target {
            Some(Target::Id(id)) => DeleteTarget::Id(id),
            Some(Target::Handle(handle)) => DeleteTarget::Handle(handle),
            None => DeleteTarget::Id(""),
        };
        let deleted = self.sessions.delete(&tenant, target).await?;
        Ok(Response::new(pb::DeleteSessionResponse { deleted }))
    }

    async fn list_user_sessions(
        &self,
        request: Request<pb::ListUserSessionsRequest>,
    ) -> Result<Response<pb::ListUserSessionsResponse>, Status> {
        let (tenant, r) = tenant_and(request)?;
        let sessions = self.sessions.list(&tenant, &r.user_id).await?;
        Ok(Response::new(pb::ListUserSessionsResponse {
            sessions: sessions.into_iter().map(Into::into).collect(),
        }))
    }

    async fn delete_user_sessions(
        &self,
        request: Request<pb::DeleteUserSessionsRequest>,
    ) -> Result<Response<pb::DeleteUserSessionsResponse>, Status> {
        let (tenant, r) = tenant_and(request)?;
        let deleted = self
            .sessions
            .delete_user(&tenant, &r.user_id, r.keep_handle.as_deref())
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
