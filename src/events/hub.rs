//! Fan-out inside a replica: one reader (a *feed*) per topic with local subscribers reads the
//! topic's new events from the store and hands each to every local subscriber of it, so 1,000
//! subscribers of a topic cost one read per new batch, not 1,000 (and no connection each: a
//! read is a script call on the shared pool, woken by the topic's [`Signal`]).
//!
//! A feed starts with its first subscriber (at the topic's head) and ends with its last. Each
//! subscriber has a bounded buffer; a feed never waits for one: a subscriber whose buffer is
//! full is dropped from the feed and told so (it then ends its stream with the position to
//! resume from). A store failure ends every subscriber of the feed (UNAVAILABLE: they resume
//! from their last positions once the store is back).
//!
//! Staleness: a feed is woken by each publish (Pub/Sub, any replica); while the signal
//! connection is down it reads every `events.poll_interval`, and it also reads every
//! [`SAFETY_POLL`] when nothing woke it.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use parking_lot::Mutex;
use tokio::sync::{Notify, mpsc, watch};

use super::{
    config::EventsConfig,
    model::{Batch, EventId, TopicEvent},
    store::EventStore,
};
use crate::{
    store::{StoreError, signal::Signal},
    tenant::Tenant,
};

/// Most events read per store call: a quarter of `events.subscriber_buffer` when that is
/// smaller, so one batch never fills a subscriber that keeps up.
pub const BATCH: usize = 256;
/// A feed reads at least this often even when no signal woke it.
pub const SAFETY_POLL: Duration = Duration::from_secs(5);

/// What a feed hands a subscriber.
#[derive(Debug, Clone)]
pub enum FeedItem {
    /// The next event of the topic.
    Event(Arc<TopicEvent>),
    /// Events of `topic` were trimmed before the feed could read them; the feed goes on from
    /// `first` (the oldest kept, if any).
    Gap {
        /// The topic.
        topic: Arc<str>,
        /// The last position the feed had read.
        after: EventId,
        /// The oldest event kept.
        first: Option<EventId>,
    },
}

/// What a subscriber and its feeds share: how the feeds tell it to stop.
#[derive(Default)]
pub struct Shared {
    overflow: AtomicBool,
    failure: Mutex<Option<StoreError>>,
    notify: Notify,
}

impl Shared {
    /// A feed found the subscriber's buffer full.
    pub fn overflowed(&self) -> bool {
        self.overflow.load(Ordering::Acquire)
    }

    /// A feed failed to read the store.
    pub fn failure(&self) -> Option<StoreError> {
        self.failure.lock().clone()
    }

    /// Completes when a feed flagged something (at once if it did since the last call).
    pub async fn flagged(&self) {
        self.notify.notified().await;
    }

    fn overflow(&self) {
        self.overflow.store(true, Ordering::Release);
        self.notify.notify_one();
    }

    fn fail(&self, e: StoreError) {
        *self.failure.lock() = Some(e);
        self.notify.notify_one();
    }
}

/// A subscriber as a feed sees it.
#[derive(Clone)]
pub struct Member {
    /// The subscriber's bounded buffer.
    pub tx: mpsc::Sender<FeedItem>,
    /// Its flags.
    pub shared: Arc<Shared>,
}

struct FeedState {
    position: EventId,
    members: Vec<(u64, Member)>,
    next_member: u64,
    closed: bool,
    /// Whether the feed has read the topic's head (members that joined before then start at
    /// `head`; later ones at `position`, as it was when they joined).
    started: bool,
    head: EventId,
    /// Why the feed could not start (the store could not be read).
    start_failure: Option<StoreError>,
}

struct Feed {
    tenant: Tenant,
    topic: Arc<str>,
    state: Mutex<FeedState>,
    /// False until the feed has its position (or failed to get it).
    started: watch::Sender<bool>,
    /// Woken when a member leaves (the feed may have none left).
    wake: Notify,
}

