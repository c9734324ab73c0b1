"""flowstate client: sessions, cache and rate limits over gRPC.

`Client` is synchronous, `AsyncClient` is for asyncio; both take plain Python values (bytes,
dict, datetime, timedelta), give every call a deadline, retry only idempotent calls, and raise
the exceptions in `flowstate.errors`.
"""

from flowstate.aio import AsyncClient
from flowstate.client import Client
from flowstate.errors import (
    Conflict,
    DeadlineExceeded,
    FlowstateError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    RateLimited,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from flowstate.types import (
    CacheEntry,
    CacheItem,
    CacheResult,
    Check,
    CheckResult,
    Limit,
    RateLimitResult,
    Session,
)

__all__ = [
    "AsyncClient",
    "CacheEntry",
    "CacheItem",
    "CacheResult",
    "Check",
    "CheckResult",
    "Client",
    "Conflict",
    "DeadlineExceeded",
    "FlowstateError",
    "InvalidArgument",
    "Limit",
    "NotFound",
    "PermissionDenied",
    "RateLimitResult",
    "RateLimited",
    "ResourceExhausted",
    "Session",
    "Unauthenticated",
    "Unavailable",
]
