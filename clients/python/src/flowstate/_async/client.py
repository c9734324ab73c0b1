"""`AsyncClient` and its sessions, cache, rate limits, locks and events (see `flowstate.aio`)."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import (
    Any,
    AsyncContextManager,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Mapping,
    Sequence,
    TypeVar,
)

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc  # type: ignore[import-untyped]

from flowstate import _channel
from flowstate import types as t
from flowstate._async.queues import AsyncQueues
from flowstate._async.semantic import AsyncSemantic
from flowstate._async.usage import AsyncUsage
from flowstate._concurrency import (
    AsyncBackground,
    AsyncCancelled,
    AsyncEvent,
    async_held,
    async_resolve,
    async_sleep,
)
from flowstate._sansio import CacheFill, KeepAlive, Resume
from flowstate.errors import FlowstateError, LockBusy, LockLost, RateLimited, from_rpc_error
from flowstate.v1 import (
    cache_pb2,
    cache_pb2_grpc,
    events_pb2,
    events_pb2_grpc,
    lock_pb2,
    lock_pb2_grpc,
    ratelimit_pb2,
    ratelimit_pb2_grpc,
    session_pb2,
    session_pb2_grpc,
)

R = TypeVar("R")


class _Base:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def _call(self, method: Callable[..., Any], request: Any, parse: Callable[[Any], R]) -> R:
        c = self._client
        try:
            response = await method(request, timeout=c.timeout, metadata=c._metadata)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None
        return parse(response)


class Sessions(_Base):
    """`flowstate.v1.SessionService`."""

    def __init__(self, client: AsyncClient) -> None:
        super().__init__(client)
        self._stub = session_pb2_grpc.SessionServiceStub(client._channel)

    async def create(
        self,
        user_id: str,
        data: Mapping[str, bytes] | None = None,
        metadata: Mapping[str, str] | None = None,
        idle_timeout: timedelta | None = None,
        absolute_timeout: timedelta | None = None,
    ) -> t.Session:
        request = t.create_session_request(user_id, data, metadata, idle_timeout, absolute_timeout)
        return await self._call(self._stub.CreateSession, request, t.session)

    async def get(self, id: str, touch: bool = False) -> t.Session:
        return await self._call(self._stub.GetSession, session_pb2.GetSessionRequest(id=id, touch=touch), t.session)

    async def update(
        self,
        id: str,
        set: Mapping[str, bytes] | None = None,
        remove: Iterable[str] = (),
        expected_version: int = 0,
    ) -> t.Session:
        request = session_pb2.UpdateSessionRequest(
            id=id, set=dict(set or {}), remove=list(remove), expected_version=expected_version
        )
        return await self._call(self._stub.UpdateSession, request, t.session)

    async def touch(self, id: str) -> t.Session:
        return await self._call(self._stub.TouchSession, session_pb2.TouchSessionRequest(id=id), t.session)

    async def rotate(self, id: str) -> t.Session:
        return await self._call(self._stub.RotateSession, session_pb2.RotateSessionRequest(id=id), t.session)

    async def delete(self, id: str | None = None, *, handle: str | None = None) -> bool:
        request = t.delete_session_request(id, handle)
        return await self._call(self._stub.DeleteSession, request, lambda r: r.deleted)

    async def list(self, user_id: str) -> list[t.Session]:
        request = session_pb2.ListUserSessionsRequest(user_id=user_id)
        return await self._call(self._stub.ListUserSessions, request, lambda r: [t.session(s) for s in r.sessions])

    async def delete_user(self, user_id: str, keep_handle: str | None = None) -> int:
        request = session_pb2.DeleteUserSessionsRequest(user_id=user_id, keep_handle=keep_handle)
        return await self._call(self._stub.DeleteUserSessions, request, lambda r: r.deleted)


class Cache(_Base):
    """`flowstate.v1.CacheService`, plus `get_or_compute`."""

    def __init__(self, client: AsyncClient) -> None:
        super().__init__(client)
        self._stub = cache_pb2_grpc.CacheServiceStub(client._channel)

    async def get(self, namespace: str, key: str, lease: bool = False) -> t.CacheResult:
        request = cache_pb2.CacheGetRequest(namespace=namespace, key=key, lease=lease)
        return await self._call(self._stub.Get, request, t.cache_result)

    async def get_many(self, namespace: str, keys: Sequence[str]) -> list[t.CacheEntry]:
        request = cache_pb2.CacheGetManyRequest(namespace=namespace, keys=list(keys))
        return await self._call(self._stub.GetMany, request, t.cache_entries)

    async def set(
        self,
        namespace: str,
        key: str,
        value: bytes,
        ttl: timedelta | None = None,
        tags: Sequence[str] = (),
        condition: t.Condition = "always",
        lease_token: str | None = None,
    ) -> bool:
        request = cache_pb2.CacheSetRequest(
            namespace=namespace,
            key=key,
            value=value,
            ttl=t.duration(ttl),
            tags=list(tags),
            condition=t.condition(condition),
            lease_token=lease_token or "",
        )
        return await self._call(self._stub.Set, request, lambda r: r.stored)

    async def set_many(self, namespace: str, items: Iterable[t.CacheItem]) -> list[bool]:
        request = cache_pb2.CacheSetManyRequest(namespace=namespace, entries=t.set_many_entries(items))
        return await self._call(self._stub.SetMany, request, lambda r: list(r.stored))

    async def delete(self, namespace: str, keys: Sequence[str]) -> int:
        request = cache_pb2.CacheDeleteRequest(namespace=namespace, keys=list(keys))
        return await self._call(self._stub.Delete, request, lambda r: r.deleted)

    async def invalidate_tags(self, namespace: str, tags: Sequence[str]) -> int:
        request = cache_pb2.CacheInvalidateTagsRequest(namespace=namespace, tags=list(tags))
        return await self._call(self._stub.InvalidateTags, request, lambda r: r.invalidated)

    async def invalidate_namespace(self, namespace: str) -> None:
        request = cache_pb2.CacheInvalidateNamespaceRequest(namespace=namespace)
        await self._call(self._stub.InvalidateNamespace, request, lambda r: None)

    async def get_or_compute(
        self,
        namespace: str,
        key: str,
        compute: Callable[[], bytes | Awaitable[bytes]],
        ttl: timedelta | None = None,
        tags: Sequence[str] = (),
        wait: timedelta = timedelta(milliseconds=25),
        max_wait: timedelta = timedelta(seconds=2),
    ) -> bytes:
        """The cached value, computed by exactly one caller when missing (stampede-safe).
        `compute` may be a plain function or a coroutine function.

        A hit returns at once. On a miss or stale hit the caller that gets the lease computes
        and stores the value; the others take the stale value when there is one, or poll every
        `wait` for the lease holder's result. After `max_wait` without a value a waiter computes
        for itself (and does not store: it holds no lease).
        """
        fill = CacheFill(wait, max_wait, time.monotonic())
        while True:
            step = fill.after(await self.get(namespace, key, lease=True), time.monotonic())
            if step.kind == "value":
                return step.value
            if step.kind == "compute":
                value = await async_resolve(compute())
                if step.lease_token:
                    await self.set(namespace, key, value, ttl=ttl, tags=tags, lease_token=step.lease_token)
                return value
            await async_sleep(step.wait)


class RateLimits(_Base):
    """`flowstate.v1.RateLimitService`, plus `enforce`."""

    def __init__(self, client: AsyncClient) -> None:
        super().__init__(client)
        self._stub = ratelimit_pb2_grpc.RateLimitServiceStub(client._channel)

    async def check(
        self,
        checks: Iterable[t.Check | tuple[t.LimitRef, str]],
        cost: int | None = None,
        dry_run: bool = False,
    ) -> t.RateLimitResult:
        request = ratelimit_pb2.CheckRequest(
            checks=[t.limit_check(c) for c in checks], cost=cost, dry_run=dry_run
        )
        return await self._call(self._stub.Check, request, t.ratelimit_result)

    async def enforce(
        self, checks: Iterable[t.Check | tuple[t.LimitRef, str]], cost: int | None = None
    ) -> t.RateLimitResult:
        """Like `check`, but raises `RateLimited` (with `retry_after`) when denied."""
        result = await self.check(checks, cost=cost)
        if not result.allowed:
            raise RateLimited(result.retry_after, result.results)
        return result

    async def reset(self, limit: t.LimitRef, key: str) -> None:
        await self._call(self._stub.Reset, t.reset_request(limit, key), lambda r: None)


class AsyncLock:
    """A lock held by `locks.hold`: its `fencing_token` (pass it with every write the lock
    guards), and `lost`, an event set when the background extension learns the lock is gone
    (expired or taken over): stop the guarded work then."""

    def __init__(self, locks: Locks, name: str, ttl: timedelta, granted: lock_pb2.AcquireLockResponse) -> None:
        self._locks = locks
        self.name = name
        self.ttl = ttl
        self.token = granted.token
        self.fencing_token = granted.fencing_token
        self.holder_id = granted.holder_id
        self.expires_at = t._dt(granted.expires_at)
        self.lost = AsyncEvent()
        self._keep_alive = KeepAlive(ttl)
        self._released = AsyncEvent()
        self._keeper = AsyncBackground(self._keep, f"flowstate-lock-{name}")

    async def _keep(self) -> None:
        while not await self._released.wait(self._keep_alive.every):
            try:
                self.expires_at = await self._locks.extend(self.name, self.token, self.ttl)
            except FlowstateError as e:
                if self._keep_alive.lost(e):
                    self.lost.set()
                    return

    async def release(self) -> None:
        """Stops extending and releases (a lock already lost is not an error here)."""
        self._released.set()
        await self._keeper.cancel()
        await self._keeper.join()
        if self.lost.is_set():
            return
        try:
            await self._locks.release(self.name, self.token)
        except LockLost:
            self.lost.set()

    async def __aenter__(self) -> AsyncLock:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.release()


class Locks(_Base):
    """`flowstate.v1.LockService`, plus `hold` (a context manager that extends in the
    background)."""

    def __init__(self, client: AsyncClient) -> None:
        super().__init__(client)
        self._stub = lock_pb2_grpc.LockServiceStub(client._channel)

    async def acquire(
        self,
        name: str,
        ttl: timedelta,
        wait: timedelta = timedelta(0),
        limit: int = 1,
        metadata: Mapping[str, str] | None = None,
    ) -> lock_pb2.AcquireLockResponse:
        """One Acquire: the response says whether it was granted (`acquired`), its `token`
        and `fencing_token`, or how long until the holding expires (`retry_after`)."""
        request = lock_pb2.AcquireLockRequest(
            name=name, ttl=t.duration(ttl), wait=t.duration(wait), limit=limit, metadata=dict(metadata or {})
        )
        c = self._client
        # The call must outlast the wait.
        timeout = max(c.timeout, wait.total_seconds() + c.timeout)
        try:
            return await self._stub.Acquire(request, timeout=timeout, metadata=c._metadata)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None

    async def extend(self, name: str, token: str, ttl: timedelta):
        """A new TTL from now; raises `LockLost` if the lock is not held with `token`."""
        request = lock_pb2.ExtendLockRequest(name=name, token=token, ttl=t.duration(ttl))
        return await self._call(self._stub.Extend, request, lambda r: t._dt(r.expires_at))

    async def release(self, name: str, token: str) -> None:
        """Releases; raises `LockLost` if it was not held with `token` any more."""
        request = lock_pb2.ReleaseLockRequest(name=name, token=token)
        await self._call(self._stub.Release, request, lambda r: None)

    async def inspect(self, name: str) -> t.LockInfo:
        return await self._call(self._stub.Inspect, lock_pb2.InspectLockRequest(name=name), t.lock_info)

    def hold(
        self,
        name: str,
        ttl: timedelta = timedelta(seconds=30),
        wait: timedelta = timedelta(seconds=10),
        limit: int = 1,
        metadata: Mapping[str, str] | None = None,
    ) -> AsyncContextManager[AsyncLock]:
        """`async with fs.locks.hold("campaign:42") as lock:` holds the lock (or a slot of a
        semaphore of `limit`) for the block, extending it every ttl/3, and releases it after.
        Raises `LockBusy` when not granted within `wait`. Check `lock.lost` in long blocks and
        pass `lock.fencing_token` to the storage you write to."""
        return async_held(self._hold, name, ttl, wait, limit, metadata)

    async def _hold(
        self, name: str, ttl: timedelta, wait: timedelta, limit: int, metadata: Mapping[str, str] | None
    ) -> AsyncLock:
        granted = await self.acquire(name, ttl, wait, limit, metadata)
        if not granted.acquired:
            raise LockBusy(name, granted.retry_after.ToTimedelta(), granted.holders)
        return AsyncLock(self, name, ttl, granted)


class AsyncSubscription:
    """`async for event in fs.events.subscribe([...]):` yields `Event`s (and `Gap`s with
    `accept_gaps`) and resumes by itself.

    `positions` is, per topic, the id of the last event handed out: after a dropped
    connection, an UNAVAILABLE store or a slow-subscriber cut-off, it subscribes again from
    there (with a growing pause), so nothing is lost or repeated. An expired position raises
    `EventsExpired`. `close()` ends it; `resumes` counts the resumptions.
    """

    def __init__(self, events: Events, topics: Sequence[str], after: Mapping[str, str] | None,
                 start: t.StartName, accept_gaps: bool, reconnect: bool) -> None:
        self._events = events
        self._resume = Resume(topics, after, start, accept_gaps, reconnect)
        self._call: Any = None
        self._closed = False

    @property
    def topics(self) -> list[str]:
        return self._resume.topics

    @property
    def positions(self) -> dict[str, str]:
        return self._resume.positions

    @property
    def resumes(self) -> int:
        return self._resume.resumes

    def close(self) -> None:
        self._closed = True
        if self._call is not None:
            self._call.cancel()

    async def __aenter__(self) -> AsyncSubscription:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    async def __aiter__(self) -> AsyncIterator[t.Event | t.Gap]:
        while not self._closed:
            c = self._events._client
            self._call = self._events._stub.Subscribe(self._resume.request(), metadata=c._metadata)
            try:
                async for message in self._call:
                    item = self._resume.received(message)
                    if item is not None:
                        yield item
                # The server ended the stream (it is shutting down): resume elsewhere.
            except AsyncCancelled:
                if self._closed:
                    return
                raise
            except grpc.RpcError as e:
                if self._closed:
                    return
                error = self._resume.failed(e)
                if error is not None:
                    raise error from None
            await async_sleep(self._resume.resume())


class Events(_Base):
    """`flowstate.v1.EventService`: `publish`, and `subscribe` with automatic resume."""

    def __init__(self, client: AsyncClient) -> None:
        super().__init__(client)
        self._stub = events_pb2_grpc.EventServiceStub(client._channel)

    async def publish(self, topic: str, payload: bytes, key: str = "") -> str:
        """Appends an event; returns its id (its position in the topic)."""
        request = events_pb2.PublishRequest(topic=topic, payload=payload, key=key)
        return await self._call(self._stub.Publish, request, lambda r: r.id)

    def subscribe(
        self,
        topics: Sequence[str],
        after: Mapping[str, str] | None = None,
        start: t.StartName = "latest",
        accept_gaps: bool = False,
        reconnect: bool = True,
    ) -> AsyncSubscription:
        """`async for event in fs.events.subscribe(["campaign:42"]):` streams the topics' events;
        `after` (topic -> last id seen) resumes where an earlier subscription stopped."""
        return AsyncSubscription(self, topics, after, start, accept_gaps, reconnect)


class AsyncClient:
    """An asyncio flowstate client over one grpc.aio channel; create it inside the event loop.

    `timeout` (seconds) is the deadline of every call; `api_key` is sent with every call as
    `authorization: Bearer <key>`. TLS: `tls=True` (system roots) or `root_certificates` (the
    server's CA); mTLS adds `certificate_chain` and `private_key` (PEM bytes or file paths);
    `server_name` overrides the name checked in the server's certificate. Idempotent calls are
    retried by gRPC on UNAVAILABLE; failures raise `flowstate.errors` exceptions that keep the
    server's message. `tracing`: a client span per call and the W3C `traceparent` in its
    metadata, so flowstate's spans join the caller's trace. None (the default): on when
    opentelemetry-api is installed, with the global tracer provider; False: off; or a
    TracerProvider to use instead.
    """

    def __init__(
        self,
        target: str = "127.0.0.1:50051",
        *,
        timeout: float = _channel.DEFAULT_TIMEOUT,
        api_key: str | None = None,
        tls: bool = False,
        root_certificates: _channel.Pem | None = None,
        certificate_chain: _channel.Pem | None = None,
        private_key: _channel.Pem | None = None,
        server_name: str | None = None,
        options: Sequence[tuple[str, object]] = (),
        token: str | None = None,
        tracing: Any = None,
    ) -> None:
        self.timeout = timeout
        if token is not None:  # the earlier name of api_key
            api_key = api_key or token
        self._metadata = _channel.metadata(api_key)
        self._channel = _channel.open_channel(
            grpc.aio, target, tls, root_certificates, certificate_chain, private_key, server_name, options,
            tracing,
        )
        self.sessions = Sessions(self)
        self.cache = Cache(self)
        self.ratelimit = RateLimits(self)
        self.locks = Locks(self)
        self.events = Events(self)
        self.queues = AsyncQueues(self)
        self.usage = AsyncUsage(self)
        self.semantic = AsyncSemantic(self)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    async def health(self, service: str = "readiness") -> bool:
        """Whether `service` ("" = liveness, "readiness", or a service name) is SERVING."""
        try:
            r = await self._health.Check(
                health_pb2.HealthCheckRequest(service=service), timeout=self.timeout, metadata=self._metadata
            )
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None
        return r.status == health_pb2.HealthCheckResponse.SERVING

    async def close(self) -> None:
        """Flushes buffered usage events, then closes the channel."""
        await self.usage.close()
        await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
