"""`fs.queues` of `AsyncClient`, and `AsyncWorker` (see `flowstate.queues`)."""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Mapping, Sequence

import grpc

from flowstate import types as t
from flowstate._concurrency import AsyncBackground, AsyncEvent, async_call, async_on_signals, async_sleep
from flowstate._sansio import FETCH_BACKOFF_MAX, Backoff, Settle, failure_text, job_heartbeat
from flowstate.errors import FlowstateError, from_rpc_error, lease_lost
from flowstate.v1 import queue_pb2, queue_pb2_grpc

if TYPE_CHECKING:
    from flowstate._async.client import AsyncClient

log = logging.getLogger("flowstate.queues")


class AsyncQueues:
    """`flowstate.v1.QueueService` (`fs.queues`)."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client
        self._stub = queue_pb2_grpc.QueueServiceStub(client._channel)

    async def _call(self, method: Callable[..., Any], request: Any, timeout: float | None = None) -> Any:
        c = self._client
        try:
            return await method(request, timeout=timeout or c.timeout, metadata=c._metadata)
        except grpc.RpcError as e:
            raise lease_lost(from_rpc_error(e)) from None

    async def enqueue(self, queue: str, payload: bytes, **options: Any) -> t.Enqueued:
        """Adds a job; options as `job_options` (delay, run_at, max_attempts, backoff,
        max_backoff, unique_key, priority, timeout)."""
        request = queue_pb2.EnqueueRequest(queue=queue, payload=payload, options=t.job_options(**options))
        return t.enqueued(await self._call(self._stub.Enqueue, request))

    async def enqueue_many(
        self, queue: str, jobs: Sequence[bytes | tuple[bytes, Mapping[str, Any]]]
    ) -> list[t.Enqueued]:
        """Adds jobs in one atomic step: payloads, or (payload, options) pairs."""
        request = queue_pb2.EnqueueManyRequest(queue=queue, jobs=t.new_jobs(jobs))
        r = await self._call(self._stub.EnqueueMany, request)
        return [t.enqueued(e) for e in r.jobs]

    async def fetch(self, queues: Sequence[str], max: int = 1, wait: timedelta = timedelta(0)) -> list[t.Job]:
        """Leases up to `max` jobs, waiting up to `wait` for one."""
        request = queue_pb2.FetchRequest(queues=list(queues), max=max, wait=t.duration(wait))
        sent = time.monotonic()
        r = await self._call(self._stub.Fetch, request, wait.total_seconds() + self._client.timeout)
        return [t.job(j, sent) for j in r.jobs]

    async def ack(self, job: t.Job) -> None:
        """The job is done. Raises `LeaseLost` when its lease was lost."""
        request = queue_pb2.AckRequest(queue=job.queue, job_id=job.id, lease_token=job.lease_token)
        await self._call(self._stub.Ack, request)

    async def fail(self, job: t.Job, error: str, retry_after: timedelta | None = None) -> datetime | None:
        """The attempt failed; returns when it runs again, or None when it is dead."""
        request = queue_pb2.FailRequest(
            queue=job.queue,
            job_id=job.id,
            lease_token=job.lease_token,
            error=error,
            retry_after=t.duration(retry_after),
        )
        r = await self._call(self._stub.Fail, request)
        return None if r.dead else t._dt(r.retry_at)

    async def extend(self, job: t.Job, timeout: timedelta | None = None, rpc_timeout: float | None = None) -> datetime:
        """A new lease from now (the job's own timeout unless given); `rpc_timeout` bounds the
        call itself (default: the client's timeout)."""
        request = queue_pb2.ExtendJobRequest(
            queue=job.queue, job_id=job.id, lease_token=job.lease_token, timeout=t.duration(timeout)
        )
        sent = time.monotonic()
        r = await self._call(self._stub.Extend, request, rpc_timeout)
        job._deadline = sent + (timeout or job.timeout).total_seconds()
        job.lease_expires_at = t._dt(r.lease_expires_at)
        return job.lease_expires_at

    async def give_back(self, job: t.Job) -> None:
        """Ready again at once, this attempt not counted."""
        request = queue_pb2.GiveBackRequest(queue=job.queue, job_id=job.id, lease_token=job.lease_token)
        await self._call(self._stub.GiveBack, request)

    async def stats(self, queue: str) -> t.QueueStats:
        return t.queue_stats(await self._call(self._stub.Stats, queue_pb2.QueueStatsRequest(queue=queue)))

    async def dead(self, queue: str, limit: int = 100) -> list[t.DeadJob]:
        return t.dead_jobs(await self._call(self._stub.ListDead, queue_pb2.ListDeadRequest(queue=queue, limit=limit)))

    async def retry(self, queue: str, job_ids: Sequence[str] = (), all: bool = False) -> int:
        request = queue_pb2.RetryDeadRequest(queue=queue, job_ids=list(job_ids), all=all)
        return (await self._call(self._stub.Retry, request)).retried

    async def discard(self, queue: str, job_ids: Sequence[str] = (), all: bool = False) -> int:
        request = queue_pb2.DiscardDeadRequest(queue=queue, job_ids=list(job_ids), all=all)
        return (await self._call(self._stub.Discard, request)).discarded

    async def pause(self, queue: str) -> None:
        await self._call(self._stub.Pause, queue_pb2.PauseQueueRequest(queue=queue))

    async def resume(self, queue: str) -> None:
        await self._call(self._stub.Resume, queue_pb2.ResumeQueueRequest(queue=queue))


class AsyncWorker:
    """Runs `handler(job)` for the jobs of `queues` on `concurrency` asyncio tasks (a coroutine
    function, or a plain function run in a thread).

    `await worker.run()` works until `stop()` (or SIGTERM/SIGINT, with `handle_signals` in the
    main thread): it then stops fetching, waits up to `shutdown_grace` for running jobs, and
    gives back the rest. A handler that returns acknowledges the job; one that raises fails it
    (the traceback is kept as its error). Each running job's lease is extended every third of
    its timeout; when an extension is refused, `job.lost` is set. Store or network failures
    pause fetching briefly and never lose a job (its lease runs out and it goes to another
    worker).
    """

    def __init__(
        self,
        client: AsyncClient,
        queues: Sequence[str],
        handler: Callable[[t.Job], Any | Awaitable[Any]],
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
        self._stopping = AsyncEvent()
        # Keyed by lease: the same job may come back to another loop of this worker after a
        # lost lease, and each run has its own heartbeat.
        self._running: dict[str, t.Job] = {}
        self._lock = threading.Lock()
        self.processed = 0
        self.failed = 0

    def stop(self) -> None:
        """Stops fetching; `run()` returns once running jobs finished or were given back (also
        before `run()`: it then returns at once)."""
        self._stopping.set()

    async def run(self) -> None:
        """Works until stopped; see the class docs."""
        if self._handle_signals:
            async_on_signals(self.stop)
        loops = [AsyncBackground(self._loop, f"flowstate-worker-{i}") for i in range(self._concurrency)]
        while not await self._stopping.wait(0.2):
            pass
        deadline = time.monotonic() + self._grace.total_seconds()
        for loop in loops:
            await loop.join(max(deadline - time.monotonic(), 0))
        # Past the grace period: the jobs still in their handler are given back (and their
        # handlers cancelled, where they can be).
        with self._lock:
            unfinished = list(self._running.values())
        for job in unfinished:
            job.lost.set()
            await self._give_back(job)
        for loop in loops:
            await loop.cancel()

    async def _loop(self) -> None:
        backoff = Backoff(0.05, FETCH_BACKOFF_MAX)
        while not self._stopping.is_set():
            try:
                jobs = await self._fs.queues.fetch(self._queues, 1, self._poll)
            except FlowstateError as e:
                pause = backoff.failed()
                log.warning("fetch failed (%s); retrying in %.2fs", e, pause)
                await self._stopping.wait(pause)
                continue
            backoff.succeeded()
            for job in jobs:
                if self._stopping.is_set():
                    await self._give_back(job)
                    continue
                try:
                    await self._run(job)
                except Exception:  # noqa: BLE001: a worker loop must not die of one job
                    log.exception("job %s: settling failed; its lease runs out and it runs again", job.id)

    async def _run(self, job: t.Job) -> None:
        with self._lock:
            self._running[job.lease_token] = job
        done = AsyncEvent()
        beat = AsyncBackground(lambda: self._beat(job, done), f"flowstate-heartbeat-{job.id}")
        try:
            await async_call(self._handler, job)
        except Exception as exc:  # noqa: BLE001: any handler failure fails the attempt
            self.failed += 1
            error = failure_text(exc)
            settle: Callable[[], Awaitable[Any]] = lambda: self._fs.queues.fail(job, error)  # noqa: E731
        else:
            self.processed += 1
            settle = lambda: self._fs.queues.ack(job)  # noqa: E731
        finally:
            # Out of the running set before settling: a shutdown past its grace gives back
            # only jobs still in their handler, never one whose Ack is on its way.
            with self._lock:
                self._running.pop(job.lease_token, None)
            done.set()
            await beat.cancel()
            await beat.join()
        await self._settle(job, settle)

    async def _beat(self, job: t.Job, done: AsyncEvent) -> None:
        heartbeat = job_heartbeat(job)
        while not await done.wait(heartbeat.every) and not job.lost.is_set():
            try:
                await self._fs.queues.extend(job, rpc_timeout=heartbeat.call_timeout)
            except FlowstateError as e:
                if heartbeat.lost(e):
                    job.lost.set()
                    return
                log.warning("job %s: heartbeat failed (%s)", job.id, e)

    async def _settle(self, job: t.Job, attempt: Callable[[], Awaitable[Any]]) -> None:
        settle = Settle(job)
        while True:
            try:
                await attempt()
                return
            except Settle.HANDLED as e:
                pause = settle.retry_after(e)
                if pause is None:
                    return
                await async_sleep(pause)

    async def _give_back(self, job: t.Job) -> None:
        try:
            await self._fs.queues.give_back(job)
        except FlowstateError as e:
            log.warning("job %s: give back failed (%s); its lease runs out instead", job.id, e)
