//! The event domain: validation, retention, flowstate's own topics, and each subscription's
//! task (catch-up from `after`, then the live feed).
//!
//! # A subscription
//! 1. It joins the feed of each topic ([`Hub::join`]), which gives the feed's position `P`:
//!    every later event reaches the subscription's buffer.
//! 2. It sends `Subscribed` with each topic's starting position: `after` if given, else `P`
//!    (LATEST) or `0-0` (EARLIEST).
//! 3. For a topic that starts before `P`, it reads the missed events from the store, up to
//!    `P`, in order (a gap there is reported, or fails the call).
//! 4. Then it relays the feeds' events, skipping any at or before what it already sent.
//!
//! So per topic, events arrive once each, in order, with none skipped; across topics there is
//! no order. The stream ends with RESOURCE_EXHAUSTED when the subscriber fell
//! `events.subscriber_buffer` behind, UNAVAILABLE when the store failed, OUT_OF_RANGE on a gap
//! not accepted; each says, per topic, the last id sent (where to resume).

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use bytes::Bytes;
use tokio::sync::mpsc;

use super::{
    config::EventsConfig,
    hub::{FeedItem, Hub, Member, Shared},
    model::{EventId, TopicEvent},
    store::EventStore,
};
use crate::{error::Error, store::StoreError, tenant::Tenant};

/// Topics whose names start with this are flowstate's own (subscribe only).
pub const RESERVED_PREFIX: &str = "flowstate.";
/// Sessions revoked: deleted, rotated, logged out everywhere.
pub const SESSIONS_TOPIC: &str = "flowstate.sessions";
/// Cache namespaces and tags invalidated.
pub const CACHE_TOPIC: &str = "flowstate.cache";

/// Where a subscription starts on topics without a position in `after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Start {
    /// Only events published after it starts.
    #[default]
    Latest,
    /// Everything kept.
    Earliest,
}

/// A Subscribe request.
#[derive(Debug, Clone, Default)]
pub struct SubscribeArgs {
    /// The topics.
    pub topics: Vec<String>,
    /// Per topic, the last id seen.
    pub after: HashMap<String, String>,
    /// Where topics without a position start.
    pub start: Start,
    /// Report gaps in the stream instead of failing.
    pub accept_gaps: bool,
}

/// What a subscription sends.
#[derive(Debug, Clone)]
pub enum Delivery {
    /// First: live, starting after these positions.
    Subscribed(BTreeMap<String, EventId>),
    /// An event.
    Event(Arc<TopicEvent>),
    /// Events of `topic` after `after` are gone; what follows starts at `first`.
    Gap {
        /// The topic.
        topic: String,
        /// The last position sent (or asked for).
        after: EventId,
        /// The oldest event kept.
        first: Option<EventId>,
    },
}

/// Why a subscription ended. `positions` is, per topic, the last id sent: where to resume.
#[derive(Debug, Clone)]
pub enum Ended {
    /// The subscriber fell too far behind.
    Slow {
        /// Where to resume.
        positions: BTreeMap<String, EventId>,
    },
    /// The store failed.
    Unavailable {
        /// The failure (logged, not sent).
        error: StoreError,
        /// Where to resume.
        positions: BTreeMap<String, EventId>,
    },
    /// A position older than its topic's history, gaps not accepted.
    Expired {
        /// The topic.
        topic: String,
        /// The position.
        after: EventId,
        /// Where the topic's history starts now.
        first: Option<EventId>,
    },
}

/// A subscription's output, bounded (the gRPC stream drains it as the client reads).
pub type Deliveries = mpsc::Receiver<Result<Delivery, Ended>>;

/// Topics for every tenant.
#[derive(Clone)]
pub struct Events {
    store: Arc<dyn EventStore>,
    config: Arc<EventsConfig>,
    hub: Arc<Hub>,
}

impl Events {
    /// Events over `store`, configured by `config`.
    pub fn new(store: Arc<dyn EventStore>, config: EventsConfig) -> Self {
        let config = Arc::new(config);
        Self {
            hub: Hub::new(store.clone(), config.clone()),
            store,
            config,
        }
    }

    /// Feeds running on this replica.
    pub fn feeds(&self) -> usize {
        self.hub.feeds()
    }

