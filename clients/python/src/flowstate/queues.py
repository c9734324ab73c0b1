"""Job queues (`flowstate.v1.QueueService`) and the worker runners.

    fs.queues.enqueue("emails", b'{"to": "a@example.com"}', delay=timedelta(minutes=5))

    def send(job: Job) -> None:
        ...  # raise to fail the attempt (retried with backoff, dead after max_attempts)

    Worker(fs, ["emails"], send, concurrency=8).run()  # until SIGTERM / SIGINT

Delivery is at least once: a job whose worker dies (or whose lease runs out) runs again, so
handlers must be idempotent. A `Worker` extends the lease of every running job in the
background (a heartbeat every third of its timeout), turns an exception into `Fail` with the
traceback, and on SIGTERM stops fetching, lets running jobs finish within `shutdown_grace`,
and gives the rest back (ready again at once, the attempt not counted).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import signal
import threading
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Literal, Mapping, Sequence, Union

import grpc
from google.protobuf import timestamp_pb2

from flowstate import types as t
from flowstate.errors import (
    DeadlineExceeded,
    FlowstateError,
    LeaseLost,
    LockLost,
    ResourceExhausted,
    Unavailable,
    from_rpc_error,
)
from flowstate.v1 import queue_pb2, queue_pb2_grpc

if TYPE_CHECKING:
    from flowstate.aio import AsyncClient
    from flowstate.client import Client

log = logging.getLogger("flowstate.queues")

Priority = Literal["high", "normal", "low"]
_PRIORITY = {
    "high": queue_pb2.JOB_PRIORITY_HIGH,
    "normal": queue_pb2.JOB_PRIORITY_NORMAL,
    "low": queue_pb2.JOB_PRIORITY_LOW,
}
_PRIORITY_NAME = {v: k for k, v in _PRIORITY.items()}


@dataclass
class Enqueued:
    id: str
    duplicate: bool
    run_at: datetime


@dataclass
class Job:
    """A leased job. `lost` is set when its lease was lost (its heartbeat was refused): another
    worker may be running it, so a long handler should stop."""

    queue: str
    id: str
    payload: bytes
    lease_token: str
    attempt: int
    max_attempts: int
    enqueued_at: datetime
    lease_expires_at: datetime
    last_error: str
    priority: Priority
    waited: timedelta
    timeout: timedelta
    lost: threading.Event = field(default_factory=threading.Event, repr=False)
    # When the lease runs out by this process's monotonic clock (renewed by each extension), so
    # a skewed wall clock cannot mislead the worker.
    _deadline: float = field(default=0.0, repr=False)


@dataclass
class DeadJob:
    id: str
    payload: bytes
    attempts: int
    last_error: str
    died_at: datetime
    enqueued_at: datetime


@dataclass
class QueueStats:
    ready: int
    scheduled: int
    in_flight: int
    dead: int
    oldest_ready_age: timedelta
    paused: bool


def _ts(at: datetime) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(at)
    return ts


def job_options(
    delay: timedelta | None = None,
    run_at: datetime | None = None,
    max_attempts: int = 0,
    backoff: timedelta | None = None,
    max_backoff: timedelta | None = None,
    unique_key: str = "",
    priority: Priority = "normal",
    timeout: timedelta | None = None,
) -> queue_pb2.JobOptions:
    """Options for one job (`None`/0 leave the server's defaults)."""
    return queue_pb2.JobOptions(
        delay=t.duration(delay),
        run_at=_ts(run_at) if run_at is not None else None,
        max_attempts=max_attempts,
        backoff=t.duration(backoff),
        max_backoff=t.duration(max_backoff),
        unique_key=unique_key,
        priority=_PRIORITY[priority],
        timeout=t.duration(timeout),
    )


def _enqueued(r: queue_pb2.EnqueueResponse) -> Enqueued:
    return Enqueued(r.job_id, r.duplicate, t._dt(r.run_at))


def _job(j: queue_pb2.Job, sent: float) -> Job:
    return Job(
        queue=j.queue,
        id=j.id,
        payload=j.payload,
        lease_token=j.lease_token,
        attempt=j.attempt,
        max_attempts=j.max_attempts,
        enqueued_at=t._dt(j.enqueued_at),
        lease_expires_at=t._dt(j.lease_expires_at),
        last_error=j.last_error,
        priority=_PRIORITY_NAME.get(j.priority, "normal"),  # type: ignore[arg-type]
        waited=t._td(j.waited),
        timeout=t._td(j.timeout),
        _deadline=sent + j.timeout.ToTimedelta().total_seconds(),
    )


def _stats(r: queue_pb2.QueueStatsResponse) -> QueueStats:
    return QueueStats(r.ready, r.scheduled, r.in_flight, r.dead, t._td(r.oldest_ready_age), r.paused)


def _dead(r: queue_pb2.ListDeadResponse) -> list[DeadJob]:
    return [
        DeadJob(j.id, j.payload, j.attempts, j.last_error, t._dt(j.died_at), t._dt(j.enqueued_at)) for j in r.jobs
    ]


def _lease_lost(e: FlowstateError) -> FlowstateError:
    if isinstance(e, LockLost):
        lost = LeaseLost(e.message, e.code)
        lost.info = e.info
        return lost
    return e


class Queues:
    """`flowstate.v1.QueueService` for the synchronous client (`fs.queues`)."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._stub = queue_pb2_grpc.QueueServiceStub(client._channel)

    def _call(self, method: Callable[..., Any], request: Any, timeout: float | None = None) -> Any:
        c = self._client
        try:
            return method(request, timeout=timeout or c.timeout, metadata=c._metadata)
        except grpc.RpcError as e:
            raise _lease_lost(from_rpc_error(e)) from None

    def enqueue(self, queue: str, payload: bytes, **options: Any) -> Enqueued:
        """Adds a job; options as `job_options` (delay, run_at, max_attempts, backoff,
        max_backoff, unique_key, priority, timeout)."""
        r = self._call(
            self._stub.Enqueue,
            queue_pb2.EnqueueRequest(queue=queue, payload=payload, options=job_options(**options)),
        )
        return _enqueued(r)

    def enqueue_many(self, queue: str, jobs: Sequence[bytes | tuple[bytes, Mapping[str, Any]]]) -> list[Enqueued]:
        """Adds jobs in one atomic step: payloads, or (payload, options) pairs."""
        items = []
        for j in jobs:
            payload, opts = (j, {}) if isinstance(j, (bytes, bytearray)) else j
            items.append(queue_pb2.NewJob(payload=bytes(payload), options=job_options(**opts)))
        r = self._call(self._stub.EnqueueMany, queue_pb2.EnqueueManyRequest(queue=queue, jobs=items))
        return [_enqueued(e) for e in r.jobs]

    def fetch(self, queues: Sequence[str], max: int = 1, wait: timedelta = timedelta(0)) -> list[Job]:
        """Leases up to `max` jobs, waiting up to `wait` for one."""
        request = queue_pb2.FetchRequest(queues=list(queues), max=max, wait=t.duration(wait))
        sent = time.monotonic()
        r = self._call(self._stub.Fetch, request, wait.total_seconds() + self._client.timeout)
        return [_job(j, sent) for j in r.jobs]

    def ack(self, job: Job) -> None:
        """The job is done. Raises `LeaseLost` when its lease was lost."""
        self._call(self._stub.Ack, queue_pb2.AckRequest(queue=job.queue, job_id=job.id, lease_token=job.lease_token))

    def fail(self, job: Job, error: str, retry_after: timedelta | None = None) -> datetime | None:
        """The attempt failed; returns when it runs again, or None when it is dead."""
        r = self._call(
            self._stub.Fail,
            queue_pb2.FailRequest(
                queue=job.queue,
                job_id=job.id,
                lease_token=job.lease_token,
                error=error,
                retry_after=t.duration(retry_after),
            ),
        )
        return None if r.dead else t._dt(r.retry_at)

    def extend(self, job: Job, timeout: timedelta | None = None, rpc_timeout: float | None = None) -> datetime:
        """A new lease from now (the job's own timeout unless given); `rpc_timeout` bounds the
        call itself (default: the client's timeout)."""
        sent = time.monotonic()
        r = self._call(
            self._stub.Extend,
            queue_pb2.ExtendJobRequest(
                queue=job.queue, job_id=job.id, lease_token=job.lease_token, timeout=t.duration(timeout)
            ),
            rpc_timeout,
        )
        job._deadline = sent + (timeout or job.timeout).total_seconds()
        job.lease_expires_at = t._dt(r.lease_expires_at)
        return job.lease_expires_at

    def give_back(self, job: Job) -> None:
        """Ready again at once, this attempt not counted."""
        self._call(
            self._stub.GiveBack, queue_pb2.GiveBackRequest(queue=job.queue, job_id=job.id, lease_token=job.lease_token)
        )

    def stats(self, queue: str) -> QueueStats:
        return _stats(self._call(self._stub.Stats, queue_pb2.QueueStatsRequest(queue=queue)))

    def dead(self, queue: str, limit: int = 100) -> list[DeadJob]:
        return _dead(self._call(self._stub.ListDead, queue_pb2.ListDeadRequest(queue=queue, limit=limit)))

    def retry(self, queue: str, job_ids: Sequence[str] = (), all: bool = False) -> int:
        r = self._call(self._stub.Retry, queue_pb2.RetryDeadRequest(queue=queue, job_ids=list(job_ids), all=all))
        return r.retried

    def discard(self, queue: str, job_ids: Sequence[str] = (), all: bool = False) -> int:
        r = self._call(self._stub.Discard, queue_pb2.DiscardDeadRequest(queue=queue, job_ids=list(job_ids), all=all))
        return r.discarded

    def pause(self, queue: str) -> None:
        self._call(self._stub.Pause, queue_pb2.PauseQueueRequest(queue=queue))

    def resume(self, queue: str) -> None:
        self._call(self._stub.Resume, queue_pb2.ResumeQueueRequest(queue=queue))


class AsyncQueues:
    """`flowstate.v1.QueueService` for the asyncio client (`fs.queues`): the same methods as
    `Queues`, as coroutines."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client
        self._stub = queue_pb2_grpc.QueueServiceStub(client._channel)

    async def _call(self, method: Callable[..., Any], request: Any, timeout: float | None = None) -> Any:
        c = self._client
        try:
            return await method(request, timeout=timeout or c.timeout, metadata=c._metadata)
        except grpc.RpcError as e:
            raise _lease_lost(from_rpc_error(e)) from None

    async def enqueue(self, queue: str, payload: bytes, **options: Any) -> Enqueued:
        r = await self._call(
            self._stub.Enqueue,
            queue_pb2.EnqueueRequest(queue=queue, payload=payload, options=job_options(**options)),
        )
        return _enqueued(r)

    async def enqueue_many(
        self, queue: str, jobs: Sequence[bytes | tuple[bytes, Mapping[str, Any]]]
    ) -> list[Enqueued]:
        items = []
        for j in jobs:
            payload, opts = (j, {}) if isinstance(j, (bytes, bytearray)) else j
            items.append(queue_pb2.NewJob(payload=bytes(payload), options=job_options(**opts)))
        r = await self._call(self._stub.EnqueueMany, queue_pb2.EnqueueManyRequest(queue=queue, jobs=items))
        return [_enqueued(e) for e in r.jobs]

    async def fetch(self, queues: Sequence[str], max: int = 1, wait: timedelta = timedelta(0)) -> list[Job]:
        request = queue_pb2.FetchRequest(queues=list(queues), max=max, wait=t.duration(wait))
        sent = time.monotonic()
        r = await self._call(self._stub.Fetch, request, wait.total_seconds() + self._client.timeout)
        return [_job(j, sent) for j in r.jobs]

    async def ack(self, job: Job) -> None:
        await self._call(
            self._stub.Ack, queue_pb2.AckRequest(queue=job.queue, job_id=job.id, lease_token=job.lease_token)
        )

    async def fail(self, job: Job, error: str, retry_after: timedelta | None = None) -> datetime | None:
        r = await self._call(
            self._stub.Fail,
            queue_pb2.FailRequest(
                queue=job.queue,
                job_id=job.id,
                lease_token=job.lease_token,
                error=error,
                retry_after=t.duration(retry_after),
            ),
        )
        return None if r.dead else t._dt(r.retry_at)

    async def extend(self, job: Job, timeout: timedelta | None = None, rpc_timeout: float | None = None) -> datetime:
        sent = time.monotonic()
        r = await self._call(
            self._stub.Extend,
            queue_pb2.ExtendJobRequest(
                queue=job.queue, job_id=job.id, lease_token=job.lease_token, timeout=t.duration(timeout)
            ),
            rpc_timeout,
        )
        job._deadline = sent + (timeout or job.timeout).total_seconds()
        job.lease_expires_at = t._dt(r.lease_expires_at)
        return job.lease_expires_at

    async def give_back(self, job: Job) -> None:
        await self._call(
            self._stub.GiveBack, queue_pb2.GiveBackRequest(queue=job.queue, job_id=job.id, lease_token=job.lease_token)
        )

    async def stats(self, queue: str) -> QueueStats:
        return _stats(await self._call(self._stub.Stats, queue_pb2.QueueStatsRequest(queue=queue)))

    async def dead(self, queue: str, limit: int = 100) -> list[DeadJob]:
        return _dead(await self._call(self._stub.ListDead, queue_pb2.ListDeadRequest(queue=queue, limit=limit)))

    async def retry(self, queue: str, job_ids: Sequence[str] = (), all: bool = False) -> int:
        r = await self._call(
            self._stub.Retry, queue_pb2.RetryDeadRequest(queue=queue, job_ids=list(job_ids), all=all)
        )
        return r.retried

    async def discard(self, queue: str, job_ids: Sequence[str] = (), all: bool = False) -> int:
        r = await self._call(
            self._stub.Discard, queue_pb2.DiscardDeadRequest(queue=queue, job_ids=list(job_ids), all=all)
        )
        return r.discarded

    async def pause(self, queue: str) -> None:
        await self._call(self._stub.Pause, queue_pb2.PauseQueueRequest(queue=queue))

    async def resume(self, queue: str) -> None:
        await self._call(self._stub.Resume, queue_pb2.ResumeQueueRequest(queue=queue))


def _is_async(handler: Callable[..., Any]) -> bool:
    """A coroutine function, or an object whose `__call__` is one."""
    return inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(getattr(handler, "__call__", None))


def _failure_text(exc: BaseException) -> str:
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


_BACKOFF_MAX = 2.0


def _beat_timeout(job: Job) -> float:
    """How long one heartbeat call may take: a sixth of the lease, so a hung call cannot make
    the lease run out before the next one (at a third) is due."""
    return max(job.timeout.total_seconds() / 6, 0.05)


def _lease_left(job: Job) -> float:
    """Seconds until the job's lease runs out, counted from when it was granted or last
    extended (a little early: the request's own trip is counted against it)."""
    return job._deadline - time.monotonic()


class Worker:
    """Runs `handler(job)` for the jobs of `queues` on `concurrency` threads.

    `run()` blocks until `stop()` (or SIGTERM/SIGINT when run from the main thread): it then
    stops fetching, waits up to `shutdown_grace` for running jobs, and gives back the rest. A
    handler that returns acknowledges the job; one that raises fails it (the traceback is kept
    as its error). Each running job's lease is extended every third of its timeout; when an
    extension is refused, `job.lost` is set. Store or network failures pause fetching briefly
    and never lose a job (its lease runs out and it goes to another worker).
    """

    def __init__(
        self,
        client: Client,
        queues: Sequence[str],
        handler: Callable[[Job], Any],
        *,
        concurrency: int = 8,
        poll: timedelta = timedelta(seconds=1),
        shutdown_grace: timedelta = timedelta(seconds=25),
        handle_signals: bool = True,
    ) -> None:
        self._fs = client
        self._queues = list(queues)
        self._handler = handler
        self._concurrency = concurrency
        self._poll = poll
        self._grace = shutdown_grace
        self._handle_signals = handle_signals
        self._stopping = threading.Event()
        self._running: dict[str, tuple[Job, float]] = {}
        self._lock = threading.Lock()
        self.processed = 0
        self.failed = 0

    def stop(self) -> None:
        """Stops fetching; `run()` returns once running jobs finished or were given back."""
        self._stopping.set()

    def _loop(self) -> None:
        pause = 0.05
        while not self._stopping.is_set():
            try:
                jobs = self._fs.queues.fetch(self._queues, 1, self._poll)
                pause = 0.05
            except FlowstateError as e:
                log.warning("fetch failed (%s); retrying in %.2fs", e, pause)
                self._stopping.wait(pause)
                pause = min(pause * 2, _BACKOFF_MAX)
                continue
            for job in jobs:
                if self._stopping.is_set():
                    self._give_back(job)
                    continue
                try:
                    self._run(job)
                except Exception:  # noqa: BLE001: a worker thread must not die of one job
                    log.exception("job %s: settling failed; its lease runs out and it runs again", job.id)

    def _run(self, job: Job) -> None:
        timeout = max(job.timeout.total_seconds(), 0.03)
        # Keyed by lease: the same job may come back to another thread of this worker after
        # a lost lease, and each run has its own heartbeat.
        with self._lock:
            self._running[job.lease_token] = (job, timeout)
        try:
            self._handler(job)
        except Exception as exc:  # noqa: BLE001: any handler failure fails the attempt
            self.failed += 1
            error = _failure_text(exc)
            settle: Callable[[], Any] = lambda: self._fs.queues.fail(job, error)  # noqa: E731
        else:
            self.processed += 1
            settle = lambda: self._fs.queues.ack(job)  # noqa: E731
        finally:
            # Out of the running set before settling: a shutdown past its grace gives back
            # only jobs still in their handler, never one whose Ack is on its way.
            with self._lock:
                self._running.pop(job.lease_token, None)
        self._settle(job, settle)

    def _settle(self, job: Job, call: Callable[[], Any]) -> None:
        """Ack or Fail, retried while flowstate is unreachable, until the lease runs out (a
        replica restarting must not make finished jobs run again)."""
        pause = 0.05
        while True:
            try:
                call()
                return
            except LeaseLost:
                # The lease ran out (or an earlier try landed and its answer was lost).
                log.warning("job %s: lease lost before it was settled; it may run again", job.id)
                return
            except (Unavailable, DeadlineExceeded, ResourceExhausted) as e:
                if _lease_left(job) < pause:
                    log.error("job %s: could not be settled (%s); it runs again", job.id, e)
                    return
                time.sleep(pause)
                pause = min(pause * 2, 0.5)

    def _give_back(self, job: Job) -> None:
        try:
            self._fs.queues.give_back(job)
        except FlowstateError as e:
            log.warning("job %s: give back failed (%s); its lease runs out instead", job.id, e)

    def _heartbeat(self) -> None:
        last: dict[str, float] = {}
        while not self._done.is_set():
            now = time.monotonic()
            with self._lock:
                running = list(self._running.values())
            for job, timeout in running:
                began = last.setdefault(job.lease_token, now)
                if now - began >= timeout / 3 and not job.lost.is_set():
                    last[job.lease_token] = now
                    try:
                        self._fs.queues.extend(job, rpc_timeout=_beat_timeout(job))
                    except LeaseLost:
                        job.lost.set()
                    except FlowstateError as e:
                        log.warning("job %s: heartbeat failed (%s)", job.id, e)
            ids = {j.lease_token for j, _ in running}
            for gone in [k for k in last if k not in ids]:
                del last[gone]
            self._done.wait(0.01 if not running else min(0.1, min(t for _, t in running) / 6))

    def run(self) -> None:
        """Works until stopped; see the class docs."""
        if self._handle_signals and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: self.stop())
        self._done = threading.Event()
        beat = threading.Thread(target=self._heartbeat, name="flowstate-heartbeat", daemon=True)
        beat.start()
        threads = [
            threading.Thread(target=self._loop, name=f"flowstate-worker-{i}", daemon=True)
            for i in range(self._concurrency)
        ]
        for th in threads:
            th.start()
        while not self._stopping.wait(0.2):
            pass
        deadline = time.monotonic() + self._grace.total_seconds()
        for th in threads:
            th.join(max(deadline - time.monotonic(), 0))
        with self._lock:
            unfinished = [job for job, _ in self._running.values()]
        for job in unfinished:
            job.lost.set()
            self._give_back(job)
        self._done.set()
        beat.join(1)


class AsyncWorker:
    """`Worker` for asyncio: `concurrency` tasks running `handler(job)` (a coroutine function,
    or a plain function run in a thread). `await worker.run()` until `stop()` (or SIGTERM /
    SIGINT with `handle_signals`), with the same heartbeat, failure and shutdown rules."""

    def __init__(
        self,
        client: AsyncClient,
        queues: Sequence[str],
        handler: Callable[[Job], Union[Awaitable[Any], Any]],
        *,
        concurrency: int = 8,
        poll: timedelta = timedelta(seconds=1),
        shutdown_grace: timedelta = timedelta(seconds=25),
        handle_signals: bool = True,
    ) -> None:
        self._fs = client
        self._queues = list(queues)
        self._handler = handler
        self._concurrency = concurrency
        self._poll = poll
        self._grace = shutdown_grace
        self._handle_signals = handle_signals
        self._stopping = asyncio.Event()
        self.processed = 0
        self.failed = 0

    def stop(self) -> None:
        """Stops fetching (also before `run()`: it then returns at once)."""
        self._stopping.set()

    async def _settle(self, job: Job, call: Callable[[], Awaitable[Any]]) -> None:
        pause = 0.05
        while True:
            try:
                await call()
                return
            except LeaseLost:
                log.warning("job %s: lease lost before it was settled; it may run again", job.id)
                return
            except (Unavailable, DeadlineExceeded, ResourceExhausted) as e:
                if _lease_left(job) < pause:
                    log.error("job %s: could not be settled (%s); it runs again", job.id, e)
                    return
                await asyncio.sleep(pause)
                pause = min(pause * 2, 0.5)

    async def _beat(self, job: Job, timeout: float) -> None:
        while True:
            await asyncio.sleep(timeout / 3)
            try:
                await self._fs.queues.extend(job, rpc_timeout=_beat_timeout(job))
            except LeaseLost:
                job.lost.set()
                return
            except FlowstateError as e:
                log.warning("job %s: heartbeat failed (%s)", job.id, e)

    async def _run(self, job: Job) -> None:
        timeout = max(job.timeout.total_seconds(), 0.03)
        beat = asyncio.create_task(self._beat(job, timeout))
        try:
            if _is_async(self._handler):
                await self._handler(job)
            else:
                result = await asyncio.to_thread(self._handler, job)
                if inspect.isawaitable(result):
                    await result
        except asyncio.CancelledError:
            job.lost.set()
            try:
                await self._fs.queues.give_back(job)
            except FlowstateError as e:
                log.warning("job %s: give back failed (%s)", job.id, e)
            raise
        except Exception as exc:  # noqa: BLE001
            self.failed += 1
            error = _failure_text(exc)
            await self._settle(job, lambda: self._fs.queues.fail(job, error))
        else:
            self.processed += 1
            await self._settle(job, lambda: self._fs.queues.ack(job))
        finally:
            beat.cancel()

    async def _loop(self) -> None:
        pause = 0.05
        while not self._stopping.is_set():
            try:
                jobs = await self._fs.queues.fetch(self._queues, 1, self._poll)
                pause = 0.05
            except FlowstateError as e:
                log.warning("fetch failed (%s); retrying in %.2fs", e, pause)
                await asyncio.sleep(pause)
                pause = min(pause * 2, _BACKOFF_MAX)
                continue
            for job in jobs:
                if self._stopping.is_set():
                    try:
                        await self._fs.queues.give_back(job)
                    except FlowstateError as e:
                        log.warning("job %s: give back failed (%s)", job.id, e)
                    continue
                try:
                    await self._run(job)
                except asyncio.CancelledError:
                    raise
                except Exception:  # noqa: BLE001: a worker task must not die of one job
                    log.exception("job %s: settling failed; its lease runs out and it runs again", job.id)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        if self._handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                try:
                    loop.add_signal_handler(sig, self.stop)
                except (NotImplementedError, RuntimeError):
                    pass
        tasks = [asyncio.create_task(self._loop()) for _ in range(self._concurrency)]
        await self._stopping.wait()
        _, pending = await asyncio.wait(tasks, timeout=self._grace.total_seconds())
        # Past the grace period: cancelling a running job gives it back.
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
