"""Usage metering (`flowstate.v1.UsageService`): `record` buffers, a background flusher sends.

    fs.usage.record("llm_tokens", "ws-42", 1200, dimensions={"model": "gpt-4o"}, unique="alice")
    fs.usage.query("llm_tokens", "ws-42", since, granularity="hour")
    fs.usage.top("llm_tokens", timedelta(days=1), n=10)

`record` never waits for the network: it adds the event to an in-process buffer, summed per
(metric, subject, dimensions, unique value), and a background thread (an asyncio task for
`AsyncClient`) sends the buffer every `flush_interval` seconds, or at once when it holds
`max_batch` entries. An event counts in the buckets of the moment its flush reaches flowstate
(by flowstate's store clock), so buffering moves it by at most `flush_interval`. A flush that
fails is put back and sent with the next one; the buffer holds at most `max_buffer` entries and
counts what it had to drop in `dropped`. `flush()` sends now; closing the client flushes.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Mapping

import grpc

from flowstate.errors import from_rpc_error
from flowstate.v1 import usage_pb2, usage_pb2_grpc

if TYPE_CHECKING:
    from flowstate.aio import AsyncClient
    from flowstate.client import Client

log = logging.getLogger("flowstate.usage")

GRANULARITIES = {
    "minute": usage_pb2.GRANULARITY_MINUTE,
    "hour": usage_pb2.GRANULARITY_HOUR,
    "day": usage_pb2.GRANULARITY_DAY,
    "month": usage_pb2.GRANULARITY_MONTH,
}

_Key = tuple[str, str, tuple[tuple[str, str], ...], str]


@dataclass(frozen=True)
class UsagePoint:
    """One bucket of a series: when it starts (UTC) and its value."""

    start: datetime
    value: int


@dataclass(frozen=True)
class UsageSeries:
    """A Query's series: `value` is the group's dimension value (with `group_by`), else ""."""

    value: str
    points: list[UsagePoint]
    total: int


@dataclass(frozen=True)
class TopEntry:
    subject: str
    value: int


class _Buffer:
    """Events summed per (metric, subject, dimensions, unique) until taken; thread-safe."""

    def __init__(self, max_buffer: int) -> None:
        self._sums: dict[_Key, int] = {}
        self._lock = threading.Lock()
        self._max = max_buffer
        self.dropped = 0

    def add(self, key: _Key, amount: int) -> int:
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

    def take(self) -> dict[_Key, int]:
        with self._lock:
            taken, self._sums = self._sums, {}
            return taken

    def put_back(self, entries: dict[_Key, int]) -> None:
        with self._lock:
            for key, amount in entries.items():
                if key in self._sums:
                    self._sums[key] += amount
                elif len(self._sums) < self._max:
                    self._sums[key] = amount
                else:
                    self.dropped += 1

    def __len__(self) -> int:
        with self._lock:
            return len(self._sums)


def _key(metric: str, subject: str, dimensions: Mapping[str, str] | None, unique: str | None) -> _Key:
    return (metric, subject, tuple(sorted((dimensions or {}).items())), unique or "")


def _requests(entries: dict[_Key, int], max_batch: int) -> list[tuple[usage_pb2.RecordRequest, dict[_Key, int]]]:
    """The Record calls for `entries`, at most `max_batch` events each, with what each carries."""
    out = []
    items = list(entries.items())
    for start in range(0, len(items), max_batch):
        chunk = dict(items[start : start + max_batch])
        events = [
            usage_pb2.UsageEvent(metric=m, subject=s, amount=a, dimensions=dict(d), unique=u)
            for (m, s, d, u), a in chunk.items()
        ]
        out.append((usage_pb2.RecordRequest(events=events), chunk))
    return out


def _timestamp(value: datetime):
    from google.protobuf.timestamp_pb2 import Timestamp

    ts = Timestamp()
    ts.FromDatetime(value.astimezone(timezone.utc) if value.tzinfo else value.replace(tzinfo=timezone.utc))
    return ts


def _query_request(metric, subject, start, end, granularity, dimensions, group_by, unique):
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {sorted(GRANULARITIES)}")
    request = usage_pb2.QueryRequest(
        metric=metric,
        subject=subject,
        granularity=GRANULARITIES[granularity],
        dimensions=dict(dimensions or {}),
        group_by=group_by or "",
        unique=unique,
    )
    getattr(request, "from").CopyFrom(_timestamp(start))
    if end is not None:
        request.to.CopyFrom(_timestamp(end))
    return request


def _series(response: usage_pb2.QueryResponse) -> list[UsageSeries]:
    return [
        UsageSeries(
            value=s.value,
            points=[UsagePoint(p.start.ToDatetime(tzinfo=timezone.utc), p.value) for p in s.points],
            total=s.total,
        )
        for s in response.series
    ]


def _top_request(metric: str, window: timedelta, n: int, granularity: str | None) -> usage_pb2.TopRequest:
    from google.protobuf.duration_pb2 import Duration

    d = Duration()
    d.FromTimedelta(window)
    return usage_pb2.TopRequest(
        metric=metric, window=d, n=n, granularity=GRANULARITIES[granularity] if granularity else 0
    )


class Usage:
    """`fs.usage` of the sync `Client` (see the module docs)."""

    def __init__(
        self, client: Client, flush_interval: float = 1.0, max_batch: int = 5000, max_buffer: int = 100_000
    ) -> None:
        self._client = client
        self._stub = usage_pb2_grpc.UsageServiceStub(client._channel)
        self.flush_interval = flush_interval
        self.max_batch = max_batch
        self._buffer = _Buffer(max_buffer)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._flushing = threading.Lock()
        self._thread: threading.Thread | None = None
        self._started = threading.Lock()

    @property
    def dropped(self) -> int:
        """Events dropped because the buffer was full (flowstate unreachable for long)."""
        return self._buffer.dropped

    @property
    def pending(self) -> int:
        """Entries waiting for the next flush."""
        return len(self._buffer)

    def record(
        self,
        metric: str,
        subject: str,
        amount: int = 1,
        *,
        dimensions: Mapping[str, str] | None = None,
        unique: str | None = None,
    ) -> None:
        """Buffers one event; never blocks on the network."""
        held = self._buffer.add(_key(metric, subject, dimensions, unique), amount)
        if self._thread is None:
            self._start()
        if held >= self.max_batch:
            self._wake.set()

    def _start(self) -> None:
        with self._started:
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(target=self._run, name="flowstate-usage", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            try:
                self.flush()
            except Exception as e:  # kept in the buffer; the next flush tries again
                log.warning("usage flush failed, will retry: %s", e)

    def flush(self) -> int:
        """Sends everything buffered now; returns the events sent. On failure what was not sent
        goes back to the buffer and the error is raised."""
        with self._flushing:
            entries = self._buffer.take()
            sent = 0
            calls = _requests(entries, self.max_batch)
            for i, (request, chunk) in enumerate(calls):
                try:
                    response = self._stub.Record(
                        request, timeout=self._client.timeout, metadata=self._client._metadata
                    )
                except grpc.RpcError as e:
                    for _, rest in calls[i:]:
                        self._buffer.put_back(rest)
                    raise from_rpc_error(e) from None
                sent += response.recorded
            return sent

    def query(
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
    ) -> list[UsageSeries]:
        request = _query_request(metric, subject, start, end, granularity, dimensions, group_by, unique)
        return _series(self._call(self._stub.Query, request))

    def top(self, metric: str, window: timedelta, n: int = 10, granularity: str | None = None) -> list[TopEntry]:
        response = self._call(self._stub.Top, _top_request(metric, window, n, granularity))
        return [TopEntry(e.subject, e.value) for e in response.entries]

    def _call(self, method: Any, request: Any) -> Any:
        try:
            return method(request, timeout=self._client.timeout, metadata=self._client._metadata)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None

    def close(self) -> None:
        """Stops the flusher and sends what is left (errors are logged: the channel closes next)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=self._client.timeout + self.flush_interval)
        try:
            self.flush()
        except Exception as e:
            log.warning("usage events lost at close: %s (%d entries)", e, self.pending)