    fn check_topic(&self, field: &str, topic: &str) -> Result<(), Error> {
        if topic.is_empty() || topic.len() > self.config.max_topic_bytes.get() {
            return Err(Error::invalid(
                field,
                format!("1 to {} bytes", self.config.max_topic_bytes),
            ));
        }
        if !topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'/' | b'-'))
        {
            return Err(Error::invalid(field, "only A-Z a-z 0-9 _ . : / -"));
        }
        Ok(())
    }

    /// Appends an event to `topic`; its id.
    pub async fn publish(
        &self,
        tenant: &Tenant,
        topic: &str,
        payload: Bytes,
        key: &str,
    ) -> Result<EventId, Error> {
        self.check_topic("topic", topic)?;
        if topic.starts_with(RESERVED_PREFIX) {
            return Err(Error::invalid(
                "topic",
                "topics starting with `flowstate.` are flowstate's own (subscribe only)",
            ));
        }
        if payload.len() > self.config.max_payload_bytes.get() {
            return Err(Error::invalid(
                "payload",
                format!(
                    "at most events.max_payload_bytes ({})",
                    self.config.max_payload_bytes
                ),
            ));
        }
        if key.len() > self.config.max_key_bytes.get() {
            return Err(Error::invalid(
                "key",
                format!(
                    "at most events.max_key_bytes ({})",
                    self.config.max_key_bytes
                ),
            ));
        }
        let id = self
            .store
            .publish(tenant, topic, self.config.retention(topic), payload, key)
            .await?;
        metrics::counter!("flowstate_events_published_total", "kind" => "api").increment(1);
        Ok(id)
    }

    /// Publishes one of flowstate's own events (`topic` is one of the reserved ones). A
    /// failure is logged and counted, not returned: the change it reports has happened.
    pub async fn publish_own(&self, tenant: &Tenant, topic: &'static str, payload: String) {
        let published = self
            .store
            .publish(
                tenant,
                topic,
                self.config.retention(topic),
                Bytes::from(payload),
                "",
            )
            .await;
        match published {
            Ok(_) => {
                metrics::counter!("flowstate_events_published_total", "kind" => "own").increment(1);
            }
            Err(e) => {
                metrics::counter!("flowstate_events_own_failures_total").increment(1);
                tracing::warn!(error = %e, topic, "could not publish flowstate's own event");
            }
        }
    }

    /// Starts a subscription (see the module docs).
    pub async fn subscribe(
        &self,
        tenant: &Tenant,
        req: SubscribeArgs,
    ) -> Result<Deliveries, Error> {
        if req.topics.is_empty() || req.topics.len() > self.config.max_topics_per_subscribe.get() {
            return Err(Error::invalid(
                "topics",
                format!(
                    "1 to events.max_topics_per_subscribe ({}) topics",
                    self.config.max_topics_per_subscribe
                ),
            ));
        }
        let mut topics: Vec<String> = Vec::with_capacity(req.topics.len());
        for (i, t) in req.topics.iter().enumerate() {
            self.check_topic(&format!("topics[{i}]"), t)?;
            if !topics.contains(t) {
                topics.push(t.clone());
            }
        }
        let mut after = HashMap::with_capacity(req.after.len());
        for (topic, id) in &req.after {
            if !topics.contains(topic) {
                return Err(Error::invalid(
                    format!("after[{topic:?}]"),
                    "a position for a topic not in `topics`",
                ));
            }
            let id: EventId = id.parse().map_err(|()| {
                Error::invalid(format!("after[{topic:?}]"), "an event id, `<ms>-<seq>`")
            })?;
            after.insert(topic.clone(), id);
        }
        let (live_tx, live_rx) = mpsc::channel(self.config.subscriber_buffer.get());
        let shared = Arc::new(Shared::default());
        let mut heads = Vec::with_capacity(topics.len());
        let mut memberships = Vec::with_capacity(topics.len());
        for topic in &topics {
            let member = Member {
                tx: live_tx.clone(),
                shared: shared.clone(),
            };
            let (head, membership) = self.hub.join(tenant, topic, member).await?;
            heads.push(head);
            memberships.push(membership);
        }
        drop(live_tx);
        let (out, deliveries) = mpsc::channel(64);
        let task = Subscription {
            store: self.store.clone(),
            tenant: tenant.clone(),
            topics,
            heads,
            after,
            start: req.start,
            accept_gaps: req.accept_gaps,
            live: live_rx,
            shared,
            out,
        };
        metrics::gauge!("flowstate_events_subscribers").increment(1.0);
        tokio::spawn(async move {
            let _memberships = memberships;
            task.run().await;
            metrics::gauge!("flowstate_events_subscribers").decrement(1.0);
        });
        Ok(deliveries)
    }
}

struct Subscription {
    store: Arc<dyn EventStore>,
    tenant: Tenant,
    topics: Vec<String>,
    heads: Vec<EventId>,
    after: HashMap<String, EventId>,
    start: Start,
    accept_gaps: bool,
    live: mpsc::Receiver<FeedItem>,
    shared: Arc<Shared>,
    out: mpsc::Sender<Result<Delivery, Ended>>,
}

/// The client went away: nothing more to send.
struct Gone;

impl Subscription {
    async fn send(&self, d: Result<Delivery, Ended>) -> Result<(), Gone> {
        self.out.send(d).await.map_err(|_| Gone)
    }

