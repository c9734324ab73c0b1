"""Plain Python values the client returns and accepts, and their conversion to and from the
protobuf messages. Shared by the sync and asyncio clients so both speak the same types."""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable, Literal, Mapping, Sequence, Union

import grpc
from google.protobuf import duration_pb2, timestamp_pb2

from flowstate.errors import InvalidArgument
from flowstate.v1 import cache_pb2, events_pb2, queue_pb2, ratelimit_pb2, semantic_pb2, session_pb2, usage_pb2

Condition = Literal["always", "if_absent", "if_present"]
AlgorithmName = Literal["fixed_window", "sliding_window", "token_bucket", "gcra"]
FailureModeName = Literal["open", "closed"]


@dataclass(frozen=True)
class Session:
    """A session. `id` (the bearer secret) is set only by `create` and `rotate`."""

    id: str
    handle: str
    user_id: str
    data: dict[str, bytes]
    metadata: dict[str, str]
    created_at: datetime
    last_seen_at: datetime
    expires_at: datetime
    version: int


@dataclass(frozen=True)
class CacheResult:
    """A cache Get: the value (if any), how fresh it is, and the lease outcome."""

    found: bool
    value: bytes
    ttl_remaining: timedelta
    stale: bool
    lease_token: str | None
    lease_wait: bool


@dataclass(frozen=True)
class CacheEntry:
    """One key of a GetMany."""

    key: str
    found: bool
    value: bytes
    ttl_remaining: timedelta
    stale: bool


@dataclass(frozen=True)
class CacheItem:
    """One entry of a SetMany."""

    key: str
    value: bytes
    ttl: timedelta | None = None
    tags: Sequence[str] = ()
    condition: Condition = "always"


@dataclass(frozen=True)
class Limit:
    """An inline rate limit (dynamic limits); configured limits are referred to by name."""

    algorithm: AlgorithmName
    limit: int
    period: timedelta
    burst: int = 0
    failure_mode: FailureModeName = "closed"


LimitRef = Union[str, Limit]


@dataclass(frozen=True)
class Check:
    """One check of a rate-limit request: a limit (name or inline) and the key it limits."""

    limit: LimitRef
    key: str


@dataclass(frozen=True)
class CheckResult:
    """One check's answer."""

    allowed: bool
    limit: int
    remaining: int
    reset_after: timedelta
    retry_after: timedelta
    enforced: bool


@dataclass(frozen=True)
class RateLimitResult:
    """A rate-limit check: `allowed` only when every check allows (all or nothing)."""

    allowed: bool
    results: list[CheckResult] = field(default_factory=list)

    @property
    def retry_after(self) -> timedelta:
        """The longest wait any denying check asks for (zero when allowed)."""
        return max((r.retry_after for r in self.results if not r.allowed), default=timedelta(0))


# -- conversions -------------------------------------------------------------------------------


def duration(td: timedelta | None) -> duration_pb2.Duration | None:
    if td is None:
        return None
    d = duration_pb2.Duration()
    d.FromTimedelta(td)
    return d


def _td(d: duration_pb2.Duration) -> timedelta:
    return d.ToTimedelta()


def _dt(ts: timestamp_pb2.Timestamp) -> datetime:
    return ts.ToDatetime(tzinfo=timezone.utc)


def session(msg: session_pb2.Session) -> Session:
    return Session(
        id=msg.id,
        handle=msg.handle,
        user_id=msg.user_id,
        data=dict(msg.data),
        metadata=dict(msg.metadata),
        created_at=_dt(msg.created_at),
        last_seen_at=_dt(msg.last_seen_at),
        expires_at=_dt(msg.expires_at),
        version=msg.version,
    )


def cache_result(msg: cache_pb2.CacheGetResponse) -> CacheResult:
    return CacheResult(
        found=msg.found,
        value=msg.value,
        ttl_remaining=_td(msg.ttl_remaining),
        stale=msg.stale,
        lease_token=msg.lease_token or None,
        lease_wait=msg.lease_wait,
    )


