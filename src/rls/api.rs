//! `envoy.service.ratelimit.v3.RateLimitService`: Envoy's rate limit filter calls this.

use tonic::{Request, Response, Status};

use super::{
    rules::Unit,
    service::{Code, Descriptor, Rls},
};
use crate::{
    auth::{MethodPermissions, permission::Permission, tenant_and},
    error::Error,
    proto::envoy::{
        config::core::v3::HeaderValue,
        service::ratelimit::v3::{
            self as pb, rate_limit_response::DescriptorStatus,
            rate_limit_service_server::RateLimitService,
        },
    },
};

/// The permission each method needs: the same as flowstate's own rate-limit checks.
pub const PERMISSIONS: MethodPermissions = (
    pb::rate_limit_service_server::SERVICE_NAME,
    &[("ShouldRateLimit", Permission::RatelimitCheck)],
);

/// The RLS handler.
pub struct RlsApi {
    rls: Rls,
}

impl RlsApi {
    /// The handler over `rls`; each call acts for its caller's tenant (the API key Envoy sends
    /// in its `initial_metadata`).
    pub fn new(rls: Rls) -> Self {
        Self { rls }
    }
}

#[tonic::async_trait]
impl RateLimitService for RlsApi {
    async fn should_rate_limit(
        &self,
        request: Request<pb::RateLimitRequest>,
    ) -> Result<Response<pb::RateLimitResponse>, Status> {
        let (tenant, r) = tenant_and(request)?;
        // hits_addend 0 means 1; a descriptor's own hits_addend (0 allowed: a peek) wins.
        let hits = u64::from(r.hits_addend.max(1));
        let descriptors = r
            .descriptors
            .into_iter()
            .enumerate()
            .map(|(i, d)| {
                let limit_override = match d.limit {
                    Some(l) => Some((
                        l.requests_per_unit,
                        Unit::from_proto(l.unit).ok_or_else(|| {
                            Error::invalid(
                                format!("descriptors[{i}].limit.unit"),
                                "SECOND, MINUTE, HOUR, DAY, WEEK, MONTH or YEAR",
                            )
                        })?,
                    )),
                    None => None,
                };
                Ok(Descriptor {
                    entries: d.entries.into_iter().map(|e| (e.key, e.value)).collect(),
                    limit_override,
                    hits: d.hits_addend.map_or(hits, |h| h),
                })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        let outcome = self
            .rls
            .should_rate_limit(&tenant, &r.domain, descriptors)
            .await?;
        let code = |c: &Code| match c {
            Code::Unknown => pb::rate_limit_response::Code::Unknown,
            Code::Ok => pb::rate_limit_response::Code::Ok,
            Code::OverLimit => pb::rate_limit_response::Code::OverLimit,
        } as i32;
        Ok(Response::new(pb::RateLimitResponse {
            overall_code: if outcome.over_limit {
                pb::rate_limit_response::Code::OverLimit
            } else {
                pb::rate_limit_response::Code::Ok
            } as i32,
            statuses: outcome
                .statuses
                .iter()
                .map(|s| DescriptorStatus {
                    code: code(&s.code),
                    current_limit: s.current_limit.as_ref().map(|l| {
                        pb::rate_limit_response::RateLimit {
                            name: l.name.clone(),
                            requests_per_unit: l.requests_per_unit,
                            unit: l.unit.to_proto(),
                        }
                    }),
                    limit_remaining: s.limit_remaining,
                    duration_until_reset: s
                        .until_reset
                        .map(|d| crate::time::to_duration(d.as_millis() as i64)),
                    quota: None,
                })
                .collect(),
            response_headers_to_add: outcome
                .headers
                .into_iter()
                .map(|(key, value)| HeaderValue {
                    key,
                    value,
                    raw_value: Default::default(),
                })
                .collect(),
            request_headers_to_add: Vec::new(),
            raw_body: Default::default(),
            dynamic_metadata: outcome.metadata,
            quota: None,
        }))
    }
}
