//! [`Signal`]s over Redis Pub/Sub: one subscriber connection per replica carries every signal
//! its tasks wait on (a lock's releases, a topic's new events), however many tasks wait.
//!
//! Scripts that change something others wait for `PUBLISH` on the changed thing's channel (its
//! key) in the same atomic step. Pub/Sub is at-most-once: a message sent while this connection
//! is down is lost. So the connection's state is part of every signal: while it is down every
//! signal reports not live (waiters poll the store instead), and when it is back (every channel
//! subscribed again) every signal fires once, since anything may have happened meanwhile.
//!
//! The connection goes to the server (standalone), to the master the sentinels name
//! (Sentinel), or to any cluster node: a Cluster delivers `PUBLISH` to the subscribers of every
//! node. It is pinged every second, so a server that hangs without closing the connection is
//! noticed too. Opening, the pauses between attempts and the heartbeat are
//! [`super::supervisor`]'s; this file is what the signals do with the connection.

use std::{
    collections::HashMap,
    sync::{Arc, OnceLock},
    time::Duration,
};

use futures_util::StreamExt as _;
use parking_lot::Mutex;
use redis::{
    Client, RedisResult,
    aio::{PubSub, PubSubSink, PubSubStream},
    sentinel::SentinelClient,
};
use tokio::sync::{mpsc, oneshot, watch};

use super::supervisor::{
    AfterLoss, BoxFuture, Flow, Lifeline, Link, Loss, Opened, Pacing, Pinger, Supervision,
    supervise,
};
use crate::store::signal::Signal;

/// How the subscriber connection is opened.
pub enum Opener {
    /// One server.
    Single(Client),
    /// The master the sentinels name now.
    Sentinel(tokio::sync::Mutex<SentinelClient>),
    /// Any node of a cluster, tried in turn.
    Nodes(Vec<Client>),
}

impl Opener {
    /// The client of the one server (standalone) or of the master the sentinels name now;
    /// `None` on a cluster, which has no single server to open a connection to.
    pub async fn server(&self) -> RedisResult<Option<redis::Client>> {
        Ok(match self {
            Opener::Single(client) => Some(client.clone()),
            Opener::Sentinel(sentinel) => Some(sentinel.lock().await.async_get_client().await?),
            Opener::Nodes(_) => None,
        })
    }

    async fn open(&self, attempt: usize) -> RedisResult<PubSub> {
        match self {
            Opener::Single(client) => client.get_async_pubsub().await,
            Opener::Sentinel(sentinel) => {
                let client = sentinel.lock().await.async_get_client().await?;
                client.get_async_pubsub().await
            }
            Opener::Nodes(clients) => match clients.get(attempt % clients.len().max(1)) {
                Some(client) => client.get_async_pubsub().await,
                None => Err(redis::RedisError::from((
                    redis::ErrorKind::Client,
                    "no cluster node to subscribe on",
                ))),
            },
        }
    }
}

enum Command {
    /// Subscribe to a channel; the sender hears when it is (or when it cannot be now).
    Subscribe(String, oneshot::Sender<()>),
    Unsubscribe(String),
}

/// One channel's fan-out to its local subscribers.
struct Entry {
    fired: watch::Sender<u64>,
    subscribers: usize,
    /// Whether Redis confirmed the SUBSCRIBE on the current connection.
    confirmed: watch::Sender<bool>,
}

type Channels = Arc<Mutex<HashMap<String, Entry>>>;

/// Signals over one Pub/Sub connection, opened when the first signal is asked for.
pub struct Notifier {
    opener: Arc<Opener>,
    channels: Channels,
    live: Arc<watch::Sender<bool>>,
    commands: OnceLock<mpsc::UnboundedSender<Command>>,
    connect_timeout: Duration,
}

/// Unsubscribes a signal's channel when its last local subscriber drops it.
struct Guard {
    name: String,
    channels: Channels,
    commands: mpsc::UnboundedSender<Command>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let mut channels = self.channels.lock();
        if let Some(entry) = channels.get_mut(&self.name) {
            entry.subscribers -= 1;
            if entry.subscribers == 0 {
                channels.remove(&self.name);
                let _ = self.commands.send(Command::Unsubscribe(self.name.clone()));
            }
        }
    }
}

