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


from flowstate._async.queues import AsyncQueues, AsyncWorker
from flowstate._sync.queues import Queues, Worker
from flowstate.types import DeadJob, Enqueued, Job, Priority, QueueStats, job_options

__all__ = ["AsyncQueues", "AsyncWorker", "DeadJob", "Enqueued", "Job", "Priority", "QueueStats", "Queues", "Worker",
           "job_options"]