def cache_entries(msg: cache_pb2.CacheGetManyResponse) -> list[CacheEntry]:
    return [
        CacheEntry(
            key=e.key,
            found=e.found,
            value=e.value,
            ttl_remaining=_td(e.ttl_remaining),
            stale=e.stale,
        )
        for e in msg.entries
    ]


_CONDITIONS = {
    "always": cache_pb2.SET_CONDITION_ALWAYS,
    "if_absent": cache_pb2.SET_CONDITION_IF_ABSENT,
    "if_present": cache_pb2.SET_CONDITION_IF_PRESENT,
}


def condition(c: Condition) -> int:
    try:
        return _CONDITIONS[c]
    except KeyError:
        raise ValueError(f"condition must be one of {sorted(_CONDITIONS)}, not {c!r}") from None


def set_many_entries(items: Iterable[CacheItem]) -> list[cache_pb2.CacheSetManyEntry]:
    return [
        cache_pb2.CacheSetManyEntry(
            key=i.key,
            value=i.value,
            ttl=duration(i.ttl),
            tags=list(i.tags),
            condition=condition(i.condition),
        )
        for i in items
    ]


_ALGORITHMS = {
    "fixed_window": ratelimit_pb2.ALGORITHM_FIXED_WINDOW,
    "sliding_window": ratelimit_pb2.ALGORITHM_SLIDING_WINDOW,
    "token_bucket": ratelimit_pb2.ALGORITHM_TOKEN_BUCKET,
    "gcra": ratelimit_pb2.ALGORITHM_GCRA,
}
_FAILURE_MODES = {
    "open": ratelimit_pb2.FAILURE_MODE_OPEN,
    "closed": ratelimit_pb2.FAILURE_MODE_CLOSED,
}


def _policy(limit: Limit) -> ratelimit_pb2.LimitPolicy:
    if limit.algorithm not in _ALGORITHMS:
        raise ValueError(f"algorithm must be one of {sorted(_ALGORITHMS)}, not {limit.algorithm!r}")
    return ratelimit_pb2.LimitPolicy(
        algorithm=_ALGORITHMS[limit.algorithm],
        limit=limit.limit,
        period=duration(limit.period),
        burst=limit.burst,
        failure_mode=_FAILURE_MODES[limit.failure_mode],
    )


def limit_check(check: Check | tuple[LimitRef, str]) -> ratelimit_pb2.LimitCheck:
    limit, key = (check.limit, check.key) if isinstance(check, Check) else check
    if isinstance(limit, Limit):
        return ratelimit_pb2.LimitCheck(policy=_policy(limit), key=key)
    return ratelimit_pb2.LimitCheck(name=limit, key=key)


def reset_request(limit: LimitRef, key: str) -> ratelimit_pb2.ResetRequest:
    if isinstance(limit, Limit):
        return ratelimit_pb2.ResetRequest(policy=_policy(limit), key=key)
    return ratelimit_pb2.ResetRequest(name=limit, key=key)


def ratelimit_result(msg: ratelimit_pb2.CheckResponse) -> RateLimitResult:
    return RateLimitResult(
        allowed=msg.allowed,
        results=[
            CheckResult(
                allowed=r.allowed,
                limit=r.limit,
                remaining=r.remaining,
                reset_after=_td(r.reset_after),
                retry_after=_td(r.retry_after),
                enforced=r.enforced,
            )
            for r in msg.results
        ],
    )


def create_session_request(
    user_id: str,
    data: Mapping[str, bytes] | None,
    metadata: Mapping[str, str] | None,
    idle_timeout: timedelta | None,
    absolute_timeout: timedelta | None,
) -> session_pb2.CreateSessionRequest:
    return session_pb2.CreateSessionRequest(
        user_id=user_id,
        data=dict(data or {}),
        metadata=dict(metadata or {}),
        idle_timeout=duration(idle_timeout),
        absolute_timeout=duration(absolute_timeout),
    )


