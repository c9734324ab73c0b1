//! `flowstate.v1.EventService`.

use std::{collections::HashMap, pin::Pin};

use tokio_stream::{Stream, StreamExt as _, wrappers::ReceiverStream};
use tonic::{Code, Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt as _};

use super::{
    Events,
    model::EventId,
    service::{Delivery, Ended, Start, SubscribeArgs},
};
use crate::{
    auth::{MethodPermissions, permission::Permission, tenant_and},
    proto::v1::{self as pb, event_service_server::EventService},
    time::to_timestamp,
};

/// The EventService handlers.
pub struct EventApi {
    events: Events,
}

impl EventApi {
    /// Handlers over `events`; each call acts for its caller's tenant.
    pub fn new(events: Events) -> Self {
        Self { events }
    }
}

/// The permission each method needs (checked by the auth layer before the handler runs).
pub const PERMISSIONS: MethodPermissions = (
    pb::event_service_server::SERVICE_NAME,
    &[
        ("Publish", Permission::EventsPublish),
        ("Subscribe", Permission::EventsSubscribe),
    ],
);

fn positions_text(positions: &std::collections::BTreeMap<String, EventId>) -> String {
    positions
        .iter()
        .map(|(t, id)| format!("{t}={id}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The status a subscription ends with; its details carry where to resume (ErrorInfo
/// metadata: topic → last id sent).
fn ended(e: Ended) -> Status {
    let (code, reason, message, metadata) = match e {
        Ended::Slow { positions } => (
            Code::ResourceExhausted,
            "SUBSCRIBER_TOO_SLOW",
            format!(
                "the subscriber fell events.subscriber_buffer events behind; resume after {}",
                positions_text(&positions)
            ),
            positions,
        ),
        Ended::Unavailable { error, positions } => {
            tracing::warn!(error = %error, "a subscription ended: store failure");
            (
                Code::Unavailable,
                "STORE_UNAVAILABLE",
                format!(
                    "store unavailable; resume after {}",
                    positions_text(&positions)
                ),
                positions,
            )
        }
        Ended::Expired {
            topic,
            after,
            first,
        } => {
            let first = first.map(|f| f.to_string()).unwrap_or_default();
            let message = format!(
                "topic {topic:?}: events after {after} are no longer kept; its history now \
                 starts at {} (subscribe again from there, or with accept_gaps)",
                if first.is_empty() {
                    "nothing (it holds no events)"
                } else {
                    first.as_str()
                }
            );
            let metadata = HashMap::from([
                ("topic".to_owned(), topic),
                ("after".to_owned(), after.to_string()),
                ("first_id".to_owned(), first),
            ]);
            return Status::with_error_details(
                Code::OutOfRange,
                message,
                ErrorDetails::with_error_info("EVENTS_EXPIRED", "flowstate", metadata),
            );
        }
    };
    let metadata: HashMap<String, String> = metadata
        .into_iter()
        .map(|(t, id)| (t, id.to_string()))
        .collect();
    Status::with_error_details(
        code,
        message,
        ErrorDetails::with_error_info(reason, "flowstate", metadata),
    )
}

fn delivery(d: Delivery) -> pb::SubscribeResponse {
    use pb::subscribe_response::Kind;
    pb::SubscribeResponse {
        kind: Some(match d {
            Delivery::Subscribed(positions) => Kind::Subscribed(pb::Subscribed {
                positions: positions
                    .into_iter()
                    .map(|(t, id)| (t, id.to_string()))
                    .collect(),
            }),
            Delivery::Event(e) => Kind::Event(pb::Event {
                topic: e.topic.to_string(),
                id: e.event.id.to_string(),
                payload: e.event.payload.clone(),
                key: e.event.key.clone(),
                published_at: Some(to_timestamp(
                    i64::try_from(e.event.id.ms).unwrap_or(i64::MAX),
                )),
            }),
            Delivery::Gap {
                topic,
                after,
                first,
            } => Kind::Gap(pb::Gap {
                topic,
                after: after.to_string(),
                first_id: first.map(|f| f.to_string()).unwrap_or_default(),
            }),
        }),
    }
}

/// The stream Subscribe answers with.
pub type SubscribeStream =
    Pin<Box<dyn Stream<Item = Result<pb::SubscribeResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl EventService for EventApi {
    async fn publish(
        &self,
        request: Request<pb::PublishRequest>,
    ) -> Result<Response<pb::PublishResponse>, Status> {
        let (tenant, r) = tenant_and(request)?;
        let id = self
            .events
            .publish(&tenant, &r.topic, r.payload, &r.key)
            .await?;
        Ok(Response::new(pb::PublishResponse { id: id.to_string() }))
    }

    type SubscribeStream = SubscribeStream;

    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        // A stream lives until the client goes, or until its own deadline (`grpc-timeout`) if it
        // sent one: then it ends with DEADLINE_EXCEEDED, as gRPC deadlines cover a whole call.
        // (`server.request_timeout` bounds only the start of a stream, not its length.)
        let deadline = crate::middleware::grpc_timeout(&request.metadata().clone().into_headers())
            .map(|t| tokio::time::Instant::now() + t);
        let (tenant, r) = tenant_and(request)?;
        let start = match r.start() {
            pb::subscribe_request::Start::Earliest => Start::Earliest,
            pb::subscribe_request::Start::Latest | pb::subscribe_request::Start::Unspecified => {
                Start::Latest
            }
        };
        let deliveries = self
            .events
            .subscribe(
                &tenant,
                SubscribeArgs {
                    topics: r.topics,
                    after: r.after.into_iter().collect(),
                    start,
                    accept_gaps: r.accept_gaps,
                },
            )
            .await?;
        let stream = ReceiverStream::new(deliveries).map(|d| d.map(delivery).map_err(ended));
        Ok(Response::new(match deadline {
            None => Box::pin(stream),
            Some(at) => {
                let until = futures_util::StreamExt::take_until(
                    stream,
                    Box::pin(tokio::time::sleep_until(at)),
                );
                Box::pin(
                    until.chain(tokio_stream::once(Err(Status::deadline_exceeded(
                        "the call's deadline (grpc-timeout) passed",
                    )))),
                )
            }
        }))
    }
}
