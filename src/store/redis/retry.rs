//! The retry engine every call goes through: a connection, the call, and what its failure
//! means. What Redis refused without running it is sent again with a growing pause, within
//! `redis.failover_wait` and the RPC's deadline; a connection an error leaves unusable is
//! marked broken; each call is timed and counted by operation, with a store span inside a
//! traced call.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use redis::{Arg, Cmd, ErrorKind, Pipeline, RedisError, ServerErrorKind, Value};
use tracing::Instrument;

use super::{
    RedisBackend,
    classify::{classify, not_executed, server_changed_role},
    cluster::command_slot,
    pool::{Conn, Pool},
    scripts::Scripts,
};
use crate::{config::RedisMode, store::StoreError};

/// First pause between retries of a call Redis refused without running; it doubles up to
/// [`MAX_RETRY_PAUSE`].
const FIRST_RETRY_PAUSE: Duration = Duration::from_millis(5);
const MAX_RETRY_PAUSE: Duration = Duration::from_millis(200);

/// A call's failure, and whether Redis refused it without running it (so it may be sent
/// again whatever it does).
pub(super) struct Failure {
    pub(super) error: StoreError,
    pub(super) not_executed: bool,
}

/// A failed attempt at a call: the Redis error, and whether the call may be sent again
/// whatever it does (Redis refused all of it without running it, or ran only reads).
pub struct Attempt {
    pub(super) error: RedisError,
    pub(super) resendable: bool,
}

impl From<RedisError> for Attempt {
    /// A single command (or a connection failure): resendable when Redis refused it unrun.
    fn from(error: RedisError) -> Self {
        Self {
            resendable: not_executed(&error),
            error,
        }
    }
}

/// Marks a connection held for one call broken unless the call finished: a call dropped
/// mid-flight (its RPC cancelled) may leave a reply, or a blocking WAIT, behind on it.
struct HeldGuard {
    broken: Arc<AtomicBool>,
    finished: bool,
}

impl Drop for HeldGuard {
    fn drop(&mut self) {
        if !self.finished {
            self.broken.store(true, Ordering::Release);
        }
    }
}

impl RedisBackend {
    /// Until when a call that began at `start` may retry what Redis refused without running:
    /// `redis.failover_wait`, and never past four fifths of the time the RPC had left, so the
    /// RPC can still answer (a fail-open rate limit says "not enforced" in time).
    pub(super) fn retry_until(&self, start: Instant) -> Instant {
        let until = start + self.failover_wait;
        match crate::deadline::remaining() {
            Some(left) => until.min(start + left.mul_f32(0.8)),
            None => until,
        }
    }

    /// Runs `f` on a connection within the command timeout, marking the connection broken when
    /// the error says it cannot be reused. `op` names the operation in the store metrics.
    ///
    /// A call Redis refused without running it (a failover or resharding in progress: see
    /// [`not_executed`]) is sent again after a short, growing pause until it succeeds or
    /// [`retry_until`](Self::retry_until) passes; nothing that may have run is resent here.
    pub async fn with_connection<T, F, Fut>(&self, op: &'static str, f: F) -> Result<T, StoreError>
    where
        F: Fn(Conn) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        self.run(op, &self.pool, false, |conn| {
            let call = f(conn);
            async move { call.await.map_err(Attempt::from) }
        })
        .await
    }

    pub(super) async fn run<T, F, Fut>(
        &self,
        op: &'static str,
        pool: &Pool,
        hold: bool,
        f: F,
    ) -> Result<T, StoreError>
    where
        F: Fn(Conn) -> Fut,
        Fut: std::future::Future<Output = Result<T, Attempt>>,
    {
        // The store span of a trace: one per call, retries included, and only inside a call's
        // span (the health task and other background work start no traces of their own). A
        // debug span: one atomic load when nothing records spans.
        let within_a_call =
            tracing::level_enabled!(tracing::Level::DEBUG) && !tracing::Span::current().is_none();
        let span = if within_a_call {
            tracing::debug_span!(
                "store",
                otel.name = op,
                otel.kind = "client",
                otel.status_code = tracing::field::Empty,
                db.system.name = "redis",
                db.operation.name = op,
                error.type = tracing::field::Empty,
                retries = tracing::field::Empty,
            )
        } else {
            tracing::Span::none()
        };
        let result = self
            .run_attempts(op, pool, hold, f)
            .instrument(span.clone())
            .await;
        if let Err(e) = &result {
            metrics::counter!("flowstate_store_errors_total", "op" => op, "kind" => e.kind())
                .increment(1);
            span.record("otel.status_code", "ERROR");
            span.record("error.type", e.kind());
        }
        result
    }

