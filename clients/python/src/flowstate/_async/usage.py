"""`fs.usage` of `AsyncClient` (see `flowstate.usage`)."""

from __future__ import annotations

import logging
import re
import threading
import uuid
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Mapping

import grpc

from flowstate import types as t
from flowstate._concurrency import AsyncBackground, AsyncEvent, AsyncMutex
from flowstate.errors import InvalidArgument, from_rpc_error
from flowstate.v1 import usage_pb2, usage_pb2_grpc

if TYPE_CHECKING:
    from flowstate._async.client import AsyncClient

log = logging.getLogger("flowstate.usage")


class _Buffer:
    """Events summed per (metric, subject, dimensions, unique) until taken; thread-safe."""

    def __init__(self, max_buffer: int) -> None:
        self._sums: dict[t.UsageKey, int] = {}
        self._lock = threading.Lock()
        self._max = max_buffer
        self.dropped = 0

    def add(self, key: t.UsageKey, amount: int) -> int:
        """Adds an event; returns the entries held (0 if it was dropped)."""
        with self._lock:
            if key in self._sums:
                self._sums[key] += amount
            elif len(self._sums) < self._max:
                self._sums[key] = amount
            else:
                self.dropped += 1
                return 0
            return len(self._sums)

    def take(self) -> dict[t.UsageKey, int]:
        with self._lock:
            taken, self._sums = self._sums, {}
            return taken

    def __len__(self) -> int:
        with self._lock:
            return len(self._sums)


_EVENT = re.compile(r"^events\[(\d+)\]")


class _Batch:
    """A Record call in flight or waiting to be sent again: its id never changes."""

    def __init__(self, entries: list[tuple[t.UsageKey, int]]) -> None:
        self.id = uuid.uuid4().hex
        self.entries = entries

    def request(self) -> usage_pb2.RecordRequest:
        events = [
            usage_pb2.UsageEvent(metric=m, subject=s, amount=a, dimensions=dict(d), unique=u)
            for (m, s, d, u), a in self.entries
        ]
        return usage_pb2.RecordRequest(events=events, batch_id=self.id)

    def without_rejected(self, error: InvalidArgument) -> int:
        """Drops the events the server named as invalid; returns how many (all of them when it
        named none: the batch cannot be sent as it is)."""
        bad = {int(m.group(1)) for f in error.field_violations if (m := _EVENT.match(f))}
        if not bad:
            dropped = len(self.entries)
            self.entries = []
            return dropped
        self.entries = [e for i, e in enumerate(self.entries) if i not in bad]
        return len(bad)

    def drop_refused(self, e: grpc.RpcError) -> int:
        """After a failed Record: the events flowstate named as invalid are dropped (returned:
        how many); any other failure is raised, and the batch is kept to be sent again."""
        error = from_rpc_error(e)
        if not isinstance(error, InvalidArgument):
            raise error from None
        dropped = self.without_rejected(error)
        log.error("usage events refused by flowstate and dropped (%d): %s", dropped, error)
        return dropped


def _batches(entries: dict[t.UsageKey, int], max_batch: int) -> list[_Batch]:
    items = list(entries.items())
    return [_Batch(items[i : i + max_batch]) for i in range(0, len(items), max_batch)]


class _Outbox:
    """Batches to send again, oldest first, bounded (with the buffer) by `max_buffer` entries."""

    def __init__(self) -> None:
        self.batches: list[_Batch] = []
        self.lock = threading.Lock()

    def size(self) -> int:
        with self.lock:
            return sum(len(b.entries) for b in self.batches)

    def take(self) -> list[_Batch]:
        with self.lock:
            taken, self.batches = self.batches, []
            return taken

    def keep(self, batches: list[_Batch], limit: int) -> int:
        """Keeps `batches` (before newer ones); returns the entries dropped to stay in `limit`."""
        with self.lock:
            self.batches = [b for b in batches if b.entries] + self.batches
            dropped = 0
            while self.batches and sum(len(b.entries) for b in self.batches) > limit:
                dropped += len(self.batches.pop(0).entries)
            return dropped


