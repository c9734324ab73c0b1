//! `flowstate.v1.UsageService`.

use tonic::{Request, Response, Status};

use super::{
    model::Granularity,
    service::{Event, Query, Usage},
};
use crate::{
    auth::{MethodPermissions, permission::Permission, tenant_and},
    error::Error,
    proto::v1::{self as pb, usage_service_server::UsageService},
    time::{from_duration, from_timestamp, to_timestamp},
};

/// The UsageService handlers.
pub struct UsageApi {
    usage: Usage,
}

impl UsageApi {
    /// Handlers over `usage`; each call acts for its caller's tenant.
    pub fn new(usage: Usage) -> Self {
        Self { usage }
    }
}

/// The permission each method needs.
pub const PERMISSIONS: MethodPermissions = (
    pb::usage_service_server::SERVICE_NAME,
    &[
        ("Record", Permission::UsageRecord),
        ("Query", Permission::UsageRead),
        ("Top", Permission::UsageRead),
    ],
);

fn granularity(g: pb::Granularity) -> Option<Granularity> {
    match g {
        pb::Granularity::Unspecified => None,
        pb::Granularity::Minute => Some(Granularity::Minute),
        pb::Granularity::Hour => Some(Granularity::Hour),
        pb::Granularity::Day => Some(Granularity::Day),
        pb::Granularity::Month => Some(Granularity::Month),
    }
}

#[tonic::async_trait]
impl UsageService for UsageApi {
    async fn record(
        &self,
        request: Request<pb::RecordRequest>,
    ) -> Result<Response<pb::RecordResponse>, Status> {
        let (tenant, r) = tenant_and(request)?;
        let events = r
            .events
            .into_iter()
            .map(|e| Event {
                metric: e.metric,
                subject: e.subject,
                amount: e.amount.unwrap_or(1),
                dimensions: e.dimensions.into_iter().collect(),
                unique: e.unique,
            })
            .collect();
        let recorded = self.usage.record(&tenant, events, &r.batch_id).await?;
        Ok(Response::new(pb::RecordResponse { recorded }))
    }

    async fn query(
        &self,
        request: Request<pb::QueryRequest>,
    ) -> Result<Response<pb::QueryResponse>, Status> {
        let (tenant, r) = tenant_and(request)?;
        let g = granularity(r.granularity());
        let from = r
            .from
            .as_ref()
            .map(from_timestamp)
            .ok_or_else(|| Error::invalid("from", "required"))?;
        let series = self
            .usage
            .query(
                &tenant,
                Query {
                    metric: r.metric,
                    subject: r.subject,
                    from,
                    to: r.to.as_ref().map(from_timestamp),
                    granularity: g,
                    dimensions: r.dimensions.into_iter().collect(),
                    group_by: r.group_by,
                    unique: r.unique,
                },
            )
            .await?;
        Ok(Response::new(pb::QueryResponse {
            series: series
                .into_iter()
                .map(|s| pb::Series {
                    value: s.value,
                    points: s
                        .points
                        .into_iter()
                        .map(|(start, value)| pb::Point {
                            start: Some(to_timestamp(start)),
                            value,
                        })
                        .collect(),
                    total: s.total,
                })
                .collect(),
        }))
    }

    async fn top(
        &self,
        request: Request<pb::TopRequest>,
    ) -> Result<Response<pb::TopResponse>, Status> {
        let (tenant, r) = tenant_and(request)?;
        let g = granularity(r.granularity());
        let window = r.window.as_ref().map_or(0, from_duration);
        let top = self.usage.top(&tenant, &r.metric, window, r.n, g).await?;
        Ok(Response::new(pb::TopResponse {
            entries: top
                .entries
                .into_iter()
                .map(|(subject, value)| pb::TopEntry { subject, value })
                .collect(),
            from: Some(to_timestamp(top.from)),
            to: Some(to_timestamp(top.to)),
        }))
    }
}