    async fn run(mut self) {
        let mut positions: BTreeMap<String, EventId> = BTreeMap::new();
        for (topic, head) in self.topics.iter().zip(&self.heads) {
            let start = match (self.after.get(topic), self.start) {
                (Some(a), _) => *a,
                (None, Start::Latest) => *head,
                (None, Start::Earliest) => EventId::ZERO,
            };
            positions.insert(topic.clone(), start);
        }
        if self
            .send(Ok(Delivery::Subscribed(positions.clone())))
            .await
            .is_err()
        {
            return;
        }
        // Catch up on each topic that starts before its feed.
        for (i, topic) in self.topics.clone().iter().enumerate() {
            let head = self.heads[i];
            match self.catch_up(topic, head, &mut positions).await {
                Ok(true) => {}
                Ok(false) | Err(Gone) => return,
            }
        }
        let _ = self.relay(positions).await;
    }

    /// Sends `topic`'s events after its position up to `head`; false when the subscription
    /// ended (a gap not accepted, the store failed).
    async fn catch_up(
        &self,
        topic: &str,
        head: EventId,
        positions: &mut BTreeMap<String, EventId>,
    ) -> Result<bool, Gone> {
        let mut cursor = positions.get(topic).copied().unwrap_or(head);
        let asked = cursor;
        // A given position is always checked against the topic's history, even one at or past
        // its head (a topic that was forgotten and made anew, or holds nothing now).
        let mut check = self.after.contains_key(topic);
        while check || cursor < head {
            check = false;
            let batch = match self
                .store
                .read(&self.tenant, topic, cursor, super::hub::BATCH)
                .await
            {
                Ok(b) => b,
                Err(error) => {
                    self.send(Err(Ended::Unavailable {
                        error,
                        positions: positions.clone(),
                    }))
                    .await?;
                    return Ok(false);
                }
            };
            if batch.gap && cursor == asked {
                if !self.accept_gaps {
                    self.send(Err(Ended::Expired {
                        topic: topic.to_owned(),
                        after: asked,
                        first: batch.first,
                    }))
                    .await?;
                    return Ok(false);
                }
                self.send(Ok(Delivery::Gap {
                    topic: topic.to_owned(),
                    after: asked,
                    first: batch.first,
                }))
                .await?;
            }
            let read = batch.events.len();
            for event in batch.events {
                if event.id > head {
                    break;
                }
                cursor = event.id;
                positions.insert(topic.to_owned(), cursor);
                let event = Arc::new(TopicEvent {
                    topic: Arc::from(topic),
                    event,
                });
                self.send(Ok(Delivery::Event(event))).await?;
            }
            if read < super::hub::BATCH {
                break;
            }
        }
        // Whatever the feed sends from here on is after `head`.
        let at = positions.entry(topic.to_owned()).or_insert(head);
        *at = (*at).max(cursor);
        Ok(true)
    }

    /// Relays the feeds' items until the client goes, or a feed ends the subscription.
    async fn relay(&mut self, mut positions: BTreeMap<String, EventId>) -> Result<(), Gone> {
        loop {
            if self.shared.overflowed() {
                return self.send(Err(Ended::Slow { positions })).await;
            }
            if let Some(error) = self.shared.failure() {
                return self
                    .send(Err(Ended::Unavailable { error, positions }))
                    .await;
            }
            let item = tokio::select! {
                item = self.live.recv() => item,
                () = self.shared.flagged() => continue,
                () = self.out.closed() => return Err(Gone),
            };
            match item {
                Some(FeedItem::Event(e)) => {
                    let last = positions.entry(e.topic.to_string()).or_default();
                    if e.event.id <= *last {
                        continue;
                    }
                    *last = e.event.id;
                    self.send(Ok(Delivery::Event(e))).await?;
                }
                Some(FeedItem::Gap {
                    topic,
                    after,
                    first,
                }) => {
                    let after = positions.get(&*topic).copied().unwrap_or(after);
                    if !self.accept_gaps {
                        return self
                            .send(Err(Ended::Expired {
                                topic: topic.to_string(),
                                after,
                                first,
                            }))
                            .await;
                    }
                    if let Some(f) = first {
                        positions.insert(topic.to_string(), f.before().max(after));
                    }
                    self.send(Ok(Delivery::Gap {
                        topic: topic.to_string(),
                        after,
                        first,
                    }))
                    .await?;
                }
                None => {
                    // Every feed dropped this subscriber: one of the flags says why.
                    if !self.shared.overflowed() && self.shared.failure().is_none() {
                        return self
                            .send(Err(Ended::Unavailable {
                                error: StoreError::Unavailable("event feeds ended".into()),
                                positions,
                            }))
                            .await;
                    }
                }
            }
        }
    }
}