class AsyncUsage:
    """`fs.usage` of `AsyncClient` (see `flowstate.usage`): `record` is a plain method that never
    waits; the flusher runs as an asyncio task, started by the first `record` inside a running
    loop."""

    def __init__(
        self, client: AsyncClient, flush_interval: float = 1.0, max_batch: int = 5000, max_buffer: int = 100_000
    ) -> None:
        self._client = client
        self._stub = usage_pb2_grpc.UsageServiceStub(client._channel)
        self.flush_interval = flush_interval
        self.max_batch = max_batch
        self._buffer = _Buffer(max_buffer)
        self._outbox = _Outbox()
        self.max_buffer = max_buffer
        self.rejected = 0
        self._wake = AsyncEvent()
        self._closed = False
        self._flushing = AsyncMutex()
        self._flusher: AsyncBackground | None = None
        self._starting = threading.Lock()

    @property
    def dropped(self) -> int:
        """Events dropped because the buffer was full (flowstate unreachable for long)."""
        return self._buffer.dropped

    @property
    def pending(self) -> int:
        """Entries waiting for the next flush (buffered, or to be sent again)."""
        return len(self._buffer) + self._outbox.size()

    def record(
        self,
        metric: str,
        subject: str,
        amount: int = 1,
        *,
        dimensions: Mapping[str, str] | None = None,
        unique: str | None = None,
    ) -> None:
        """Buffers one event; never waits for the network."""
        held = self._buffer.add(t.usage_key(metric, subject, amount, dimensions, unique), amount)
        if self._flusher is None:
            self._start()
        if held >= self.max_batch:
            self._wake.set()

    def _start(self) -> None:
        with self._starting:
            if self._flusher is None and not self._closed:
                self._flusher = AsyncBackground(self._run, "flowstate-usage")

    async def _run(self) -> None:
        while not self._closed:
            await self._wake.wait(self.flush_interval)
            self._wake.clear()
            try:
                await self.flush()
            except Exception as e:  # kept in the buffer; the next flush tries again
                log.warning("usage flush failed, will retry: %s", e)

    async def flush(self) -> int:
        """Sends what waits to be sent again, then everything buffered; returns the events sent.
        On a failure the unsent batches are kept (with their ids) and the error is raised."""
        async with self._flushing:
            todo = self._outbox.take() + _batches(self._buffer.take(), self.max_batch)
            sent = 0
            for i, batch in enumerate(todo):
                try:
                    while batch.entries:
                        try:
                            response = await self._stub.Record(
                                batch.request(), timeout=self._client.timeout, metadata=self._client._metadata
                            )
                        except grpc.RpcError as e:
                            self.rejected += batch.drop_refused(e)
                            continue
                        sent += response.recorded
                        break
                except BaseException:
                    self._buffer.dropped += self._outbox.keep(todo[i:], self.max_buffer)
                    raise
            return sent

    async def query(
        self,
        metric: str,
        subject: str,
        start: datetime,
        end: datetime | None = None,
        *,
        granularity: str = "hour",
        dimensions: Mapping[str, str] | None = None,
        group_by: str | None = None,
        unique: bool = False,
    ) -> list[t.UsageSeries]:
        request = t.usage_query_request(metric, subject, start, end, granularity, dimensions, group_by, unique)
        return t.usage_series(await self._call(self._stub.Query, request))

    async def top(
        self, metric: str, window: timedelta, n: int = 10, granularity: str | None = None
    ) -> list[t.TopEntry]:
        return t.top_entries(await self._call(self._stub.Top, t.usage_top_request(metric, window, n, granularity)))

    async def _call(self, method: Any, request: Any) -> Any:
        try:
            return await method(request, timeout=self._client.timeout, metadata=self._client._metadata)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None

    async def close(self) -> None:
        """Stops the flusher and sends what is left (errors are logged: the channel closes next)."""
        self._closed = True
        self._wake.set()
        if self._flusher is not None:
            await self._flusher.join(self._client.timeout + self.flush_interval)
        try:
            await self.flush()
        except Exception as e:
            log.warning("usage events lost at close: %s (%d entries)", e, self.pending)
