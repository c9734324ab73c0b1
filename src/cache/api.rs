//! `flowstate.v1.CacheService`.

use tonic::{Request, Response, Status};

use crate::{
    auth::{MethodPermissions, permission::Permission, require, tenant_and},
    cache::{Caches, Condition, Freshness, Lease, Lookup, SetInput},
    error::Error,
    proto::v1::{self as pb, cache_service_server::CacheService},
    time::{from_duration, to_duration},
};

/// The CacheService handlers.
pub struct CacheApi {
    caches: Caches,
}

impl CacheApi {
    /// Handlers over `caches`; each call acts for its caller's tenant.
    pub fn new(caches: Caches) -> Self {
        Self { caches }
    }
}

/// The write condition; an unknown enum value is INVALID_ARGUMENT, not a silent ALWAYS.
fn condition(field: &str, value: i32) -> Result<Condition, Error> {
    match pb::SetCondition::try_from(value) {
        Ok(pb::SetCondition::Always) => Ok(Condition::Always),
        Ok(pb::SetCondition::IfAbsent) => Ok(Condition::IfAbsent),
        Ok(pb::SetCondition::IfPresent) => Ok(Condition::IfPresent),
        Err(_) => Err(Error::invalid(
            field,
            "choose SET_CONDITION_ALWAYS, _IF_ABSENT or _IF_PRESENT",
        )),
    }
}

/// Time left in the fresh period (the store's figure), as a protobuf Duration; zero unless fresh.
fn ttl_remaining(lookup: &Lookup) -> Option<prost_types::Duration> {
    let ms = match lookup.freshness {
        Freshness::Fresh => lookup.fresh_ms.max(0),
        Freshness::Stale | Freshness::Miss => 0,
    };
    Some(to_duration(ms))
}

/// The permission each method needs (checked by the auth layer before the handler runs).
pub const PERMISSIONS: MethodPermissions = (
    pb::cache_service_server::SERVICE_NAME,
    &[
        ("Get", Permission::CacheRead),
        ("GetMany", Permission::CacheRead),
        ("Set", Permission::CacheWrite),
        ("SetMany", Permission::CacheWrite),
        ("Delete", Permission::CacheWrite),
        ("InvalidateTags", Permission::CacheInvalidate),
        ("InvalidateNamespace", Permission::CacheInvalidate),
    ],
);

#[tonic::async_trait]
impl CacheService for CacheApi {
    async fn get(
        &self,
        request: Request<pb::CacheGetRequest>,
    ) -> Result<Response<pb::CacheGetResponse>, Status> {
        // A lease reserves the key for its holder to fill: only a writer can use one.
        if request.get_ref().lease {
            require(&request, Permission::CacheWrite)?;
        }
        let (tenant, r) = tenant_and(request)?;
        let lookup = self
            .caches
            .get(&tenant, &r.namespace, &r.key, r.lease)
            .await?;
        let ttl_remaining = ttl_remaining(&lookup);
        Ok(Response::new(pb::CacheGetResponse {
            found: lookup.freshness != Freshness::Miss,
            stale: lookup.freshness == Freshness::Stale,
            ttl_remaining,
            lease_wait: lookup.lease == Lease::Wait,
            lease_token: match lookup.lease {
                Lease::Granted(token) => token,
                Lease::None | Lease::Wait => String::new(),
            },
            value: lookup.value,
        }))
    }

    async fn get_many(
        &self,
        request: Request<pb::CacheGetManyRequest>,
    ) -> Result<Response<pb::CacheGetManyResponse>, Status> {
        let (tenant, r) = tenant_and(request)?;
        let lookups = self.caches.get_many(&tenant, &r.namespace, &r.keys).await?;
        let entries = r
            .keys
            .into_iter()
            .zip(lookups)
            .map(|(key, lookup)| pb::CacheEntry {
                key,
                found: lookup.freshness != Freshness::Miss,
                stale: lookup.freshness == Freshness::Stale,
                ttl_remaining: ttl_remaining(&lookup),
                value: lookup.value,
            })
            .collect();
        Ok(Response::new(pb::CacheGetManyResponse { entries }))
    }

    async fn set(
        &self,
        request: Request<pb::CacheSetRequest>,
    ) -> Result<Response<pb::CacheSetResponse>, Status> {
        let (tenant, r) = tenant_and(request)?;
        let input = SetInput {
            condition: condition("condition", r.condition)?,
            key: r.key,
            value: r.value,
            ttl_ms: r.ttl.as_ref().map(from_duration),
            tags: r.tags,
            lease_token: Some(r.lease_token),
        };
        let stored = self
            .caches
            .set(&tenant, &r.namespace, vec![input], false)
            .await?;
        Ok(Response::new(pb::CacheSetResponse {
            stored: stored.first().copied().unwrap_or(false),
        }))
    }

    async fn set_many(
        &self,
        request: Request<pb::CacheSetManyRequest>,
    ) -> Result<Response<pb::CacheSetManyResponse>, Status> {
        let (tenant, r) = tenant_and(request)?;
        let inputs = r
            .entries
            .into_iter()
            .enumerate()
            .map(|(i, e)| {
                Ok(SetInput {
                    condition: condition(&format!("entries[{i}].condition"), e.condition)?,
                    key: e.key,
                    value: e.value,
                    ttl_ms: e.ttl.as_ref().map(from_duration),
                    tags: e.tags,
                    lease_token: None,
                })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        let stored = self.caches.set(&tenant, &r.namespace, inputs, true).await?;
        Ok(Response::new(pb::CacheSetManyResponse { stored }))
    }

    async fn delete(
        &self,
        request: Request<pb::CacheDeleteRequest>,
    ) -> Result<Response<pb::CacheDeleteResponse>, Status> {
        let (tenant, r) = tenant_and(request)?;
        let deleted = self.caches.delete(&tenant, &r.namespace, &r.keys).await?;
        Ok(Response::new(pb::CacheDeleteResponse { deleted }))
    }

    async fn invalidate_tags(
        &self,
        request: Request<pb::CacheInvalidateTagsRequest>,
    ) -> Result<Response<pb::CacheInvalidateTagsResponse>, Status> {
        let (tenant, r) = tenant_and(request)?;
        let invalidated = self
            .caches
            .invalidate_tags(&tenant, &r.namespace, &r.tags)
            .await?;
        Ok(Response::new(pb::CacheInvalidateTagsResponse {
            invalidated,
        }))
    }

    async fn invalidate_namespace(
        &self,
        request: Request<pb::CacheInvalidateNamespaceRequest>,
    ) -> Result<Response<pb::CacheInvalidateNamespaceResponse>, Status> {
        let (tenant, r) = tenant_and(request)?;
        self.caches
            .invalidate_namespace(&tenant, &r.namespace)
            .await?;
        Ok(Response::new(pb::CacheInvalidateNamespaceResponse {}))
    }
}
