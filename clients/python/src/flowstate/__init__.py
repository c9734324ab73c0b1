"""flowstate client: sessions, cache, semantic cache, rate limits, locks, events, job queues and
usage metering over gRPC.

`Client` is synchronous, `AsyncClient` is for asyncio; both take plain Python values (bytes,
dict, datetime, timedelta), give every call a deadline, retry only idempotent calls, and raise
the exceptions in `flowstate.errors`.
"""

from flowstate.aio import AsyncClient
from flowstate.client import Client
from flowstate.errors import (
    Conflict,
    DeadlineExceeded,
    EventsExpired,
    FlowstateError,
    InvalidArgument,
    LeaseLost,
    LockBusy,
    LockLost,
    NotFound,
    PermissionDenied,
    RateLimited,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from flowstate.queues import AsyncWorker, DeadJob, Enqueued, Job, QueueStats, Worker
from flowstate.semantic import SemanticHit
from flowstate.usage import TopEntry, UsagePoint, UsageSeries
from flowstate.types import (
    CacheEntry,
    CacheItem,
    CacheResult,
    Check,
    CheckResult,
    Event,
    Gap,
    Limit,
    LockHolder,
    LockInfo,
    RateLimitResult,
    Session,
)

__all__ = [
    "AsyncClient",
    "SemanticHit",
    "TopEntry",
    "UsagePoint",
    "UsageSeries",
    "AsyncWorker",
    "DeadJob",
    "Enqueued",
    "Job",
    "LeaseLost",
    "QueueStats",
    "Worker",
    "CacheEntry",
    "CacheItem",
    "CacheResult",
    "Check",
    "CheckResult",
    "Client",
    "Conflict",
    "DeadlineExceeded",
    "Event",
    "EventsExpired",
    "FlowstateError",
    "Gap",
    "InvalidArgument",
    "Limit",
    "LockBusy",
    "LockHolder",
    "LockInfo",
    "LockLost",
    "NotFound",
    "PermissionDenied",
    "RateLimitResult",
    "RateLimited",
    "ResourceExhausted",
    "Session",
    "Unauthenticated",
    "Unavailable",
]
