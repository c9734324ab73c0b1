"""Plain Python values the client returns and accepts, and their conversion to and from the
protobuf messages. Shared by the sync and asyncio clients so both speak the same types."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Iterable, Literal, Mapping, Sequence, Union

from google.protobuf import duration_pb2, timestamp_pb2

from flowstate.v1 import cache_pb2, ratelimit_pb2, session_pb2

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
