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
from typing import Any, Awaitable, Callable, Iterable, Mapping, Sequence, TypeVar, Union

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc  # type: ignore[import-untyped]

from flowstate import _channel
from flowstate import types as t
from flowstate.errors import FlowstateError, RateLimited, from_rpc_error
from flowstate.v1 import (
    cache_pb2,
    cache_pb2_grpc,
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


class AsyncClient:
    """An asyncio flowstate client over one grpc.aio channel; create it inside the event loop.

    `timeout` (seconds) is the deadline of every call; `api_key` is sent with every call as
    `authorization: Bearer <key>`. TLS: `tls=True` (system roots) or `root_certificates` (the
    server's CA); mTLS adds `certificate_chain` and `private_key` (PEM bytes or file paths);
    `server_name` overrides the name checked in the server's certificate. Idempotent calls are retried by gRPC on
    UNAVAILABLE; failures raise `flowstate.errors` exceptions that keep the server's message.
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
    ) -> None:
        self.timeout = timeout
        if token is not None:  # the earlier name of api_key
            api_key = api_key or token
        self._metadata = _channel.metadata(api_key)
        self._channel = _channel.open_channel(
            grpc.aio, target, tls, root_certificates, certificate_chain, private_key, server_name, options
        )
        self.sessions = Sessions(self)
        self.cache = Cache(self)
        self.ratelimit = RateLimits(self)
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
        await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


__all__ = ["AsyncClient", "FlowstateError"]
