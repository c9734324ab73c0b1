//! `flowstate.v1.QueueService`.

use std::time::Duration;

use tonic::{Request, Response, Status};

use super::{
    model::Failed,
    service::{JobSpec, Queues},
};
use crate::{
    auth::{MethodPermissions, permission::Permission, tenant_and},
    error::Error,
    proto::v1::{self as pb, queue_service_server::QueueService},
    time::{from_duration, from_timestamp, to_duration, to_timestamp},
};

/// The QueueService handlers.
pub struct QueueApi {
    queues: Queues,
}

impl QueueApi {
    /// Handlers over `queues`; each call acts for its caller's tenant.
    pub fn new(queues: Queues) -> Self {
        Self { queues }
    }
}

/// The permission each method needs (checked by the auth layer before the handler runs).
pub const PERMISSIONS: MethodPermissions = (
    pb::queue_service_server::SERVICE_NAME,
    &[
        ("Enqueue", Permission::QueuesEnqueue),
        ("EnqueueMany", Permission::QueuesEnqueue),
        ("Fetch", Permission::QueuesWork),
        ("Ack", Permission::QueuesWork),
        ("Fail", Permission::QueuesWork),
        ("Extend", Permission::QueuesWork),
        ("GiveBack", Permission::QueuesWork),
        ("ListDead", Permission::QueuesRead),
        ("Stats", Permission::QueuesRead),
        ("Retry", Permission::QueuesAdmin),
        ("Discard", Permission::QueuesAdmin),
        ("Pause", Permission::QueuesAdmin),
        ("Resume", Permission::QueuesAdmin),
    ],
);

/// An optional proto duration; negative ones are refused.
fn duration(field: &str, d: Option<&prost_types::Duration>) -> Result<Option<Duration>, Error> {
    match d {
        None => Ok(None),
        Some(d) => {
            let ms = from_duration(d);
            match u64::try_from(ms) {
                Ok(ms) => Ok(Some(Duration::from_millis(ms))),
                Err(_) => Err(Error::invalid(field, "must not be negative")),
            }
        }
    }
}

/// A proto duration where zero means "the default".
fn duration_or_default(
    field: &str,
    d: Option<&prost_types::Duration>,
) -> Result<Option<Duration>, Error> {
    Ok(duration(field, d)?.filter(|d| !d.is_zero()))
}

fn spec(at: &str, payload: bytes::Bytes, o: Option<pb::JobOptions>) -> Result<JobSpec, Error> {
    let o = o.unwrap_or_default();
    Ok(JobSpec {
        payload,
        delay: duration_or_default(&format!("{at}options.delay"), o.delay.as_ref())?,
        run_at: o.run_at.as_ref().map(from_timestamp),
        max_attempts: o.max_attempts,
        backoff: duration_or_default(&format!("{at}options.backoff"), o.backoff.as_ref())?,
        max_backoff: duration_or_default(
            &format!("{at}options.max_backoff"),
            o.max_backoff.as_ref(),
        )?,
        unique_key: o.unique_key,
        priority: o.priority,
        timeout: duration_or_default(&format!("{at}options.timeout"), o.timeout.as_ref())?,
    })
}

fn enqueued(e: super::model::Enqueued) -> pb::EnqueueResponse {
    pb::EnqueueResponse {
        job_id: e.id,
        duplicate: e.duplicate,
        run_at: Some(to_timestamp(e.run_at)),
    }
}

/// A stored priority (the ready stream's index) as the proto's enum.
fn priority(p: u8) -> i32 {
    match p {
        0 => pb::JobPriority::High as i32,
        1 => pb::JobPriority::Normal as i32,
        _ => pb::JobPriority::Low as i32,
    }
}

#[tonic::async_trait]
impl QueueService for QueueApi {
    async fn enqueue(
        &self,
        request: Request<pb::EnqueueRequest>,
    ) -> Result<Response<pb::EnqueueResponse>, Status> {
        let (tenant, r) = tenant_and(request)?;
        let spec = spec("", r.payload, r.options)?;
        let mut out = self
            .queues
            .enqueue(&tenant, &r.queue, vec![spec], false)
            .await?;
        let one = out
            .pop()
            .ok_or_else(|| Status::internal("internal error"))?;
        Ok(Response::new(enqueued(one)))
    }

    async fn enqueue_many(
        &self,
        request: Request<pb::EnqueueManyRequest>,
    ) -> Result<Response<pb::EnqueueManyResponse>, Status> {
        let (tenant, r) = tenant_and(request)?;
        let specs = r
            .jobs
            .into_iter()
            .enumerate()
            .map(|(i, j)| spec(&format!("jobs[{i}]."), j.payload, j.options))
            .collect::<Result<Vec<_>, _>>()?;
        let out = self.queues.enqueue(&tenant, &r.queue, specs, true).await?;
        Ok(Response::new(pb::EnqueueManyResponse {
            jobs: out.into_iter().map(enqueued).collect(),
        }))
    }

    async fn fetch(
        &self,
        request: Request<pb::FetchRequest>,
    ) -> Result<Response<pb::FetchResponse>, Status> {
        let (tenant, r) = tenant_and(request)?;
        let wait = duration("wait", r.wait.as_ref())?.unwrap_or_default();
        let jobs = self.queues.fetch(&tenant, &r.queues, r.max, wait).await?;
        Ok(Response::new(pb::FetchResponse {
            jobs: jobs
                .into_iter()
                .map(|l| pb::Job {
                    queue: l.queue,
                    id: l.job.id,
                    payload: l.job.payload,
                    lease_token: l.token,
                    attempt: l.job.attempt,
                    max_attempts: l.job.max_attempts,
                    enqueued_at: Some(to_timestamp(l.job.enqueued_at)),
                    lease_expires_at: Some(to_timestamp(l.job.lease_expires_at)),
                    last_error: l.job.last_error,
                    priority: priority(l.job.priority),
                    waited: Some(to_duration(
                        i64::try_from(l.job.waited_ms).unwrap_or(i64::MAX),
                    )),
                    timeout: Some(to_duration(
                        i64::try_from(l.job.timeout_ms).unwrap_or(i64::MAX),
                    )),
                })
                .collect(),
        }))
    }

