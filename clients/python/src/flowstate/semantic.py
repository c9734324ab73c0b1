"""The semantic cache (`flowstate.v1.SemanticCacheService`): answers found by meaning.

    answer = fs.semantic.get_or_compute("llm_answers", embed(prompt), lambda: llm(prompt))

You compute the embedding (flowstate ships no model); flowstate finds the most similar entry of
the namespace stored by any replica (cosine similarity at or above the namespace's threshold,
or `min_similarity`). A namespace is configured on the server (`semantic.namespaces.<name>`:
dimension, threshold, TTL, size). Entries belong to the caller's tenant.
"""

from __future__ import annotations

import inspect
import logging
import math
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Mapping, Sequence, TypeVar, Union

import grpc

from flowstate import types as t
from flowstate.errors import DeadlineExceeded, FlowstateError, InvalidArgument, Unavailable, from_rpc_error
from flowstate.v1 import semantic_pb2, semantic_pb2_grpc

if TYPE_CHECKING:
    from flowstate.aio import AsyncClient
    from flowstate.client import Client

R = TypeVar("R")

Embedding = Sequence[float]


@dataclass(frozen=True)
class SemanticHit:
    """An entry a Get found: its id, how similar it is, its value and labels, its time left."""

    id: int
    similarity: float
    value: bytes
    metadata: Mapping[str, str] = field(default_factory=dict)
    ttl_remaining: timedelta = timedelta(0)


def _embedding(embedding: Embedding) -> list[float]:
    """The embedding as a list of floats; raises InvalidArgument at once for what flowstate
    would refuse anyway (not numbers, empty, NaN or infinite)."""
    try:
        values = [float(x) for x in embedding]
    except (TypeError, ValueError):
        values = []
    if not values or not all(math.isfinite(x) for x in values):
        problem = "a non-empty sequence of finite numbers"
        raise InvalidArgument(f"embedding: {problem}", grpc.StatusCode.INVALID_ARGUMENT, {"embedding": problem})
    return values


def _set_request(
    namespace: str,
    embedding: Embedding,
    value: bytes,
    ttl: timedelta | None,
    metadata: Mapping[str, str] | None,
) -> semantic_pb2.SemanticSetRequest:
    return semantic_pb2.SemanticSetRequest(
        namespace=namespace,
        embedding=_embedding(embedding),
        value=value,
        ttl=t.duration(ttl),
        metadata=dict(metadata or {}),
    )


def _get_request(
    namespace: str, embedding: Embedding, min_similarity: float | None
) -> semantic_pb2.SemanticGetRequest:
    request = semantic_pb2.SemanticGetRequest(namespace=namespace, embedding=_embedding(embedding))
    if min_similarity is not None:
        request.min_similarity = min_similarity
    return request


def _hit(r: semantic_pb2.SemanticGetResponse) -> SemanticHit | None:
    if not r.found:
        return None
    return SemanticHit(
        id=r.id,
        similarity=r.similarity,
        value=r.value,
        metadata=dict(r.metadata),
        ttl_remaining=r.ttl.ToTimedelta(),
    )


# A cache that cannot be reached must not stop the caller: get_or_compute computes instead.
_OUTAGE = (Unavailable, DeadlineExceeded)

log = logging.getLogger("flowstate.semantic")


def _not_stored(namespace: str, error: FlowstateError) -> None:
    """A computed value that could not be stored is still the caller's answer: say why once."""
    if isinstance(error, _OUTAGE):
        log.debug("semantic cache %s: value not stored: %s", namespace, error)
    else:
        log.warning("semantic cache %s: value not stored: %s", namespace, error)


class Semantic:
    """`flowstate.v1.SemanticCacheService`, plus `get_or_compute`."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._stub = semantic_pb2_grpc.SemanticCacheServiceStub(client._channel)

    def _call(self, method: Callable[..., Any], request: Any) -> Any:
        c = self._client
        try:
            return method(request, timeout=c.timeout, metadata=c._metadata)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None

    def set(
        self,
        namespace: str,
        embedding: Embedding,
        value: bytes,
        ttl: timedelta | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> int:
        """Stores `value` under `embedding`; returns the entry's id."""
        request = _set_request(namespace, embedding, value, ttl, metadata)
        return self._call(self._stub.Set, request).id

    def get(
        self, namespace: str, embedding: Embedding, min_similarity: float | None = None
    ) -> SemanticHit | None:
        """The most similar live entry at or above the threshold, or None."""
        return _hit(self._call(self._stub.Get, _get_request(namespace, embedding, min_similarity)))

    def delete(self, namespace: str, id: int) -> bool:
        """Deletes one entry; whether it was live."""
        request = semantic_pb2.SemanticDeleteRequest(namespace=namespace, id=id)
        return self._call(self._stub.Delete, request).deleted

    def get_or_compute(
        self,
        namespace: str,
        embedding: Embedding,
        compute: Callable[[], bytes],
        min_similarity: float | None = None,
        ttl: timedelta | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> bytes:
        """The value of the most similar entry, or `compute()`'s, stored for the next caller.

        If flowstate is unreachable (UNAVAILABLE, DEADLINE_EXCEEDED) the value is computed and
        returned anyway: a cache outage costs a computation, not an error. Errors of the lookup
        (a wrong dimension, an unknown namespace) raise before anything is computed; once the
        value is computed it is returned even if storing it fails (a value over the namespace's
        limit is logged, not lost).
        """
        try:
            hit = self.get(namespace, embedding, min_similarity)
        except _OUTAGE:
            return compute()
        if hit is not None:
            return hit.value
        value = compute()
        try:
            self.set(namespace, embedding, value, ttl=ttl, metadata=metadata)
        except FlowstateError as e:
            _not_stored(namespace, e)
        return value


Compute = Callable[[], Union[bytes, Awaitable[bytes]]]


class AsyncSemantic:
    """`Semantic` for `AsyncClient`: the same methods, as coroutines."""

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
        embedding: Embedding,
        value: bytes,
        ttl: timedelta | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> int:
        request = _set_request(namespace, embedding, value, ttl, metadata)
        return (await self._call(self._stub.Set, request)).id

    async def get(
        self, namespace: str, embedding: Embedding, min_similarity: float | None = None
    ) -> SemanticHit | None:
        return _hit(await self._call(self._stub.Get, _get_request(namespace, embedding, min_similarity)))

    async def delete(self, namespace: str, id: int) -> bool:
        request = semantic_pb2.SemanticDeleteRequest(namespace=namespace, id=id)
        return (await self._call(self._stub.Delete, request)).deleted

    async def get_or_compute(
        self,
        namespace: str,
        embedding: Embedding,
        compute: Compute,
        min_similarity: float | None = None,
        ttl: timedelta | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> bytes:
        """As `Semantic.get_or_compute`; `compute` may be a plain function or a coroutine
        function."""
        try:
            hit = await self.get(namespace, embedding, min_similarity)
        except _OUTAGE:
            return await _computed(compute)
        if hit is not None:
            return hit.value
        value = await _computed(compute)
        try:
            await self.set(namespace, embedding, value, ttl=ttl, metadata=metadata)
        except FlowstateError as e:
            _not_stored(namespace, e)
        return value


async def _computed(compute: Compute) -> bytes:
    value = compute()
    return await value if inspect.isawaitable(value) else value