def delete_session_request(id: str | None, handle: str | None) -> session_pb2.DeleteSessionRequest:
    if (id is None) == (handle is None):
        raise ValueError("give exactly one of id= or handle=")
    if id is not None:
        return session_pb2.DeleteSessionRequest(id=id)
    return session_pb2.DeleteSessionRequest(handle=handle)


# Locks and events.


@dataclass(frozen=True)
class LockHolder:
    """A live holding of a lock, as `locks.inspect` shows it (never its token)."""

    holder_id: str
    fencing_token: int
    acquired_at: datetime
    expires_at: datetime
    metadata: dict[str, str]


@dataclass(frozen=True)
class LockInfo:
    """A lock's holders (earliest expiry first), waiters and last fencing token."""

    holders: list[LockHolder]
    waiters: int
    last_fencing_token: int


@dataclass(frozen=True)
class Event:
    """An event of a topic. `id` is its position: pass it back to resume after it."""

    topic: str
    id: str
    payload: bytes
    key: str
    published_at: datetime


@dataclass(frozen=True)
class Gap:
    """Events of `topic` after `after` are gone (past its retention); what follows starts at
    `first_id` (empty if the topic holds nothing). Only with `accept_gaps=True`."""

    topic: str
    after: str
    first_id: str


def lock_info(msg) -> LockInfo:
    return LockInfo(
        holders=[
            LockHolder(
                holder_id=h.holder_id,
                fencing_token=h.fencing_token,
                acquired_at=_dt(h.acquired_at),
                expires_at=_dt(h.expires_at),
                metadata=dict(h.metadata),
            )
            for h in msg.holders
        ],
        waiters=msg.waiters,
        last_fencing_token=msg.last_fencing_token,
    )


def event(msg) -> Event:
    return Event(
        topic=msg.topic,
        id=msg.id,
        payload=msg.payload,
        key=msg.key,
        published_at=_dt(msg.published_at),
    )


StartName = Literal["latest", "earliest"]


def subscribe_request(
    topics: Sequence[str], after: Mapping[str, str], start: StartName, accept_gaps: bool
) -> events_pb2.SubscribeRequest:
    return events_pb2.SubscribeRequest(
        topics=list(topics),
        after=dict(after),
        start=(
            events_pb2.SubscribeRequest.START_EARLIEST
            if start == "earliest"
            else events_pb2.SubscribeRequest.START_LATEST
        ),
        accept_gaps=accept_gaps,
    )


# Job queues.

Priority = Literal["high", "normal", "low"]
_PRIORITY = {
    "high": queue_pb2.JOB_PRIORITY_HIGH,
    "normal": queue_pb2.JOB_PRIORITY_NORMAL,
    "low": queue_pb2.JOB_PRIORITY_LOW,
}
_PRIORITY_NAME = {v: k for k, v in _PRIORITY.items()}


@dataclass
class Enqueued:
    id: str
    duplicate: bool
    run_at: datetime


@dataclass
class Job:
    """A leased job. `lost` is set when its lease was lost (its heartbeat was refused): another
    worker may be running it, so a long handler should stop."""

    queue: str
    id: str
    payload: bytes
    lease_token: str
    attempt: int
    max_attempts: int
    enqueued_at: datetime
    lease_expires_at: datetime
    last_error: str
    priority: Priority
    waited: timedelta
    timeout: timedelta
    lost: threading.Event = field(default_factory=threading.Event, repr=False)
    # When the lease runs out by this process's monotonic clock (renewed by each extension), so
    # a skewed wall clock cannot mislead the worker.
    _deadline: float = field(default=0.0, repr=False)


@dataclass
class DeadJob:
    id: str
    payload: bytes
    attempts: int
    last_error: str
    died_at: datetime
    enqueued_at: datetime


@dataclass
class QueueStats:
    ready: int
    scheduled: int
    in_flight: int
    dead: int
    oldest_ready_age: timedelta
    paused: bool


def _ts(at: datetime) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(at)
    return ts


