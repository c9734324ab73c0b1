"""The asyncio client (grpc.aio): the same API as `flowstate.Client`, with coroutines.

    async with AsyncClient("127.0.0.1:50051") as fs:
        session = await fs.sessions.create(user_id="alice", data={"cart": b"3 items"})
        profile = await fs.cache.get_or_compute("user_profile", "alice", load_profile)
        await fs.ratelimit.enforce([("api_per_user", "alice")])

Its source (`flowstate/_async`) is also the source of the sync client.
"""

from flowstate._async.client import AsyncClient, AsyncLock, AsyncSubscription, Cache, Events, Locks, RateLimits, Sessions
from flowstate.errors import FlowstateError
from flowstate.types import StartName

__all__ = ["AsyncClient", "FlowstateError"]