    async fn run_attempts<T, F, Fut>(
        &self,
        op: &'static str,
        pool: &Pool,
        hold: bool,
        f: F,
    ) -> Result<T, StoreError>
    where
        F: Fn(Conn) -> Fut,
        Fut: std::future::Future<Output = Result<T, Attempt>>,
    {
        let start = Instant::now();
        let mut until = None;
        let mut pause = FIRST_RETRY_PAUSE;
        let mut retries = 0u32;
        // No timer of our own here: the pool's wait/create timeouts bound the checkout and
        // redis-rs's response timeout (`redis.command_timeout`) bounds the round trip, so a
        // second timer per call would only cost time-wheel work on the hot path.
        let result = loop {
            let attempt = async {
                let (pooled, conn, broken) = self.checkout(pool).await?;
                // The shared pool's object goes back at once (the handle is multiplexed, and
                // holding it would cap calls in flight at the pool size); an exclusive one is
                // held until the call is over.
                let held = if hold {
                    Some((
                        pooled,
                        HeldGuard {
                            broken: broken.clone(),
                            finished: false,
                        },
                    ))
                } else {
                    drop(pooled);
                    None
                };
                let result = f(conn).await.map_err(
                    |Attempt {
                         error: e,
                         resendable,
                     }| {
                        // A connection held for one call that timed out may still get its late
                        // reply: nobody else may inherit it.
                        if e.is_unrecoverable_error()
                            || e.is_connection_dropped()
                            || (hold && e.is_timeout())
                        {
                            broken.store(true, Ordering::Release);
                        }
                        if self.mode != RedisMode::Cluster && server_changed_role(&e) {
                            // The server behind this address is not (or no longer) the writable
                            // master: a failover demoted it, or it is still loading. No connection
                            // to it is reused; new ones go wherever the address (DNS, Service) or
                            // the sentinels point now. (A cluster connection follows the slot map
                            // itself.)
                            broken.store(true, Ordering::Release);
                            self.invalidate_connections();
                        }
                        if self.mode == RedisMode::Cluster
                            && (e.is_connection_refusal()
                                || e.kind() == ErrorKind::ClusterConnectionNotFound
                                || e.code() == Some("MOVED"))
                        {
                            // A node is gone or a slot moved: this connection's slot map is stale.
                            // The client refreshes it in the background, but a refresh during a
                            // failover can fail; a new connection learns the map afresh.
                            broken.store(true, Ordering::Release);
                        }
                        Failure {
                            not_executed: resendable,
                            error: classify(&e, self.command_timeout),
                        }
                    },
                );
                if let Some((pooled, mut guard)) = held {
                    guard.finished = true;
                    drop(pooled);
                }
                result
            }
            .await;
            match attempt {
                Ok(value) => break Ok(value),
                Err(failure) if failure.not_executed => {
                    let until = *until.get_or_insert_with(|| self.retry_until(start));
                    if Instant::now() + pause >= until {
                        break Err(failure.error);
                    }
                    metrics::counter!("flowstate_store_retries_total", "op" => op).increment(1);
                    retries += 1;
                    tracing::Span::current().record("retries", i64::from(retries));
                    tracing::debug!(op, error = %failure.error, "store refused a call without running it; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(MAX_RETRY_PAUSE);
                }
                Err(failure) => break Err(failure.error),
            }
        };
        metrics::histogram!("flowstate_store_duration_seconds", "op" => op)
            .record(start.elapsed().as_secs_f64());
        result
    }
}

/// Sends `pipe` on `conn`, loading the scripts and resending once after a NOSCRIPT. A failure
/// is resendable only if nothing in the pipeline that changes data may have run (see
/// [`resendable`]).
pub(super) async fn send_on(
    mut conn: Conn,
    pipe: &Pipeline,
    scripts: &Scripts,
) -> Result<Vec<Value>, Attempt> {
    let first = match pipe.query_async::<Vec<Value>>(&mut conn).await {
        Ok(replies) => return Ok(replies),
        Err(e) => e,
    };
    if first.kind() != ErrorKind::Server(ServerErrorKind::NoScript) {
        return Err(Attempt {
            resendable: resendable(pipe, &first),
            error: first,
        });
    }
    // The node lacks the scripts: load them (a pipeline sent to a cluster is one slot's, see
    // `pipeline`), then send the pipeline again if none of it can have run.
    let slot = pipe.cmd_iter().find_map(|c| command_slot(c).ok().flatten());
    scripts.reload(&mut conn, slot).await?;
    if !resendable(pipe, &first) {
        return Err(Attempt {
            error: first,
            resendable: false,
        });
    }
    match pipe.query_async(&mut conn).await {
        Ok(replies) => Ok(replies),
        Err(e) => Err(Attempt {
            resendable: resendable(pipe, &e),
            error: e,
        }),
    }
}

/// Whether `pipe` may be sent again after failing with `e`, whatever its commands do: Redis
/// refused it without running anything that changes data.
/// - Refusals of a whole node or slot (MOVED, CLUSTERDOWN, LOADING, MASTERDOWN, BUSY: a
///   pipeline sent to a cluster is one slot's) and no connection at all: nothing ran.
/// - READONLY refuses the writes; the reads ran, and may run again.
/// - ASK and TRYAGAIN (a slot being migrated) and NOSCRIPT concern single commands: the others
///   may have run. Resendable when every write is known to have failed: from the per-command
///   errors of a pipeline when Redis reports them, or because the pipeline writes nothing, or
///   (NOSCRIPT) because its one script is its one write. (A cluster connection reports only the
///   first error of a pipeline.)
pub(super) fn resendable(pipe: &Pipeline, e: &RedisError) -> bool {
    let per_command = matches!(e.code(), Some("ASK" | "TRYAGAIN" | "NOSCRIPT"));
    if !per_command {
        return not_executed(e);
    }
    let writes: Vec<usize> = pipe
        .cmd_iter()
        .enumerate()
        .filter(|(_, cmd)| is_write(cmd))
        .map(|(i, _)| i)
        .collect();
    if writes.is_empty() {
        return true;
    }
    if e.code() == Some("NOSCRIPT")
        && writes.len() == 1
        && pipe
            .cmd_iter()
            .filter(|c| matches!(command_name(c).as_slice(), b"EVALSHA" | b"EVAL"))
            .count()
            == 1
    {
        return true;
    }
    match e.clone().into_server_errors() {
        // A pipeline's errors, by position (a single error says position 0 whatever failed).
        Some(failed) if failed.len() > 1 => {
            let failed: std::collections::HashSet<usize> = failed.iter().map(|(i, _)| *i).collect();
            writes.iter().all(|i| failed.contains(i))
        }
        _ => false,
    }
}

/// Whether a command changes data (scripts count as writes).
pub(super) fn is_write(cmd: &Cmd) -> bool {
    !matches!(
        command_name(cmd).as_slice(),
        b"GET"
            | b"HGET"
            | b"HMGET"
            | b"HGETALL"
            | b"PFCOUNT"
            | b"TIME"
            | b"ZSCAN"
            | b"ZRANGE"
            | b"PTTL"
            | b"EXISTS"
    )
}

/// A command's name, upper case.
pub(super) fn command_name(cmd: &Cmd) -> Vec<u8> {
    match cmd.args_iter().next() {
        Some(Arg::Simple(name)) => name.to_ascii_uppercase(),
        _ => Vec::new(),
    }
}
