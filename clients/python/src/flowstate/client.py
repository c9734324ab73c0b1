"""The synchronous client.

    with Client("127.0.0.1:50051") as fs:
        session = fs.sessions.create(user_id="alice", data={"cart": b"3 items"})
        profile = fs.cache.get_or_compute("user_profile", "alice", load_profile)
        fs.ratelimit.enforce([("api_per_user", "alice")])

Written by `clients/python/unasync.py` from the asyncio client (`flowstate/_sync` from
`flowstate/_async`), so both have the same API and behaviour.
"""

from flowstate._sync.client import Cache, Client, Events, Lock, Locks, RateLimits, Sessions, Subscription
from flowstate.errors import FlowstateError
from flowstate.types import StartName

__all__ = ["Client", "FlowstateError"]
