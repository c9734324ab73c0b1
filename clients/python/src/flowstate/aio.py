"""The asyncio client (grpc.aio): the same API as `flowstate.Client`, with coroutines.

    async with AsyncClient("127.0.0.1:50051") as fs:
        session = await fs.sessions.create(user_id="alice", data={"cart": b"3 items"})
        profile = await fs.cache.get_or_compute("user_profile", "alice", load_profile)
        await fs.ratelimit.enforce([("api_per_user", "alice")])
"""

from __future__ import annotations

import asyncio
import inspect
import time
from datetime import timedelta
from typing import Any, AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence, TypeVar, Union

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc  # type: ignore[import-untyped]

from flowstate import _channel
from flowstate import types as t
from flowstate.client import _RESUMABLE, StartName, _subscribe_request
from flowstate.errors import EventsExpired, FlowstateError, LockBusy, LockLost, RateLimited, from_rpc_error
from flowstate.queues import AsyncQueues
from flowstate.semantic import AsyncSemantic
from flowstate.usage import AsyncUsage
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
        compute: Callable[[], Union[bytes, Awaitable[bytes]]],
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
        deadline = time.monotonic() + max_wait.total_seconds()
        while True:
            r = await self.get(namespace, key, lease=True)
            if r.found and not r.stale:
                return r.value
            if r.lease_token:
                value = await _result(compute())
                await self.set(namespace, key, value, ttl=ttl, tags=tags, lease_token=r.lease_token)
                return value
            if r.stale:
                return r.value
            if time.monotonic() >= deadline:
                return await _result(compute())
            await asyncio.sleep(wait.total_seconds())


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


async def _result(value: Union[bytes, Awaitable[bytes]]) -> bytes:
    return await value if inspect.isawaitable(value) else value


class AsyncLock:
    """A lock held by `locks.hold` (asyncio): `fencing_token`, and `lost`, an `asyncio.Event`
    set when the background extension learns the lock is gone."""

    def __init__(self, locks: Locks, name: str, ttl: timedelta, granted: lock_pb2.AcquireLockResponse) -> None:
        self._locks = locks
        self.name = name
        self.ttl = ttl
        self.token = granted.token
        self.fencing_token = granted.fencing_token
        self.holder_id = granted.holder_id
        self.expires_at = t._dt(granted.expires_at)
        self.lost = asyncio.Event()
        self._task = asyncio.create_task(self._keep())

    async def _keep(self) -> None:
        every = self.ttl.total_seconds() / 3
        while True:
            await asyncio.sleep(every)
            try:
                self.expires_at = await self._locks.extend(self.name, self.token, self.ttl)
            except LockLost:
                self.lost.set()
                return
            except FlowstateError:
                continue

    async def release(self) -> None:
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        if self.lost.is_set():
            return
        try:
            await self._locks.release(self.name, self.token)
        except LockLost:
            self.lost.set()


class _Hold:
    """`async with fs.locks.hold(...) as lock:` (see `Locks.hold`)."""

    def __init__(self, locks: Locks, name: str, ttl: timedelta, wait: timedelta, limit: int,
                 metadata: Mapping[str, str] | None) -> None:
        self._args = (locks, name, ttl, wait, limit, metadata)
        self._lock: AsyncLock | None = None

    async def __aenter__(self) -> AsyncLock:
        locks, name, ttl, wait, limit, metadata = self._args
        granted = await locks.acquire(name, ttl, wait, limit, metadata)
        if not granted.acquired:
            raise LockBusy(name, granted.retry_after.ToTimedelta(), granted.holders)
        self._lock = AsyncLock(locks, name, ttl, granted)
        return self._lock

    async def __aexit__(self, *exc: object) -> None:
        if self._lock is not None:
            await self._lock.release()


