"""The decisions of the client's longer-running behaviours, without I/O (sans-IO).

Each object here is told what a call answered (or that it failed) and says what to do next:
return, compute, wait so long, resume, give up. The callers in `flowstate/_async` (and the sync
code generated from it) make the calls, sleep and run the threads or tasks, so both flavours
decide alike, and the decisions are tested without a server (`tests/test_sansio.py`).

- `CacheFill`: `cache.get_or_compute` (leases: one caller computes, the others wait or serve
  stale); `semantic_outage` and `semantic_not_stored`: `semantic.get_or_compute`.
- `Resume`: a subscription's positions and when it resumes (`events.subscribe`).
- `KeepAlive`: how often a lock or a job's lease is extended and when that stops.
- `Backoff`, `Settle`, `failure_text`: the worker loop (fetch, handler outcome, Ack or Fail).
- `Buffer`, `Batch`, `Outbox`: usage events summed, batched and sent again (`fs.usage`).
"""

from __future__ import annotations

import logging
import re
import threading
import time
import traceback
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal, Mapping, Sequence

import grpc

from flowstate import types as t
from flowstate.errors import (
    DeadlineExceeded,
    EventsExpired,
    FlowstateError,
    InvalidArgument,
    LeaseLost,
    LockLost,
    ResourceExhausted,
    Unavailable,
    from_rpc_error,
)
from flowstate.v1 import events_pb2, usage_pb2


class Backoff:
    """A pause that doubles after each failure, up to `most`, and starts over after a success."""

    def __init__(self, first: float = 0.05, most: float = 2.0) -> None:
        self.first = first
        self.most = most
        self.pause = first

    def failed(self) -> float:
        """The pause to make now (the next one is twice as long)."""
        pause = self.pause
        self.pause = min(pause * 2, self.most)
        return pause

    def succeeded(self) -> None:
        self.pause = self.first


# -- cache.get_or_compute --------------------------------------------------------------------


@dataclass(frozen=True)
class CacheStep:
    """What get_or_compute does next: return `value`, `compute` (and store the result under
    `lease_token` when it holds the lease), or `wait` seconds and read again."""

    kind: Literal["value", "compute", "wait"]
    value: bytes = b""
    lease_token: str | None = None
    wait: float = 0.0


class CacheFill:
    """`cache.get_or_compute` after each Get with `lease=True`: a fresh hit is returned; the
    caller granted the lease computes and stores; the others take the stale value when there is
    one, or read again every `wait` for the lease holder's result; after `max_wait` without a
    value a waiter computes for itself (and does not store: it holds no lease)."""

    def __init__(self, wait: timedelta, max_wait: timedelta, now: float) -> None:
        self.wait = wait.total_seconds()
        self.deadline = now + max_wait.total_seconds()

    def after(self, r: t.CacheResult, now: float) -> CacheStep:
        if r.found and not r.stale:
            return CacheStep("value", r.value)
        if r.lease_token:
            return CacheStep("compute", lease_token=r.lease_token)
        if r.stale:
            return CacheStep("value", r.value)
        if now >= self.deadline:
            return CacheStep("compute")
        return CacheStep("wait", wait=self.wait)


# -- semantic.get_or_compute -----------------------------------------------------------------

SEMANTIC_OUTAGE = (Unavailable, DeadlineExceeded)
"""A cache that cannot be reached must not stop the caller: get_or_compute computes instead
(other lookup errors, a wrong dimension or an unknown namespace, raise)."""

_semantic_log = logging.getLogger("flowstate.semantic")


def semantic_not_stored(namespace: str, error: FlowstateError) -> None:
    """A computed value that could not be stored is still the caller's answer: say why once."""
    if isinstance(error, SEMANTIC_OUTAGE):
        _semantic_log.debug("semantic cache %s: value not stored: %s", namespace, error)
    else:
        _semantic_log.warning("semantic cache %s: value not stored: %s", namespace, error)


# -- events.subscribe ------------------------------------------------------------------------

# The statuses after which a subscription resumes from its last positions: the store or the
# server was unavailable, the subscriber fell behind, the connection or the server went away.
RESUMABLE = (Unavailable, ResourceExhausted)


class Resume:
    """A subscription's state: `positions` is, per topic, the id of the last event handed out;
    after a dropped connection, an UNAVAILABLE store or a slow-subscriber cut-off it subscribes
    again from there (with a growing pause), so nothing is lost or repeated."""

    def __init__(self, topics: Sequence[str], after: Mapping[str, str] | None, start: t.StartName,
                 accept_gaps: bool, reconnect: bool) -> None:
        self.topics = list(topics)
        self.positions: dict[str, str] = dict(after or {})
        self.start = start
        self.accept_gaps = accept_gaps
        self.reconnect = reconnect
        self.resumes = 0
        self._backoff = Backoff(0.05, 2.0)

    def request(self) -> events_pb2.SubscribeRequest:
        """The Subscribe to send (again): from the positions reached so far."""
        return t.subscribe_request(self.topics, self.positions, self.start, self.accept_gaps)

    def received(self, message: events_pb2.SubscribeResponse) -> t.Event | t.Gap | None:
        """What to hand out for a streamed message, if anything."""
        kind = message.WhichOneof("kind")
        if kind == "subscribed":
            # From here on, positions say where to resume (LATEST included).
            self.positions.update(dict(message.subscribed.positions))
            self._backoff.succeeded()
        elif kind == "event":
            self.positions[message.event.topic] = message.event.id
            return t.event(message.event)
        elif kind == "gap":
            g = message.gap
            return t.Gap(topic=g.topic, after=g.after, first_id=g.first_id)
        return None

    def failed(self, error: grpc.RpcError) -> FlowstateError | None:
        """The error to raise for a stream that failed, or None to resume: an expired position
        (`EventsExpired`) always raises, the rest only without `reconnect` or when it is not
        an outage or a dropped connection."""
        err = from_rpc_error(error)
        if isinstance(err, EventsExpired) or not self.reconnect:
            return err
        if not isinstance(err, RESUMABLE) and error.code() != grpc.StatusCode.CANCELLED:
            return err
        return None

    def resume(self) -> float:
        """Counts a resume (after a failure or after the server ended the stream, as it does
        when shutting down); the pause to make before it."""
        self.resumes += 1
        return self._backoff.failed()


