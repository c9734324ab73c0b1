"""The sync client is generated from the asyncio one (clients/python/unasync.py), behind the
import paths users have."""

from __future__ import annotations

import subprocess
import sys

import flowstate
from conftest import REPO


def test_the_sync_client_is_generated_from_the_asyncio_one():
    out = subprocess.run([sys.executable, str(REPO / "clients/python/unasync.py"), "--check"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_public_import_paths_stay():
    from flowstate.aio import AsyncClient
    from flowstate.client import Client, Lock, Subscription
    from flowstate.queues import AsyncQueues, AsyncWorker, DeadJob, Enqueued, Job, QueueStats, Queues, Worker, job_options
    from flowstate.semantic import AsyncSemantic, Semantic, SemanticHit
    from flowstate.usage import AsyncUsage, TopEntry, Usage, UsagePoint, UsageSeries

    assert flowstate.Client is Client and flowstate.AsyncClient is AsyncClient
    assert flowstate.Worker is Worker and flowstate.AsyncWorker is AsyncWorker and flowstate.Job is Job
    assert Client.__module__ == "flowstate._sync.client" and AsyncClient.__module__ == "flowstate._async.client"
    for sync, aio in ((Queues, AsyncQueues), (Semantic, AsyncSemantic), (Usage, AsyncUsage)):
        public = {n for n in vars(aio) if not n.startswith("_")}
        assert public == {n for n in vars(sync) if not n.startswith("_")}, (sync, aio)
    assert all((DeadJob, Enqueued, QueueStats, job_options, Lock, Subscription, SemanticHit, TopEntry, UsagePoint,
                UsageSeries))