/// Leaves a feed when dropped.
pub struct Membership {
    feed: Arc<Feed>,
    id: u64,
}

impl Drop for Membership {
    fn drop(&mut self) {
        let empty = {
            let mut state = self.feed.state.lock();
            state.members.retain(|(id, _)| *id != self.id);
            state.members.is_empty()
        };
        if empty {
            self.feed.wake.notify_one();
        }
    }
}

type FeedKey = (Tenant, Arc<str>);

/// Every feed of this replica.
pub struct Hub {
    store: Arc<dyn EventStore>,
    config: Arc<EventsConfig>,
    feeds: Mutex<HashMap<FeedKey, Arc<Feed>>>,
}

impl Hub {
    /// A hub reading from `store`.
    pub fn new(store: Arc<dyn EventStore>, config: Arc<EventsConfig>) -> Arc<Self> {
        Arc::new(Self {
            store,
            config,
            feeds: Mutex::default(),
        })
    }

    /// Feeds running now.
    pub fn feeds(&self) -> usize {
        self.feeds.lock().len()
    }

    /// Adds `member` to the feed of `topic` (starting it if needed). Returns the feed's
    /// position: every event after it will reach the member (or the member is told it could
    /// not), none before.
    pub async fn join(
        self: &Arc<Self>,
        tenant: &Tenant,
        topic: &str,
        member: Member,
    ) -> Result<(EventId, Membership), StoreError> {
        let key: FeedKey = (tenant.clone(), Arc::from(topic));
        // Registered under the hub's lock, so a feed found here cannot end before it counts
        // this member (it ends only when it has none, checked under the same lock).
        let (feed, id, started, position) = {
            let mut feeds = self.feeds.lock();
            let feed = feeds
                .entry(key.clone())
                .or_insert_with(|| {
                    let feed = Arc::new(Feed {
                        tenant: key.0.clone(),
                        topic: key.1.clone(),
                        state: Mutex::new(FeedState {
                            position: EventId::ZERO,
                            members: Vec::new(),
                            next_member: 0,
                            closed: false,
                            started: false,
                            head: EventId::ZERO,
                            start_failure: None,
                        }),
                        started: watch::channel(false).0,
                        wake: Notify::new(),
                    });
                    tokio::spawn(self.clone().run(feed.clone()));
                    feed
                })
                .clone();
            let mut state = feed.state.lock();
            let id = state.next_member;
            state.next_member += 1;
            state.members.push((id, member));
            let (started, position) = (state.started, state.position);
            drop(state);
            (feed, id, started, position)
        };
        let membership = Membership {
            feed: feed.clone(),
            id,
        };
        if started {
            return Ok((position, membership));
        }
        // Joined before the feed read the head: it gets every event after the head.
        let _ = feed.started.subscribe().wait_for(|s| *s).await;
        let state = feed.state.lock();
        match &state.start_failure {
            Some(e) => Err(e.clone()),
            None => Ok((state.head, membership)),
        }
    }

    /// Removes `feed` from the hub and ends its members (with `failure`, if any).
    fn end(&self, feed: &Arc<Feed>, failure: Option<StoreError>) {
        {
            let mut feeds = self.feeds.lock();
            let key: FeedKey = (feed.tenant.clone(), feed.topic.clone());
            if feeds.get(&key).is_some_and(|f| Arc::ptr_eq(f, feed)) {
                feeds.remove(&key);
            }
        }
        let members = {
            let mut state = feed.state.lock();
            state.closed = true;
            std::mem::take(&mut state.members)
        };
        if let Some(e) = &failure {
            for (_, m) in &members {
                m.shared.fail(e.clone());
            }
        }
        feed.started.send_replace(true);
    }

