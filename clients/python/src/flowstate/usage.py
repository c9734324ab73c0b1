"""Usage metering (`flowstate.v1.UsageService`): `record` buffers, a background flusher sends.

    fs.usage.record("llm_tokens", "ws-42", 1200, dimensions={"model": "gpt-4o"}, unique="alice")
    fs.usage.query("llm_tokens", "ws-42", since, granularity="hour")
    fs.usage.top("llm_tokens", timedelta(days=1), n=10)

`record` never waits for the network: it adds the event to an in-process buffer, summed per
(metric, subject, dimensions, unique value), and a background thread (an asyncio task for
`AsyncClient`) sends the buffer every `flush_interval` seconds, or at once when it holds
`max_batch` entries. An event counts in the buckets of the moment its flush reaches flowstate
(by flowstate's store clock), so buffering moves it by at most `flush_interval`.

Every batch carries a random `batch_id`: a batch whose call failed (flowstate unreachable, a
deadline) is kept as it is and sent again, with the same id, before anything newer, and
flowstate counts each metric and subject of a batch once however often it arrives (within its
`usage.dedup_window`, 10 minutes). A batch flowstate refuses as invalid is sent again without the
events it named (those are counted in `rejected` and logged). At most `max_buffer` entries wait
(buffered or to resend); beyond that events are dropped and counted in `dropped`. `flush()`
sends now; closing the client flushes. `record` checks its arguments' types at once.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Mapping

import grpc

from flowstate.errors import InvalidArgument, from_rpc_error
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


MAX_AMOUNT = 2**53


def _key(
    metric: str, subject: str, amount: int, dimensions: Mapping[str, str] | None, unique: str | None
) -> _Key:
    """The buffer key of an event, after checking its types (a bad event fails at the call site,
    not later in a batch)."""
    if not isinstance(metric, str) or not metric or not isinstance(subject, str) or not subject:
        raise ValueError("metric and subject must be non-empty strings")
    if isinstance(amount, bool) or not isinstance(amount, int) or abs(amount) > MAX_AMOUNT:
        raise ValueError("amount must be an int of at most 2**53 either way")
    dims = tuple(sorted((dimensions or {}).items()))
    if any(not isinstance(k, str) or not isinstance(v, str) or not k or not v for k, v in dims):
        raise ValueError("dimensions map non-empty strings to non-empty strings")
    if unique is not None and not isinstance(unique, str):
        raise ValueError("unique must be a string")
    return (metric, subject, dims, unique or "")


_EVENT = re.compile(r"^events\[(\d+)\]")


class _Batch:
    """A Record call in flight or waiting to be sent again: its id never changes."""

    def __init__(self, entries: list[tuple[_Key, int]]) -> None:
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


def _drop_refused(batch: _Batch, e: grpc.RpcError) -> int:
    """After a failed Record: the events flowstate named as invalid are dropped (returned: how
    many); any other failure is raised, and the batch is kept to be sent again."""
    error = from_rpc_error(e)
    if not isinstance(error, InvalidArgument):
        raise error from None
    dropped = batch.without_rejected(error)
    log.error("usage events refused by flowstate and dropped (%d): %s", dropped, error)
    return dropped


def _batches(entries: dict[_Key, int], max_batch: int) -> list[_Batch]:
    items = list(entries.items())
    return [_Batch(items[i : i + max_batch]) for i in range(0, len(items), max_batch)]


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
        self._outbox = _Outbox()
        self.max_buffer = max_buffer
        self.rejected = 0
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
        """Buffers one event; never blocks on the network."""
        held = self._buffer.add(_key(metric, subject, amount, dimensions, unique), amount)
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
        """Sends what waits to be sent again, then everything buffered; returns the events sent.
        On a failure the unsent batches are kept (with their ids) and the error is raised."""
        with self._flushing:
            batches = self._outbox.take() + _batches(self._buffer.take(), self.max_batch)
            sent = 0
            for i, batch in enumerate(batches):
                try:
                    while batch.entries:
                        try:
                            response = self._stub.Record(
                                batch.request(), timeout=self._client.timeout, metadata=self._client._metadata
                            )
                        except grpc.RpcError as e:
                            self.rejected += _drop_refused(batch, e)
                            continue
                        sent += response.recorded
                        break
                except BaseException:
                    self._buffer.dropped += self._outbox.keep(batches[i:], self.max_buffer)
                    raise
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
        self._outbox = _Outbox()
        self.max_buffer = max_buffer
        self.rejected = 0
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._flushing: asyncio.Lock | None = None

    @property
    def dropped(self) -> int:
        return self._buffer.dropped

    @property
    def pending(self) -> int:
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
        """Buffers one event; never blocks."""
        held = self._buffer.add(_key(metric, subject, amount, dimensions, unique), amount)
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
        """As `Usage.flush`."""
        if self._flushing is None:
            self._flushing = asyncio.Lock()
        async with self._flushing:
            batches = self._outbox.take() + _batches(self._buffer.take(), self.max_batch)
            sent = 0
            for i, batch in enumerate(batches):
                try:
                    while batch.entries:
                        try:
                            response = await self._stub.Record(
                                batch.request(), timeout=self._client.timeout, metadata=self._client._metadata
                            )
                        except grpc.RpcError as e:
                            self.rejected += _drop_refused(batch, e)
                            continue
                        sent += response.recorded
                        break
                except BaseException:
                    self._buffer.dropped += self._outbox.keep(batches[i:], self.max_buffer)
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
