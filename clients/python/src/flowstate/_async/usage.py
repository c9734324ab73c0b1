"""`fs.usage` of `AsyncClient` (see `flowstate.usage`)."""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Mapping

import grpc

from flowstate import types as t
from flowstate._concurrency import AsyncBackground, AsyncEvent, AsyncMutex
from flowstate._sansio import Buffer, Outbox
from flowstate.errors import from_rpc_error
from flowstate.v1 import usage_pb2_grpc

if TYPE_CHECKING:
    from flowstate._async.client import AsyncClient

log = logging.getLogger("flowstate.usage")


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
        self._buffer = Buffer(max_buffer)
        self._outbox = Outbox()
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
            todo = self._outbox.take(self._buffer, self.max_batch)
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
                        self._outbox.sent(batch)
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
