"""`fs.semantic` of `AsyncClient` (see `flowstate.semantic`)."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Mapping

import grpc

from flowstate import types as t
from flowstate._concurrency import async_resolve
from flowstate._sansio import SEMANTIC_OUTAGE, semantic_not_stored
from flowstate.errors import FlowstateError, from_rpc_error
from flowstate.v1 import semantic_pb2, semantic_pb2_grpc

if TYPE_CHECKING:
    from flowstate._async.client import AsyncClient


class AsyncSemantic:
    """`flowstate.v1.SemanticCacheService`, plus `get_or_compute`."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client
        self._stub = semantic_pb2_grpc.SemanticCacheServiceStub(client._channel)

    async def _call(self, method: Callable[..., Any], request: Any) -> Any:
        c = self._client
        try:
            return await method(request, timeout=c.timeout, metadata=c._metadata)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None

    async def set(
        self,
        namespace: str,
        embedding: t.Embedding,
        value: bytes,
        ttl: timedelta | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> int:
        """Stores `value` under `embedding`; returns the entry's id."""
        request = t.semantic_set_request(namespace, embedding, value, ttl, metadata)
        return (await self._call(self._stub.Set, request)).id

    async def get(
        self, namespace: str, embedding: t.Embedding, min_similarity: float | None = None
    ) -> t.SemanticHit | None:
        """The most similar live entry at or above the threshold, or None."""
        request = t.semantic_get_request(namespace, embedding, min_similarity)
        return t.semantic_hit(await self._call(self._stub.Get, request))

    async def delete(self, namespace: str, id: int) -> bool:
        """Deletes one entry; whether it was live."""
        request = semantic_pb2.SemanticDeleteRequest(namespace=namespace, id=id)
        return (await self._call(self._stub.Delete, request)).deleted

    async def get_or_compute(
        self,
        namespace: str,
        embedding: t.Embedding,
        compute: Callable[[], bytes | Awaitable[bytes]],
        min_similarity: float | None = None,
        ttl: timedelta | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> bytes:
        """The value of the most similar entry, or `compute()`'s, stored for the next caller.
        `compute` may be a plain function or a coroutine function.

        If flowstate is unreachable (UNAVAILABLE, DEADLINE_EXCEEDED) the value is computed and
        returned anyway: a cache outage costs a computation, not an error. Errors of the lookup
        (a wrong dimension, an unknown namespace) raise before anything is computed; once the
        value is computed it is returned even if storing it fails (a value over the namespace's
        limit is logged, not lost).
        """
        try:
            hit = await self.get(namespace, embedding, min_similarity)
        except SEMANTIC_OUTAGE:
            return await async_resolve(compute())
        if hit is not None:
            return hit.value
        value = await async_resolve(compute())
        try:
            await self.set(namespace, embedding, value, ttl=ttl, metadata=metadata)
        except FlowstateError as e:
            semantic_not_stored(namespace, e)
        return value
