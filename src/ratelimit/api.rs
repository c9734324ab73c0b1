//! `flowstate.v1.RateLimitService`.

use tonic::{Request, Response, Status};

use crate::{
    auth::{MethodPermissions, permission::Permission, tenant_and},
    error::Error,
    proto::v1::{self as pb, rate_limit_service_server::RateLimitService},
    ratelimit::{Algorithm, CheckInput, FailureMode, LimitRef, Policy, RateLimits},
    time::{from_duration, to_duration},
};

/// The RateLimitService handlers.
pub struct RateLimitApi {
    limits: RateLimits,
}

impl RateLimitApi {
    /// Handlers over `limits`; each call acts for its caller's tenant.
    pub fn new(limits: RateLimits) -> Self {
        Self { limits }
    }
}

/// The permission each method needs (checked by the auth layer before the handler runs).
pub const PERMISSIONS: MethodPermissions = (
    pb::rate_limit_service_server::SERVICE_NAME,
    &[
        ("Check", Permission::RatelimitCheck),
        ("Reset", Permission::RatelimitAdmin),
    ],
);

#[tonic::async_trait]
impl RateLimitService for RateLimitApi {
    async fn check(
        &self,
        request: Request<pb::CheckRequest>,
    ) -> Result<Response<pb::CheckResponse>, Status> {
        let (tenant, r) = tenant_and(request)?;
        let checks = r
            .checks
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                Ok(CheckInput {
                    limit: limit_ref(c.limit, Some(i))?,
                    key: c.key,
                })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        let outcome = self
            .limits
            .check(&tenant, checks, r.cost.unwrap_or(1), r.dry_run)
            .await?;
        Ok(Response::new(pb::CheckResponse {
            allowed: outcome.allowed,
            results: outcome
                .results
                .into_iter()
                .map(|c| pb::CheckResult {
                    allowed: c.decision.allowed,
                    limit: c.limit,
                    remaining: c.decision.remaining,
                    reset_after: Some(to_duration(c.decision.reset_after_ms)),
                    retry_after: Some(to_duration(c.decision.retry_after_ms)),
                    enforced: c.enforced,
                })
                .collect(),
        }))
    }

    async fn reset(
        &self,
        request: Request<pb::ResetRequest>,
    ) -> Result<Response<pb::ResetResponse>, Status> {
        let (tenant, r) = tenant_and(request)?;
        let limit = limit_ref(r.limit.map(check_limit), None)?;
        self.limits.reset(&tenant, limit, &r.key).await?;
        Ok(Response::new(pb::ResetResponse {}))
    }
}

fn check_limit(l: pb::reset_request::Limit) -> pb::limit_check::Limit {
    match l {
        pb::reset_request::Limit::Name(n) => pb::limit_check::Limit::Name(n),
        pb::reset_request::Limit::Policy(p) => pb::limit_check::Limit::Policy(p),
    }
}

/// Converts the proto's limit choice; an absent choice is an empty name (rejected downstream).
/// `check` (the check's index, `None` for Reset) only names the field in an error.
fn limit_ref(
    limit: Option<pb::limit_check::Limit>,
    check: Option<usize>,
) -> Result<LimitRef, Error> {
    Ok(match limit {
        None => LimitRef::Named(String::new()),
        Some(pb::limit_check::Limit::Name(name)) => LimitRef::Named(name),
        Some(pb::limit_check::Limit::Policy(p)) => {
            let algorithm = match p.algorithm() {
                pb::Algorithm::FixedWindow => Algorithm::FixedWindow,
                pb::Algorithm::SlidingWindow => Algorithm::SlidingWindow,
                pb::Algorithm::TokenBucket => Algorithm::TokenBucket,
                pb::Algorithm::Gcra => Algorithm::Gcra,
                pb::Algorithm::Unspecified => {
                    let field = match check {
                        Some(i) => format!("checks[{i}].policy.algorithm"),
                        None => "policy.algorithm".to_owned(),
                    };
                    return Err(Error::invalid(
                        field,
                        "choose fixed_window, sliding_window, token_bucket or gcra",
                    ));
                }
            };
            let failure_mode = match p.failure_mode() {
                pb::FailureMode::Open => FailureMode::Open,
                pb::FailureMode::Closed | pb::FailureMode::Unspecified => FailureMode::Closed,
            };
            LimitRef::Inline(Policy {
                algorithm,
                limit: p.limit,
                period_ms: p.period.as_ref().map_or(0, from_duration),
                burst: p.burst,
                failure_mode,
            })
        }
    })
}