    /// Ends `feed` if it has no members; whether it did.
    fn close_if_idle(&self, feed: &Arc<Feed>) -> bool {
        let mut feeds = self.feeds.lock();
        let mut state = feed.state.lock();
        if !state.members.is_empty() {
            return false;
        }
        state.closed = true;
        let key: FeedKey = (feed.tenant.clone(), feed.topic.clone());
        if feeds.get(&key).is_some_and(|f| Arc::ptr_eq(f, feed)) {
            feeds.remove(&key);
        }
        true
    }

    /// A feed's reader: from the topic's head, every batch to every member, until none is
    /// left or the store fails.
    async fn run(self: Arc<Self>, feed: Arc<Feed>) {
        let (tenant, topic) = (feed.tenant.clone(), feed.topic.clone());
        let retention = self.config.retention(&topic);
        let batch_size = (self.config.subscriber_buffer.get() / 4).clamp(1, BATCH);
        // Subscribed before the head is read, so nothing published after it is missed.
        let mut signal: Signal = self.store.signal(&tenant, &topic).await;
        let head = match self.store.head(&tenant, &topic).await {
            Ok(head) => head,
            Err(e) => {
                feed.state.lock().start_failure = Some(e.clone());
                self.end(&feed, Some(e));
                return;
            }
        };
        {
            let mut state = feed.state.lock();
            state.position = head;
            state.head = head;
            state.started = true;
        }
        feed.started.send_replace(true);
        metrics::gauge!("flowstate_events_feeds").increment(1.0);
        let touch_every =
            Duration::from_millis(retention.max_age_ms / 4).max(Duration::from_secs(1));
        let mut touched = Instant::now();
        loop {
            if self.close_if_idle(&feed) {
                break;
            }
            let after = feed.state.lock().position;
            match self.store.read(&tenant, &topic, after, batch_size).await {
                Ok(batch) => {
                    let full = batch.events.len() == batch_size;
                    fan_out(&feed, batch);
                    if full {
                        continue;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "an event feed could not read its topic; its subscribers are told to resume");
                    self.end(&feed, Some(e));
                    break;
                }
            }
            if touched.elapsed() >= touch_every {
                touched = Instant::now();
                if let Err(e) = self.store.touch(&tenant, &topic, retention).await {
                    tracing::debug!(error = %e, "keeping a topic alive failed; next time");
                }
            }
            let nap = if signal.is_live() {
                SAFETY_POLL
            } else {
                self.config.poll_interval.get()
            };
            tokio::select! {
                () = signal.changed() => {}
                () = feed.wake.notified() => {}
                () = tokio::time::sleep(nap) => {}
            }
        }
        metrics::gauge!("flowstate_events_feeds").decrement(1.0);
    }
}

/// Hands `batch` to every member of `feed`, dropping members whose buffer is full.
fn fan_out(feed: &Feed, batch: Batch) {
    let mut state = feed.state.lock();
    let state = &mut *state;
    if batch.gap {
        let item = FeedItem::Gap {
            topic: feed.topic.clone(),
            after: state.position,
            first: batch.first,
        };
        offer(&mut state.members, &item);
        // Past the gap: from just before the oldest kept event, or the last id given out.
        state.position = state
            .position
            .max(batch.first.map_or(batch.last, EventId::before));
    }
    let mut delivered = 0u64;
    for event in batch.events {
        if event.id <= state.position {
            continue;
        }
        state.position = event.id;
        let item = FeedItem::Event(Arc::new(TopicEvent {
            topic: feed.topic.clone(),
            event,
        }));
        offer(&mut state.members, &item);
        delivered += state.members.len() as u64;
    }
    metrics::counter!("flowstate_events_delivered_total").increment(delivered);
}

fn offer(members: &mut Vec<(u64, Member)>, item: &FeedItem) {
    members.retain(|(_, m)| match m.tx.try_send(item.clone()) {
        Ok(()) => true,
        Err(mpsc::error::TrySendError::Full(_)) => {
            metrics::counter!("flowstate_events_slow_subscribers_total").increment(1);
            m.shared.overflow();
            false
        }
        Err(mpsc::error::TrySendError::Closed(_)) => false,
    });
}