    async fn ack(
        &self,
        request: Request<pb::AckRequest>,
    ) -> Result<Response<pb::AckResponse>, Status> {
        let (tenant, r) = tenant_and(request)?;
        self.queues
            .ack(&tenant, &r.queue, &r.job_id, &r.lease_token)
            .await?;
        Ok(Response::new(pb::AckResponse {}))
    }

    async fn fail(
        &self,
        request: Request<pb::FailRequest>,
    ) -> Result<Response<pb::FailResponse>, Status> {
        let (tenant, r) = tenant_and(request)?;
        let retry_after = duration("retry_after", r.retry_after.as_ref())?;
        let outcome = self
            .queues
            .fail(
                &tenant,
                &r.queue,
                &r.job_id,
                &r.lease_token,
                &r.error,
                retry_after,
            )
            .await?;
        Ok(Response::new(match outcome {
            Failed::Dead => pb::FailResponse {
                dead: true,
                retry_at: None,
            },
            Failed::Retry { at } => pb::FailResponse {
                dead: false,
                retry_at: Some(to_timestamp(at)),
            },
        }))
    }

    async fn extend(
        &self,
        request: Request<pb::ExtendJobRequest>,
    ) -> Result<Response<pb::ExtendJobResponse>, Status> {
        let (tenant, r) = tenant_and(request)?;
        let timeout = duration_or_default("timeout", r.timeout.as_ref())?;
        let at = self
            .queues
            .extend(&tenant, &r.queue, &r.job_id, &r.lease_token, timeout)
            .await?;
        Ok(Response::new(pb::ExtendJobResponse {
            lease_expires_at: Some(to_timestamp(at)),
        }))
    }

    async fn give_back(
        &self,
        request: Request<pb::GiveBackRequest>,
    ) -> Result<Response<pb::GiveBackResponse>, Status> {
        let (tenant, r) = tenant_and(request)?;
        self.queues
            .give_back(&tenant, &r.queue, &r.job_id, &r.lease_token)
            .await?;
        Ok(Response::new(pb::GiveBackResponse {}))
    }

    async fn list_dead(
        &self,
        request: Request<pb::ListDeadRequest>,
    ) -> Result<Response<pb::ListDeadResponse>, Status> {
        let (tenant, r) = tenant_and(request)?;
        let jobs = self.queues.list_dead(&tenant, &r.queue, r.limit).await?;
        Ok(Response::new(pb::ListDeadResponse {
            jobs: jobs
                .into_iter()
                .map(|d| pb::DeadJob {
                    id: d.id,
                    payload: d.payload,
                    attempts: d.attempts,
                    last_error: d.last_error,
                    died_at: Some(to_timestamp(d.died_at)),
                    enqueued_at: Some(to_timestamp(d.enqueued_at)),
                })
                .collect(),
        }))
    }

    async fn retry(
        &self,
        request: Request<pb::RetryDeadRequest>,
    ) -> Result<Response<pb::RetryDeadResponse>, Status> {
        let (tenant, r) = tenant_and(request)?;
        let retried = self
            .queues
            .retry_dead(&tenant, &r.queue, &r.job_ids, r.all)
            .await?;
        Ok(Response::new(pb::RetryDeadResponse { retried }))
    }

    async fn discard(
        &self,
        request: Request<pb::DiscardDeadRequest>,
    ) -> Result<Response<pb::DiscardDeadResponse>, Status> {
        let (tenant, r) = tenant_and(request)?;
        let discarded = self
            .queues
            .discard_dead(&tenant, &r.queue, &r.job_ids, r.all)
            .await?;
        Ok(Response::new(pb::DiscardDeadResponse { discarded }))
    }

    async fn stats(
        &self,
        request: Request<pb::QueueStatsRequest>,
    ) -> Result<Response<pb::QueueStatsResponse>, Status> {
        let (tenant, r) = tenant_and(request)?;
        let s = self.queues.stats(&tenant, &r.queue).await?;
        Ok(Response::new(pb::QueueStatsResponse {
            ready: s.ready,
            scheduled: s.scheduled,
            in_flight: s.in_flight,
            dead: s.dead,
            oldest_ready_age: Some(to_duration(
                i64::try_from(s.oldest_ready_ms).unwrap_or(i64::MAX),
            )),
            paused: s.paused,
        }))
    }

    async fn pause(
        &self,
        request: Request<pb::PauseQueueRequest>,
    ) -> Result<Response<pb::PauseQueueResponse>, Status> {
        let (tenant, r) = tenant_and(request)?;
        self.queues.set_paused(&tenant, &r.queue, true).await?;
        Ok(Response::new(pb::PauseQueueResponse {}))
    }

    async fn resume(
        &self,
        request: Request<pb::ResumeQueueRequest>,
    ) -> Result<Response<pb::ResumeQueueResponse>, Status> {
        let (tenant, r) = tenant_and(request)?;
        self.queues.set_paused(&tenant, &r.queue, false).await?;
        Ok(Response::new(pb::ResumeQueueResponse {}))
    }
}