def job_options(
    delay: timedelta | None = None,
    run_at: datetime | None = None,
    max_attempts: int = 0,
    backoff: timedelta | None = None,
    max_backoff: timedelta | None = None,
    unique_key: str = "",
    priority: Priority = "normal",
    timeout: timedelta | None = None,
) -> queue_pb2.JobOptions:
    """Options for one job (`None`/0 leave the server's defaults)."""
    return queue_pb2.JobOptions(
        delay=duration(delay),
        run_at=_ts(run_at) if run_at is not None else None,
        max_attempts=max_attempts,
        backoff=duration(backoff),
        max_backoff=duration(max_backoff),
        unique_key=unique_key,
        priority=_PRIORITY[priority],
        timeout=duration(timeout),
    )


def new_jobs(jobs: Sequence[bytes | tuple[bytes, Mapping[str, Any]]]) -> list[queue_pb2.NewJob]:
    """An EnqueueMany's jobs from payloads, or (payload, options) pairs."""
    items = []
    for j in jobs:
        payload, opts = (j, {}) if isinstance(j, (bytes, bytearray)) else j
        items.append(queue_pb2.NewJob(payload=bytes(payload), options=job_options(**opts)))
    return items


def enqueued(r: queue_pb2.EnqueueResponse) -> Enqueued:
    return Enqueued(r.job_id, r.duplicate, _dt(r.run_at))


def job(j: queue_pb2.Job, sent: float) -> Job:
    return Job(
        queue=j.queue,
        id=j.id,
        payload=j.payload,
        lease_token=j.lease_token,
        attempt=j.attempt,
        max_attempts=j.max_attempts,
        enqueued_at=_dt(j.enqueued_at),
        lease_expires_at=_dt(j.lease_expires_at),
        last_error=j.last_error,
        priority=_PRIORITY_NAME.get(j.priority, "normal"),  # type: ignore[arg-type]
        waited=_td(j.waited),
        timeout=_td(j.timeout),
        _deadline=sent + j.timeout.ToTimedelta().total_seconds(),
    )


def queue_stats(r: queue_pb2.QueueStatsResponse) -> QueueStats:
    return QueueStats(r.ready, r.scheduled, r.in_flight, r.dead, _td(r.oldest_ready_age), r.paused)


def dead_jobs(r: queue_pb2.ListDeadResponse) -> list[DeadJob]:
    return [DeadJob(j.id, j.payload, j.attempts, j.last_error, _dt(j.died_at), _dt(j.enqueued_at)) for j in r.jobs]


# The semantic cache.

Embedding = Sequence[float]


@dataclass(frozen=True)
class SemanticHit:
    """An entry a Get found: its id, how similar it is, its value and labels, its time left."""

    id: int
    similarity: float
    value: bytes
    metadata: Mapping[str, str] = field(default_factory=dict)
    ttl_remaining: timedelta = timedelta(0)


def embedding(values: Embedding) -> list[float]:
    """The embedding as a list of floats; raises InvalidArgument at once for what flowstate
    would refuse anyway (not numbers, empty, NaN or infinite)."""
    try:
        floats = [float(x) for x in values]
    except (TypeError, ValueError):
        floats = []
    if not floats or not all(math.isfinite(x) for x in floats):
        problem = "a non-empty sequence of finite numbers"
        raise InvalidArgument(f"embedding: {problem}", grpc.StatusCode.INVALID_ARGUMENT, {"embedding": problem})
    return floats


def semantic_set_request(
    namespace: str,
    values: Embedding,
    value: bytes,
    ttl: timedelta | None,
    metadata: Mapping[str, str] | None,
) -> semantic_pb2.SemanticSetRequest:
    return semantic_pb2.SemanticSetRequest(
        namespace=namespace,
        embedding=embedding(values),
        value=value,
        ttl=duration(ttl),
        metadata=dict(metadata or {}),
    )


