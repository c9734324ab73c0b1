//! `flowstate.v1.LockService`.

use std::time::Duration;

use tonic::{Request, Response, Status};

use super::{Acquired, Locks, service::AcquireLock};
use crate::{
    auth::{MethodPermissions, permission::Permission, tenant_and},
    proto::v1::{self as pb, lock_service_server::LockService},
    time::{from_duration, to_duration, to_timestamp},
};

/// The LockService handlers.
pub struct LockApi {
    locks: Locks,
}

impl LockApi {
    /// Handlers over `locks`; each call acts for its caller's tenant.
    pub fn new(locks: Locks) -> Self {
        Self { locks }
    }
}

/// The permission each method needs (checked by the auth layer before the handler runs).
pub const PERMISSIONS: MethodPermissions = (
    pb::lock_service_server::SERVICE_NAME,
    &[
        ("Acquire", Permission::LocksWrite),
        ("Extend", Permission::LocksWrite),
        ("Release", Permission::LocksWrite),
        ("Inspect", Permission::LocksRead),
    ],
);

/// A proto duration as a `Duration` (negative ones as zero: validation refuses what matters).
fn duration(d: Option<&prost_types::Duration>) -> Duration {
    d.map_or(Duration::ZERO, |d| {
        Duration::from_millis(u64::try_from(from_duration(d)).unwrap_or(0))
    })
}

#[tonic::async_trait]
impl LockService for LockApi {
    async fn acquire(
        &self,
        request: Request<pb::AcquireLockRequest>,
    ) -> Result<Response<pb::AcquireLockResponse>, Status> {
        let (tenant, r) = tenant_and(request)?;
        let req = AcquireLock {
            ttl: duration(r.ttl.as_ref()),
            wait: duration(r.wait.as_ref()),
            name: r.name,
            limit: r.limit,
            metadata: r.metadata.into_iter().collect(),
        };
        Ok(Response::new(
            match self.locks.acquire(&tenant, req).await? {
                Acquired::Held {
                    token,
                    holder_id,
                    grant,
                } => pb::AcquireLockResponse {
                    acquired: true,
                    token,
                    fencing_token: grant.fence,
                    expires_at: Some(to_timestamp(grant.expires_at)),
                    holder_id,
                    retry_after: None,
                    holders: 0,
                },
                Acquired::Busy {
                    retry_after_ms,
                    holders,
                } => pb::AcquireLockResponse {
                    acquired: false,
                    retry_after: Some(to_duration(
                        i64::try_from(retry_after_ms).unwrap_or(i64::MAX),
                    )),
                    holders,
                    ..Default::default()
                },
            },
        ))
    }

    async fn extend(
        &self,
        request: Request<pb::ExtendLockRequest>,
    ) -> Result<Response<pb::ExtendLockResponse>, Status> {
        let (tenant, r) = tenant_and(request)?;
        let grant = self
            .locks
            .extend(&tenant, &r.name, &r.token, duration(r.ttl.as_ref()))
            .await?;
        Ok(Response::new(pb::ExtendLockResponse {
            expires_at: Some(to_timestamp(grant.expires_at)),
            fencing_token: grant.fence,
        }))
    }

    async fn release(
        &self,
        request: Request<pb::ReleaseLockRequest>,
    ) -> Result<Response<pb::ReleaseLockResponse>, Status> {
        let (tenant, r) = tenant_and(request)?;
        self.locks.release(&tenant, &r.name, &r.token).await?;
        Ok(Response::new(pb::ReleaseLockResponse {}))
    }

    async fn inspect(
        &self,
        request: Request<pb::InspectLockRequest>,
    ) -> Result<Response<pb::InspectLockResponse>, Status> {
        let (tenant, r) = tenant_and(request)?;
        let state = self.locks.inspect(&tenant, &r.name).await?;
        Ok(Response::new(pb::InspectLockResponse {
            holders: state
                .holders
                .into_iter()
                .map(|h| pb::LockHolder {
                    holder_id: h.holder_id,
                    fencing_token: h.fence,
                    acquired_at: Some(to_timestamp(h.acquired_at)),
                    expires_at: Some(to_timestamp(h.expires_at)),
                    metadata: h.metadata.into_iter().collect(),
                })
                .collect(),
            waiters: state.waiters,
            last_fencing_token: state.last_fence,
        }))
    }
}