# -- locks and leases ------------------------------------------------------------------------


class KeepAlive:
    """A lock (or a job's lease) extended at a third of its TTL: two chances to succeed before
    it would lapse. Only its loss (FAILED_PRECONDITION) stops the extensions: a failure to reach
    flowstate is tried again at the next turn, the TTL being the bound."""

    def __init__(self, ttl: timedelta) -> None:
        self.every = ttl.total_seconds() / 3
        # How long one extension may take, for a job: a sixth of the lease, so a hung call
        # cannot make the lease run out before the next one is due.
        self.call_timeout = max(ttl.total_seconds() / 6, 0.05)

    @staticmethod
    def lost(error: FlowstateError) -> bool:
        """Whether a failed extension means the lock or lease is gone (stop, and say so)."""
        return isinstance(error, (LockLost, LeaseLost))


# -- the worker loop -------------------------------------------------------------------------

log = logging.getLogger("flowstate.queues")

FETCH_BACKOFF_MAX = 2.0
"""Seconds: the longest pause between fetches while flowstate is unreachable."""


def failure_text(exc: BaseException) -> str:
    """A failed attempt's error, as the job keeps it: the handler's traceback."""
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


def job_heartbeat(job: t.Job) -> KeepAlive:
    """A running job's heartbeat: every third of its timeout (at least 10 ms)."""
    return KeepAlive(max(job.timeout, timedelta(milliseconds=30)))


def lease_left(job: t.Job) -> float:
    """Seconds until the job's lease runs out, counted from when it was granted or last
    extended (a little early: the request's own trip is counted against it)."""
    return job._deadline - time.monotonic()


class Settle:
    """Ack or Fail, tried again while flowstate is unreachable until the job's lease runs out (a
    replica restarting must not make finished jobs run again)."""

    HANDLED = (LeaseLost, Unavailable, DeadlineExceeded, ResourceExhausted)
    """The failures `retry_after` decides on; any other one is raised to the worker loop."""

    def __init__(self, job: t.Job) -> None:
        self.job = job
        self._backoff = Backoff(0.05, 0.5)

    def retry_after(self, error: FlowstateError) -> float | None:
        """The pause before trying again, or None to stop (logged): the lease was lost (it ran
        out, or an earlier try landed and its answer was lost), or it runs out before then."""
        if isinstance(error, LeaseLost):
            log.warning("job %s: lease lost before it was settled; it may run again", self.job.id)
            return None
        if lease_left(self.job) < self._backoff.pause:
            log.error("job %s: could not be settled (%s); it runs again", self.job.id, error)
            return None
        return self._backoff.failed()


# -- usage events ----------------------------------------------------------------------------

_usage_log = logging.getLogger("flowstate.usage")


class Buffer:
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


class Batch:
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
        _usage_log.error("usage events refused by flowstate and dropped (%d): %s", dropped, error)
        return dropped


def batches(entries: dict[t.UsageKey, int], max_batch: int) -> list[Batch]:
    items = list(entries.items())
    return [Batch(items[i : i + max_batch]) for i in range(0, len(items), max_batch)]


class Outbox:
    """Batches to send again, oldest first, bounded (with the buffer) by `max_buffer` entries.
    Batches a flush has taken stay counted (`in_flight`) until sent or kept, so `pending` never
    reads zero while a flush that will fail is still in the air."""

    def __init__(self) -> None:
        self.batches: list[Batch] = []
        self.in_flight: list[Batch] = []
        self.lock = threading.Lock()

    def size(self) -> int:
        with self.lock:
            return sum(len(b.entries) for b in self.batches) + sum(len(b.entries) for b in self.in_flight)

    def take(self, buffer: Buffer, max_batch: int) -> list[Batch]:
        """Takes the batches to send again, then everything buffered, in one step under the lock."""
        with self.lock:
            taken = self.batches + batches(buffer.take(), max_batch)
            self.batches, self.in_flight = [], list(taken)
            return taken

    def sent(self, batch: Batch) -> None:
        with self.lock:
            self.in_flight = [b for b in self.in_flight if b is not batch]

    def keep(self, batches: list[Batch], limit: int) -> int:
        """Keeps `batches` (before newer ones); returns the entries dropped to stay in `limit`."""
        with self.lock:
            self.in_flight = []
            self.batches = [b for b in batches if b.entries] + self.batches
            dropped = 0
            while self.batches and sum(len(b.entries) for b in self.batches) > limit:
                dropped += len(self.batches.pop(0).entries)
            return dropped