def semantic_get_request(
    namespace: str, values: Embedding, min_similarity: float | None
) -> semantic_pb2.SemanticGetRequest:
    request = semantic_pb2.SemanticGetRequest(namespace=namespace, embedding=embedding(values))
    if min_similarity is not None:
        request.min_similarity = min_similarity
    return request


def semantic_hit(r: semantic_pb2.SemanticGetResponse) -> SemanticHit | None:
    if not r.found:
        return None
    return SemanticHit(
        id=r.id,
        similarity=r.similarity,
        value=r.value,
        metadata=dict(r.metadata),
        ttl_remaining=r.ttl.ToTimedelta(),
    )


# Usage metering.

GRANULARITIES = {
    "minute": usage_pb2.GRANULARITY_MINUTE,
    "hour": usage_pb2.GRANULARITY_HOUR,
    "day": usage_pb2.GRANULARITY_DAY,
    "month": usage_pb2.GRANULARITY_MONTH,
}

UsageKey = tuple[str, str, tuple[tuple[str, str], ...], str]
"""What the usage buffer sums by: (metric, subject, dimensions, unique)."""


@dataclass(frozen=True)
class UsagePoint:
    """One bucket of a series: when it starts (UTC) and its value."""

    start: datetime
    value: int


@dataclass(frozen=True)
class UsageSeries:
    """A Query's series: `value` is the group's dimension value (with `group_by`), else ""."""

    value: str
    points: list[UsagePoint]
    total: int


@dataclass(frozen=True)
class TopEntry:
    subject: str
    value: int


MAX_AMOUNT = 2**53


def usage_key(
    metric: str, subject: str, amount: int, dimensions: Mapping[str, str] | None, unique: str | None
) -> UsageKey:
    """The buffer key of an event, after checking its types (a bad event fails at the call site,
    not later in a batch)."""
    if not isinstance(metric, str) or not metric or not isinstance(subject, str) or not subject:
        raise ValueError("metric and subject must be non-empty strings")
    if isinstance(amount, bool) or not isinstance(amount, int) or abs(amount) > MAX_AMOUNT:
        raise ValueError("amount must be an int of at most 2**53 either way")
    dims = tuple(sorted((dimensions or {}).items()))
    if any(not isinstance(k, str) or not isinstance(v, str) or not k or not v for k, v in dims):
        raise ValueError("dimensions map non-empty strings to non-empty strings")
    if unique is not None and not isinstance(unique, str):
        raise ValueError("unique must be a string")
    return (metric, subject, dims, unique or "")


def _timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value.astimezone(timezone.utc) if value.tzinfo else value.replace(tzinfo=timezone.utc))
    return ts


def usage_query_request(
    metric: str,
    subject: str,
    start: datetime,
    end: datetime | None,
    granularity: str,
    dimensions: Mapping[str, str] | None,
    group_by: str | None,
    unique: bool,
) -> usage_pb2.QueryRequest:
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {sorted(GRANULARITIES)}")
    request = usage_pb2.QueryRequest(
        metric=metric,
        subject=subject,
        granularity=GRANULARITIES[granularity],
        dimensions=dict(dimensions or {}),
        group_by=group_by or "",
        unique=unique,
    )
    getattr(request, "from").CopyFrom(_timestamp(start))
    if end is not None:
        request.to.CopyFrom(_timestamp(end))
    return request


def usage_series(response: usage_pb2.QueryResponse) -> list[UsageSeries]:
    return [
        UsageSeries(
            value=s.value,
            points=[UsagePoint(p.start.ToDatetime(tzinfo=timezone.utc), p.value) for p in s.points],
            total=s.total,
        )
        for s in response.series
    ]


def usage_top_request(metric: str, window: timedelta, n: int, granularity: str | None) -> usage_pb2.TopRequest:
    return usage_pb2.TopRequest(
        metric=metric, window=duration(window), n=n, granularity=GRANULARITIES[granularity] if granularity else 0
    )


def top_entries(response: usage_pb2.TopResponse) -> list[TopEntry]:
    return [TopEntry(e.subject, e.value) for e in response.entries]