class AsyncUsage:
    """`fs.usage` of `AsyncClient`: `record` is a plain method (no await, never waits); the
    flusher is an asyncio task started by the first `record` inside a running loop."""

    def __init__(
        self, client: AsyncClient, flush_interval: float = 1.0, max_batch: int = 5000, max_buffer: int = 100_000
    ) -> None:
        self._client = client
        self._stub = usage_pb2_grpc.UsageServiceStub(client._channel)
        self.flush_interval = flush_interval
        self.max_batch = max_batch
        self._buffer = _Buffer(max_buffer)
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._flushing: asyncio.Lock | None = None

    @property
    def dropped(self) -> int:
        return self._buffer.dropped

    @property
    def pending(self) -> int:
        return len(self._buffer)

    def record(
        self,
        metric: str,
        subject: str,
        amount: int = 1,
        *,
        dimensions: Mapping[str, str] | None = None,
        unique: str | None = None,
    ) -> None:
        """Buffers one event; never blocks."""
        held = self._buffer.add(_key(metric, subject, dimensions, unique), amount)
        if self._task is None and not self._closed:
            self._wake = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run())
        if held >= self.max_batch and self._wake is not None:
            self._wake.set()

    async def _run(self) -> None:
        assert self._wake is not None
        while not self._closed:
            try:
                await asyncio.wait_for(self._wake.wait(), self.flush_interval)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.flush()
            except Exception as e:
                log.warning("usage flush failed, will retry: %s", e)

    async def flush(self) -> int:
        if self._flushing is None:
            self._flushing = asyncio.Lock()
        async with self._flushing:
            entries = self._buffer.take()
            sent = 0
            calls = _requests(entries, self.max_batch)
            for i, (request, _chunk) in enumerate(calls):
                try:
                    response = await self._stub.Record(
                        request, timeout=self._client.timeout, metadata=self._client._metadata
                    )
                except grpc.RpcError as e:
                    for _, rest in calls[i:]:
                        self._buffer.put_back(rest)
                    raise from_rpc_error(e) from None
                sent += response.recorded
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
    ) -> list[UsageSeries]:
        request = _query_request(metric, subject, start, end, granularity, dimensions, group_by, unique)
        return _series(await self._call(self._stub.Query, request))

    async def top(
        self, metric: str, window: timedelta, n: int = 10, granularity: str | None = None
    ) -> list[TopEntry]:
        response = await self._call(self._stub.Top, _top_request(metric, window, n, granularity))
        return [TopEntry(e.subject, e.value) for e in response.entries]

    async def _call(self, method: Any, request: Any) -> Any:
        try:
            return await method(request, timeout=self._client.timeout, metadata=self._client._metadata)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None

    async def close(self) -> None:
        self._closed = True
        if self._task is not None:
            assert self._wake is not None
            self._wake.set()
            try:
                await self._task
            except Exception:
                pass
        try:
            await self.flush()
        except Exception as e:
            log.warning("usage events lost at close: %s (%d entries)", e, self.pending)
