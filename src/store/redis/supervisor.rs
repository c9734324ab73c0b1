//! One supervisor for the dedicated connections a replica keeps open beside its pool: the near
//! cache's and the semantic index's RESP3 `CLIENT TRACKING` connections (`cache/near.rs`,
//! `semantic/redis/sync.rs`) and the signals' Pub/Sub connection ([`super::notify`]).
//!
//! Each of them is only useful while it is up: an invalidation push or a Pub/Sub message sent
//! while it is down is lost for good. So each owner must know, at once, when its connection
//! stops being trustworthy (to stop serving near hits, to read change logs over the pool, to let
//! waiters poll), and must start over (flush, reload, fire every signal) once a new one is up.
//! The supervisor does the part they share, in one loop:
//!
//! - **open** a connection ([`Link::open`]), **number** it, and hand it to its owner
//!   ([`Link::up`]). Numbers grow with every attempt, so a loss reported late for an older
//!   connection (its `Disconnection` push arrives after the new one is up) is told apart from a
//!   loss of the current one ([`Lifeline::report_lost`]);
//! - **back off** between failed opens (a pause that doubles up to a bound, and starts again
//!   once a connection is up), and pause as the owner asks after a loss ([`AfterLoss`]);
//! - **heartbeat**: PING the connection every [`Pacing::heartbeat`], so a server that hangs or
//!   vanishes without closing the socket is noticed within that;
//! - **report a loss** to the owner ([`Link::down`]) when it finds one itself (a failed PING, the
//!   owner's session over the connection ending, a loss reported while the connection was being
//!   set up). A loss the owner found and reported itself (a push, a read that broke) only stops
//!   the heartbeat: the owner has acted on it already, synchronously, which is what lets the near
//!   cache stop serving before the next reply on that connection is handled.
//!
//! It ends when the owner is gone: the [`Lifeline`] it holds weakly is dropped, or a hook says so.