impl Notifier {
    /// A notifier that opens its connection with `opener` (within `connect_timeout`).
    pub fn new(opener: Opener, connect_timeout: Duration) -> Self {
        Self {
            opener: Arc::new(opener),
            channels: Arc::default(),
            live: Arc::new(watch::channel(false).0),
            commands: OnceLock::new(),
            connect_timeout,
        }
    }

    /// How this notifier opens connections (shared with other dedicated connections).
    pub fn opener(&self) -> &Opener {
        &self.opener
    }

    fn commands(&self) -> &mpsc::UnboundedSender<Command> {
        self.commands.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            let lifeline = Arc::new(Lifeline::new());
            tokio::spawn(supervise(Supervision {
                lifeline: Arc::downgrade(&lifeline),
                link: Subscriber {
                    opener: self.opener.clone(),
                    channels: self.channels.clone(),
                    live: self.live.clone(),
                    commands: rx,
                    connect_timeout: self.connect_timeout,
                    _lifeline: lifeline,
                },
                pacing: Pacing {
                    first_pause: Duration::from_millis(50),
                    max_pause: Duration::from_secs(1),
                    heartbeat: PING_EVERY,
                    ping_timeout: Some(self.connect_timeout),
                    // A loss pauses as a failed open does: the server just went away.
                    after_loss: AfterLoss::Backoff,
                },
            }));
            tx
        })
    }

    /// Subscribes to `channel`. Returns once Redis confirmed the subscription (so nothing
    /// published from then on is missed), or at once with a signal that is not live if the
    /// connection is down.
    pub async fn subscribe(&self, channel: &str) -> Signal {
        let commands = self.commands().clone();
        let (fired, mut confirmed, first) = {
            let mut channels = self.channels.lock();
            let entry = channels.entry(channel.to_owned()).or_insert_with(|| Entry {
                fired: watch::channel(0).0,
                subscribers: 0,
                confirmed: watch::channel(false).0,
            });
            entry.subscribers += 1;
            (
                entry.fired.subscribe(),
                entry.confirmed.subscribe(),
                entry.subscribers == 1,
            )
        };
        let live = self.live.subscribe();
        if first {
            let (ack, acked) = oneshot::channel();
            if commands
                .send(Command::Subscribe(channel.to_owned(), ack))
                .is_ok()
            {
                let _ = tokio::time::timeout(self.connect_timeout, acked).await;
            }
        } else if *live.borrow() {
            // Someone else's SUBSCRIBE may still be on its way: wait for it (briefly).
            let _ = tokio::time::timeout(self.connect_timeout, confirmed.wait_for(|c| *c)).await;
        }
        let guard = Guard {
            name: channel.to_owned(),
            channels: self.channels.clone(),
            commands,
        };
        Signal::new(fired, live, Some(Box::new(guard)))
    }

    /// Whether the subscriber connection is up now.
    pub fn is_live(&self) -> bool {
        *self.live.borrow()
    }
}

/// Fires every channel (after a reconnect or a disconnect: anything may have been missed).
fn fire_all(channels: &Channels, confirmed: Option<bool>) {
    let channels = channels.lock();
    for entry in channels.values() {
        if let Some(c) = confirmed {
            entry.confirmed.send_replace(c);
        }
        entry.fired.send_modify(|n| *n = n.wrapping_add(1));
    }
}

const PING_EVERY: Duration = Duration::from_secs(1);

/// The subscriber connection's side of its [`supervise`]r: opens and subscribes to every
/// channel wanted, relays messages and subscription changes while up, and answers
/// subscriptions at once while down. Ends when nothing can send it commands any more (the
/// notifier and every signal's guard are dropped).
struct Subscriber {
    opener: Arc<Opener>,
    channels: Channels,
    live: Arc<watch::Sender<bool>>,
    commands: mpsc::UnboundedReceiver<Command>,
    connect_timeout: Duration,
    /// Held here, not by the notifier: this connection lives as long as its commands can come
    /// (a signal may outlive the notifier), which [`Link::serve`] and [`Link::wait`] tell.
    _lifeline: Arc<Lifeline>,
}

/// An open subscriber connection: its two halves, and how many channels it subscribed to.
struct Subscription {
    sink: PubSubSink,
    stream: PubSubStream,
    channels: usize,
}