class Locks(_Base):
    """`flowstate.v1.LockService` (asyncio), plus `hold`."""

    def __init__(self, client: AsyncClient) -> None:
        super().__init__(client)
        self._stub = lock_pb2_grpc.LockServiceStub(client._channel)

    async def acquire(self, name: str, ttl: timedelta, wait: timedelta = timedelta(0), limit: int = 1,
                      metadata: Mapping[str, str] | None = None) -> lock_pb2.AcquireLockResponse:
        request = lock_pb2.AcquireLockRequest(
            name=name, ttl=t.duration(ttl), wait=t.duration(wait), limit=limit, metadata=dict(metadata or {})
        )
        c = self._client
        timeout = max(c.timeout, wait.total_seconds() + c.timeout)
        try:
            return await self._stub.Acquire(request, timeout=timeout, metadata=c._metadata)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None

    async def extend(self, name: str, token: str, ttl: timedelta):
        request = lock_pb2.ExtendLockRequest(name=name, token=token, ttl=t.duration(ttl))
        return await self._call(self._stub.Extend, request, lambda r: t._dt(r.expires_at))

    async def release(self, name: str, token: str) -> None:
        await self._call(self._stub.Release, lock_pb2.ReleaseLockRequest(name=name, token=token), lambda r: None)

    async def inspect(self, name: str) -> t.LockInfo:
        return await self._call(self._stub.Inspect, lock_pb2.InspectLockRequest(name=name), t.lock_info)

    def hold(self, name: str, ttl: timedelta = timedelta(seconds=30), wait: timedelta = timedelta(seconds=10),
             limit: int = 1, metadata: Mapping[str, str] | None = None) -> _Hold:
        """`async with fs.locks.hold("campaign:42") as lock:` (see the sync client)."""
        return _Hold(self, name, ttl, wait, limit, metadata)


class AsyncSubscription:
    """`async for event in fs.events.subscribe([...]):` resuming by itself (see the sync
    `Subscription`)."""

    def __init__(self, events: Events, topics: Sequence[str], after: Mapping[str, str] | None,
                 start: StartName, accept_gaps: bool, reconnect: bool) -> None:
        self._events = events
        self.topics = list(topics)
        self.positions: dict[str, str] = dict(after or {})
        self._start = start
        self._accept_gaps = accept_gaps
        self._reconnect = reconnect
        self._call = None
        self._closed = False
        self.resumes = 0

    def close(self) -> None:
        self._closed = True
        if self._call is not None:
            self._call.cancel()

    async def __aiter__(self) -> AsyncIterator[t.Event | t.Gap]:
        pause = 0.05
        while not self._closed:
            c = self._events._client
            request = _subscribe_request(self.topics, self.positions, self._start, self._accept_gaps)
            self._call = self._events._stub.Subscribe(request, metadata=c._metadata)
            try:
                async for message in self._call:
                    kind = message.WhichOneof("kind")
                    if kind == "subscribed":
                        self.positions.update(dict(message.subscribed.positions))
                        pause = 0.05
                    elif kind == "event":
                        self.positions[message.event.topic] = message.event.id
                        yield t.event(message.event)
                    elif kind == "gap":
                        g = message.gap
                        yield t.Gap(topic=g.topic, after=g.after, first_id=g.first_id)
            except asyncio.CancelledError:
                if self._closed:
                    return
                raise
            except grpc.RpcError as e:
                if self._closed:
                    return
                err = from_rpc_error(e)
                if isinstance(err, EventsExpired) or not self._reconnect:
                    raise err from None
                if not isinstance(err, _RESUMABLE) and e.code() != grpc.StatusCode.CANCELLED:
                    raise err from None
            self.resumes += 1
            await asyncio.sleep(pause)
            pause = min(pause * 2, 2.0)


class Events(_Base):
    """`flowstate.v1.EventService` (asyncio)."""

    def __init__(self, client: AsyncClient) -> None:
        super().__init__(client)
        self._stub = events_pb2_grpc.EventServiceStub(client._channel)

    async def publish(self, topic: str, payload: bytes, key: str = "") -> str:
        request = events_pb2.PublishRequest(topic=topic, payload=payload, key=key)
        return await self._call(self._stub.Publish, request, lambda r: r.id)

    def subscribe(self, topics: Sequence[str], after: Mapping[str, str] | None = None, start: StartName = "latest",
                  accept_gaps: bool = False, reconnect: bool = True) -> AsyncSubscription:
        return AsyncSubscription(self, topics, after, start, accept_gaps, reconnect)


class AsyncClient:
    """An asyncio flowstate client over one grpc.aio channel; create it inside the event loop.

    `timeout` (seconds) is the deadline of every call; `api_key` is sent with every call as
    `authorization: Bearer <key>`. TLS: `tls=True` (system roots) or `root_certificates` (the
    server's CA); mTLS adds `certificate_chain` and `private_key` (PEM bytes or file paths);
    `server_name` overrides the name checked in the server's certificate. Idempotent calls are retried by gRPC on
    UNAVAILABLE; failures raise `flowstate.errors` exceptions that keep the server's message.
    `tracing`: a client span per call and the W3C `traceparent` in its metadata, so flowstate's
    spans join the caller's trace. None (the default): on when opentelemetry-api is installed,
    with the global tracer provider; False: off; or a TracerProvider to use instead.
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


__all__ = ["AsyncClient", "FlowstateError"]