use std::{
    sync::{
        Arc, Weak,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use redis::{
    PushInfo, RedisError, RedisResult, Value,
    aio::{MultiplexedConnection, PubSubSink},
};
use tokio::sync::Notify;

use super::RedisBackend;

/// The hooks of [`Link`] return boxed futures (a trait cannot have `async fn`s that are `Send`
/// without naming their futures).
pub use futures_util::future::BoxFuture;

/// The numbering of one owner's connections, and the loss reports the owner sends its
/// supervisor. The owner holds it (strongly), the supervisor weakly: dropping the owner ends the
/// supervisor.
#[derive(Default)]
pub struct Lifeline {
    /// The number of the newest connection, opened or being opened (0: none yet).
    current: AtomicU64,
    /// The newest number known to be lost.
    lost: AtomicU64,
    /// Wakes the heartbeat when the current connection is reported lost.
    wake: Notify,
}

impl Lifeline {
    /// A lifeline before any connection.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether connection `id` is the newest one (what was read over an older one may predate
    /// an invalidation that connection never delivered).
    pub fn is_current(&self, id: u64) -> bool {
        self.current.load(Ordering::Acquire) == id
    }

    /// Reports connection `id` lost (its `Disconnection` push, a read that broke on it). True
    /// the first time it is reported while it is the current connection: the caller must then
    /// stop using it, and the supervisor opens the next one. False for an older connection (a
    /// late report that must not drop a newer one) or one already known lost.
    pub fn report_lost(&self, id: u64) -> bool {
        let first = self.lost.fetch_max(id, Ordering::AcqRel) < id;
        let current = first && self.is_current(id);
        if current {
            self.wake.notify_one();
        }
        current
    }

    /// Numbers the next connection (before it is opened, so its pushes carry its number).
    fn next(&self) -> u64 {
        self.current.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Whether connection `id` (or a newer one) was lost.
    fn is_lost(&self, id: u64) -> bool {
        self.lost.load(Ordering::Acquire) >= id
    }
}

/// What the heartbeat PINGs: the tracking connection itself, or the sending half of a Pub/Sub
/// connection (a PING is one of the few commands allowed in subscriber mode).
pub enum Pinger {
    /// A multiplexed (tracking) connection; its own response timeout bounds a PING.
    Tracked(MultiplexedConnection),
    /// The sink of a Pub/Sub connection.
    PubSub(PubSubSink),
}

impl Pinger {
    async fn ping(&mut self) -> RedisResult<()> {
        match self {
            Pinger::Tracked(conn) => redis::cmd("PING")
                .query_async::<Value>(conn)
                .await
                .map(drop),
            Pinger::PubSub(sink) => sink.ping::<Value>().await.map(drop),
        }
    }
}

/// The result of an open.
pub enum Opened<C> {
    /// The connection, and how to PING it.
    Up {
        /// The connection, for [`Link::up`] and [`Link::serve`].
        conn: C,
        /// What the heartbeat PINGs.
        pinger: Pinger,
    },
    /// It failed (the owner logged why and marked itself down): pause, then try again.
    Failed,
    /// The owner is gone: the supervisor ends.
    Gone,
}

/// How [`Link::serve`] ended.
pub enum Flow {
    /// The connection broke: it is lost.
    Lost,
    /// The owner is gone: the supervisor ends.
    Stop,
}

/// Why the supervisor found a connection lost (for [`Link::down`]).
#[derive(Debug)]
pub enum Loss {
    /// The owner reported it lost while it was being set up (before [`Link::up`] returned), so
    /// the owner may have started using it after acting on the report: stop again.
    SetUp,
    /// The owner's session over it ([`Link::serve`]) ended.
    Ended,
    /// A PING failed or took longer than [`Pacing::ping_timeout`].
    Heartbeat(RedisError),
}

/// What follows the loss of a connection that was up.
pub enum AfterLoss {
    /// A fixed pause (zero: reopen at once), then an open; the backoff starts from its first
    /// pause again.
    Pause(Duration),
    /// The backoff pause, as after a failed open (and it doubles).
    Backoff,
}

/// The pace of one supervisor.
pub struct Pacing {
    /// The pause after a failed open; it doubles with each further failure in a row, up to
    /// `max_pause`, and starts again from here once a connection is up.
    pub first_pause: Duration,
    /// The longest pause between opens.
    pub max_pause: Duration,
    /// How often an up connection is PINGed (from the end of the last PING).
    pub heartbeat: Duration,
    /// How long a PING may take (`None`: the connection's own response timeout bounds it).
    pub ping_timeout: Option<Duration>,
    /// What follows a loss.
    pub after_loss: AfterLoss,
}

/// What one owner does with its connection; the supervisor calls these in order: `open`, then
/// (when it opened) `up`, `serve` while it is up, `down` when the supervisor finds it lost, and
/// `wait` for each pause.
pub trait Link: Send {
    /// The open connection, as the owner uses it while it is up.
    type Conn: Send;

    /// Opens connection number `id`.
    fn open(&mut self, id: u64) -> BoxFuture<'_, Opened<Self::Conn>>;

    /// Connection `id` is open: start using it. `false`: the owner is gone.
    fn up(&mut self, id: u64, conn: &Self::Conn) -> bool;

    /// Works with the connection while it is up, beside the heartbeat (the signals relay their
    /// Pub/Sub messages here); it is dropped when the connection is lost. By default nothing:
    /// the owner uses the connection from elsewhere.
    fn serve<'a>(&'a mut self, conn: &'a mut Self::Conn) -> BoxFuture<'a, Flow> {
        let _ = conn;
        Box::pin(std::future::pending())
    }

    /// Connection `id` is lost (see [`Loss`]): stop using it.
    fn down(&mut self, id: u64, loss: Loss);

    /// Waits `pause` before the next open. `false`: the owner is gone.
    fn wait(&mut self, pause: Duration) -> BoxFuture<'_, bool> {
        Box::pin(async move {
            tokio::time::sleep(pause).await;
            true
        })
    }
}

/// One supervisor's parts.
pub struct Supervision<L> {
    /// The owner's side.
    pub link: L,
    /// The owner's lifeline (held weakly: when the owner drops it, the supervisor ends).
    pub lifeline: Weak<Lifeline>,
    /// Pauses and heartbeat.
    pub pacing: Pacing,
}

/// How a session over one connection ended.
enum End {
    /// The owner reported the loss (and acted on it).
    Reported,
    /// The supervisor found it.
    Found(Loss),
    /// The owner is gone.
    Gone,
}

/// Keeps one connection open for its owner (see the module docs): runs until the owner is gone.
pub async fn supervise<L: Link>(supervision: Supervision<L>) {
    let Supervision {
        mut link,
        lifeline,
        pacing,
    } = supervision;
    let mut pause = pacing.first_pause;
    loop {
        let Some(id) = lifeline.upgrade().map(|line| line.next()) else {
            return;
        };
        let (mut conn, pinger) = match link.open(id).await {
            Opened::Up { conn, pinger } => (conn, pinger),
            Opened::Failed => {
                if !link.wait(pause).await {
                    return;
                }
                pause = (pause * 2).min(pacing.max_pause);
                continue;
            }
            Opened::Gone => return,
        };
        pause = pacing.first_pause;
        if !link.up(id, &conn) {
            return;
        }
        // Lost while being set up: the report may have come before the owner started using it,
        // so the owner's own reaction may have been undone by `up`.
        let Some(lost) = lifeline.upgrade().map(|line| line.is_lost(id)) else {
            return;
        };
        if lost {
            link.down(id, Loss::SetUp);
            drop(conn);
            if !link.wait(pause).await {
                return;
            }
            continue;
        }
        let end = tokio::select! {
            flow = link.serve(&mut conn) => match flow {
                Flow::Lost => End::Found(Loss::Ended),
                Flow::Stop => End::Gone,
            },
            end = heartbeat(&lifeline, id, pinger, &pacing) => end,
        };
        drop(conn);
        match end {
            End::Gone => return,
            End::Reported => {}
            End::Found(loss) => {
                let Some(line) = lifeline.upgrade() else {
                    return;
                };
                line.lost.fetch_max(id, Ordering::AcqRel);
                drop(line);
                link.down(id, loss);
            }
        }
        let wait = match pacing.after_loss {
            AfterLoss::Pause(fixed) => fixed,
            AfterLoss::Backoff => {
                let backoff = pause;
                pause = (pause * 2).min(pacing.max_pause);
                backoff
            }
        };
        if !wait.is_zero() && !link.wait(wait).await {
            return;
        }
    }
}

/// PINGs connection `id` every `pacing.heartbeat` until a PING fails, the owner reports the
/// connection lost, or the owner is gone.
async fn heartbeat(lifeline: &Weak<Lifeline>, id: u64, mut pinger: Pinger, pacing: &Pacing) -> End {
    loop {
        let Some(line) = lifeline.upgrade() else {
            return End::Gone;
        };
        if line.is_lost(id) {
            return End::Reported;
        }
        tokio::select! {
            // Woken by a loss (or by a wake-up left from an earlier connection: then this one is
            // not lost, and the wait starts again).
            () = line.wake.notified() => continue,
            () = tokio::time::sleep(pacing.heartbeat) => {}
        }
        drop(line);
        let pong = match pacing.ping_timeout {
            None => pinger.ping().await,
            Some(limit) => tokio::time::timeout(limit, pinger.ping())
                .await
                .unwrap_or_else(|_| Err(std::io::Error::from(std::io::ErrorKind::TimedOut).into())),
        };
        if let Err(e) = pong {
            return End::Found(Loss::Heartbeat(e));
        }
    }
}

/// An owner of a tracking connection (RESP3, `CLIENT TRACKING ON`; see
/// [`RedisBackend::tracked_connection`]), supervised through [`Tracked`].
pub trait TrackedOwner: Send + Sync + 'static {
    /// The connection's `CLIENT SETNAME` (how it is found in `CLIENT LIST`).
    const CLIENT_NAME: &'static str;
    /// What the owner's log lines start with.
    const LABEL: &'static str;

    /// A push on tracking connection `connection` (called in order with its replies; must not
    /// block).
    fn on_push(&self, connection: u64, push: PushInfo);

    /// Tracking connection `connection` is up (see [`Link::up`]).
    fn up(&self, connection: u64, conn: &MultiplexedConnection);

    /// Tracking connection `connection` is lost (see [`Link::down`]).
    fn down(&self, connection: u64, loss: Loss);
}

/// The [`Link`] of a tracking connection: opens it on `backend` with its pushes going to the
/// owner while it lives.
pub struct Tracked<S> {
    /// The owner (the connection's push handler and the supervisor hold it weakly).
    pub owner: Weak<S>,
    /// Where the connection is opened.
    pub backend: RedisBackend,
}

impl<S: TrackedOwner> Link for Tracked<S> {
    type Conn = MultiplexedConnection;

    fn open(&mut self, id: u64) -> BoxFuture<'_, Opened<MultiplexedConnection>> {
        Box::pin(async move {
            if self.owner.strong_count() == 0 {
                return Opened::Gone;
            }
            let owner = self.owner.clone();
            let push = move |info: PushInfo| {
                if let Some(owner) = owner.upgrade() {
                    owner.on_push(id, info);
                }
                Ok::<(), redis::aio::SendError>(())
            };
            match self.backend.tracked_connection(S::CLIENT_NAME, push).await {
                Ok(conn) => Opened::Up {
                    pinger: Pinger::Tracked(conn.clone()),
                    conn,
                },
                Err(e) => {
                    tracing::warn!(error = %e, "{}: cannot open the tracking connection", S::LABEL);
                    Opened::Failed
                }
            }
        })
    }

    fn up(&mut self, id: u64, conn: &MultiplexedConnection) -> bool {
        let Some(owner) = self.owner.upgrade() else {
            return false;
        };
        owner.up(id, conn);
        true
    }

    fn down(&mut self, id: u64, loss: Loss) {
        if let Some(owner) = self.owner.upgrade() {
            owner.down(id, loss);
        }
    }
}

/// Starts supervising `owner`'s tracking connection on `backend` (in the background, until the
/// owner drops `lifeline`).
pub fn spawn_tracked<S: TrackedOwner>(
    owner: &Arc<S>,
    lifeline: &Arc<Lifeline>,
    backend: RedisBackend,
    pacing: Pacing,
) {
    tokio::spawn(supervise(Supervision {
        link: Tracked {
            owner: Arc::downgrade(owner),
            backend,
        },
        lifeline: Arc::downgrade(lifeline),
        pacing,
    }));
}