impl Subscriber {
    /// The connection is down: every signal reports not live (its waiters poll), and fires
    /// (anything may have happened since it last did).
    fn mark_down(&self) {
        self.live.send_replace(false);
        metrics::gauge!("flowstate_notify_connected").set(0.0);
        fire_all(&self.channels, Some(false));
    }
}

impl Link for Subscriber {
    type Conn = Subscription;

    /// Connects, then subscribes to every channel wanted; either failing is a failed open.
    fn open(&mut self, id: u64) -> BoxFuture<'_, Opened<Subscription>> {
        Box::pin(async move {
            // Connections are numbered from 1; cluster nodes are tried in turn from the first.
            let attempt = usize::try_from(id.saturating_sub(1)).unwrap_or(usize::MAX);
            let opened =
                tokio::time::timeout(self.connect_timeout, self.opener.open(attempt)).await;
            if let Ok(Ok(pubsub)) = opened {
                let (mut sink, stream) = pubsub.split();
                let wanted: Vec<String> = self.channels.lock().keys().cloned().collect();
                let subscribed = wanted.is_empty()
                    || tokio::time::timeout(self.connect_timeout, sink.subscribe(&wanted))
                        .await
                        .is_ok_and(|r| r.is_ok());
                if subscribed {
                    return Opened::Up {
                        pinger: Pinger::PubSub(sink.clone()),
                        conn: Subscription {
                            sink,
                            stream,
                            channels: wanted.len(),
                        },
                    };
                }
            }
            self.mark_down();
            Opened::Failed
        })
    }

    fn up(&mut self, _: u64, conn: &Subscription) -> bool {
        self.live.send_replace(true);
        metrics::gauge!("flowstate_notify_connected").set(1.0);
        fire_all(&self.channels, Some(true));
        tracing::debug!(channels = conn.channels, "signal connection up");
        true
    }

    /// Relays messages to their channels' signals, and subscribes and unsubscribes as the
    /// signals come and go.
    fn serve<'a>(&'a mut self, conn: &'a mut Subscription) -> BoxFuture<'a, Flow> {
        Box::pin(async move {
            loop {
                tokio::select! {
                    command = self.commands.recv() => match command {
                        None => return Flow::Stop,
                        Some(Command::Subscribe(name, ack)) => {
                            let done =
                                tokio::time::timeout(self.connect_timeout, conn.sink.subscribe(&name))
                                    .await;
                            if !done.is_ok_and(|r| r.is_ok()) {
                                let _ = ack.send(());
                                return Flow::Lost;
                            }
                            if let Some(entry) = self.channels.lock().get(&name) {
                                entry.confirmed.send_replace(true);
                            }
                            let _ = ack.send(());
                        }
                        Some(Command::Unsubscribe(name)) => {
                            // A channel subscribed again meanwhile stays subscribed.
                            let again = self.channels.lock().contains_key(&name);
                            if !again && conn.sink.unsubscribe(&name).await.is_err() {
                                return Flow::Lost;
                            }
                        }
                    },
                    message = conn.stream.next() => match message {
                        None => return Flow::Lost,
                        Some(message) => {
                            let channels = self.channels.lock();
                            if let Some(entry) = channels.get(message.get_channel_name()) {
                                entry.fired.send_modify(|n| *n = n.wrapping_add(1));
                            }
                        }
                    },
                }
            }
        })
    }

    fn down(&mut self, _: u64, _: Loss) {
        tracing::warn!("signal connection to Redis lost; waiters poll until it is back");
        metrics::counter!("flowstate_notify_disconnects_total").increment(1);
        self.mark_down();
    }

    /// Waits before the next attempt, answering subscriptions at once meanwhile (they start
    /// not live and are subscribed when the connection is back).
    fn wait(&mut self, pause: Duration) -> BoxFuture<'_, bool> {
        Box::pin(async move {
            let wake = tokio::time::sleep(pause);
            tokio::pin!(wake);
            loop {
                tokio::select! {
                    () = &mut wake => return true,
                    command = self.commands.recv() => match command {
                        None => return false,
                        Some(Command::Subscribe(_, ack)) => { let _ = ack.send(()); }
                        Some(Command::Unsubscribe(_)) => {}
                    },
                }
            }
        })
    }
}
