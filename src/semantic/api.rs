//! `flowstate.v1.SemanticCacheService`.

use tonic::{Request, Response, Status};

use super::service::{Semantic, SetInput};
use crate::{
    auth::{MethodPermissions, permission::Permission, tenant_and},
    proto::v1::{self as pb, semantic_cache_service_server::SemanticCacheService},
    time::{from_duration, to_duration},
};

/// The SemanticCacheService handlers.
pub struct SemanticApi {
    semantic: Semantic,
}

impl SemanticApi {
    /// Handlers over `semantic`; each call acts for its caller's tenant.
    pub fn new(semantic: Semantic) -> Self {
        Self { semantic }
    }
}

/// The permission each method needs: the cache's (a semantic cache is a cache).
pub const PERMISSIONS: MethodPermissions = (
    pb::semantic_cache_service_server::SERVICE_NAME,
    &[
        ("Get", Permission::CacheRead),
        ("Set", Permission::CacheWrite),
        ("Delete", Permission::CacheWrite),
    ],
);

#[tonic::async_trait]
impl SemanticCacheService for SemanticApi {
    async fn set(
        &self,
        request: Request<pb::SemanticSetRequest>,
    ) -> Result<Response<pb::SemanticSetResponse>, Status> {
        let (tenant, r) = tenant_and(request)?;
        let stored = self
            .semantic
            .set(
                &tenant,
                &r.namespace,
                SetInput {
                    embedding: r.embedding,
                    value: r.value,
                    ttl_ms: r.ttl.as_ref().map_or(0, from_duration),
                    metadata: r.metadata.into_iter().collect(),
                },
            )
            .await?;
        Ok(Response::new(pb::SemanticSetResponse {
            id: stored.id,
            evicted: stored.evicted,
        }))
    }

    async fn get(
        &self,
        request: Request<pb::SemanticGetRequest>,
    ) -> Result<Response<pb::SemanticGetResponse>, Status> {
        let (tenant, r) = tenant_and(request)?;
        let found = self
            .semantic
            .get(&tenant, &r.namespace, &r.embedding, r.min_similarity)
            .await?;
        Ok(Response::new(match found {
            Some(f) => pb::SemanticGetResponse {
                found: true,
                id: f.id,
                similarity: f.similarity,
                value: f.value,
                metadata: f.metadata.into_iter().collect(),
                ttl: Some(to_duration(f.ttl_ms)),
            },
            None => pb::SemanticGetResponse::default(),
        }))
    }

    async fn delete(
        &self,
        request: Request<pb::SemanticDeleteRequest>,
    ) -> Result<Response<pb::SemanticDeleteResponse>, Status> {
        let (tenant, r) = tenant_and(request)?;
        let deleted = self.semantic.delete(&tenant, &r.namespace, r.id).await?;
        Ok(Response::new(pb::SemanticDeleteResponse { deleted }))
    }
}
