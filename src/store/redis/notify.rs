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
//! noticed too.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, OnceLock, PoisonError},
    time::Duration,
};

use futures_util::StreamExt as _;
use redis::{Client, RedisResult, aio::PubSub, sentinel::SentinelClient};
use tokio::sync::{mpsc, oneshot, watch};

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
        let mut channels = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
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
            tokio::spawn(connection(
                self.opener.clone(),
                self.channels.clone(),
                self.live.clone(),
                rx,
                self.connect_timeout,
            ));
            tx
        })
    }

    /// Subscribes to `channel`. Returns once Redis confirmed the subscription (so nothing
    /// published from then on is missed), or at once with a signal that is not live if the
    /// connection is down.
    pub async fn subscribe(&self, channel: &str) -> Signal {
        let commands = self.commands().clone();
        let (fired, mut confirmed, first) = {
            let mut channels = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
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
    let channels = channels.lock().unwrap_or_else(PoisonError::into_inner);
    for entry in channels.values() {
        if let Some(c) = confirmed {
            entry.confirmed.send_replace(c);
        }
        entry.fired.send_modify(|n| *n = n.wrapping_add(1));
    }
}

const PING_EVERY: Duration = Duration::from_secs(1);

/// The connection task: connects, subscribes to every channel wanted, relays messages, and
/// starts again after any failure. Ends when the notifier is dropped.
async fn connection(
    opener: Arc<Opener>,
    channels: Channels,
    live: Arc<watch::Sender<bool>>,
    mut commands: mpsc::UnboundedReceiver<Command>,
    connect_timeout: Duration,
) {
    let mut attempt = 0usize;
    let mut pause = Duration::from_millis(50);
    loop {
        let opened = tokio::time::timeout(connect_timeout, opener.open(attempt)).await;
        attempt = attempt.wrapping_add(1);
        if let Ok(Ok(pubsub)) = opened {
            let (mut sink, mut stream) = pubsub.split();
            let wanted: Vec<String> = channels
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .keys()
                .cloned()
                .collect();
            let subscribed = wanted.is_empty()
                || tokio::time::timeout(connect_timeout, sink.subscribe(&wanted))
                    .await
                    .is_ok_and(|r| r.is_ok());
            if subscribed {
                pause = Duration::from_millis(50);
                live.send_replace(true);
                metrics::gauge!("flowstate_notify_connected").set(1.0);
                fire_all(&channels, Some(true));
                tracing::debug!(channels = wanted.len(), "signal connection up");
                let mut ping = tokio::time::interval(PING_EVERY);
                ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        command = commands.recv() => match command {
                            None => return,
                            Some(Command::Subscribe(name, ack)) => {
                                let done = tokio::time::timeout(connect_timeout, sink.subscribe(&name)).await;
                                if !done.is_ok_and(|r| r.is_ok()) {
                                    let _ = ack.send(());
                                    break;
                                }
                                if let Some(entry) = channels.lock().unwrap_or_else(PoisonError::into_inner).get(&name) {
                                    entry.confirmed.send_replace(true);
                                }
                                let _ = ack.send(());
                            }
                            Some(Command::Unsubscribe(name)) => {
                                // A channel subscribed again meanwhile stays subscribed.
                                let again = channels.lock().unwrap_or_else(PoisonError::into_inner).contains_key(&name);
                                if !again && sink.unsubscribe(&name).await.is_err() {
                                    break;
                                }
                            }
                        },
                        message = stream.next() => match message {
                            None => break,
                            Some(message) => {
                                let channels = channels.lock().unwrap_or_else(PoisonError::into_inner);
                                if let Some(entry) = channels.get(message.get_channel_name()) {
                                    entry.fired.send_modify(|n| *n = n.wrapping_add(1));
                                }
                            }
                        },
                        _ = ping.tick() => {
                            let pong = tokio::time::timeout(connect_timeout, sink.ping::<redis::Value>()).await;
                            if !pong.is_ok_and(|r| r.is_ok()) {
                                break;
                            }
                        }
                    }
                }
                tracing::warn!("signal connection to Redis lost; waiters poll until it is back");
                metrics::counter!("flowstate_notify_disconnects_total").increment(1);
            }
        }
        live.send_replace(false);
        metrics::gauge!("flowstate_notify_connected").set(0.0);
        fire_all(&channels, Some(false));
        // Wait before the next attempt, answering subscriptions at once meanwhile (they start
        // not live and are subscribed when the connection is back).
        let wake = tokio::time::sleep(pause);
        tokio::pin!(wake);
        loop {
            tokio::select! {
                () = &mut wake => break,
                command = commands.recv() => match command {
                    None => return,
                    Some(Command::Subscribe(_, ack)) => { let _ = ack.send(()); }
                    Some(Command::Unsubscribe(_)) => {}
                },
            }
        }
        pause = (pause * 2).min(Duration::from_secs(1));
    }
}
