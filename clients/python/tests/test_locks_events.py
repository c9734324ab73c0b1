"""Locks and events through the Python client, against live flowstate processes on Redis:
lost updates, fencing after a paused holder and across restarts, resumable subscriptions over
dropped connections and a Redis restart, two replicas."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from datetime import timedelta

import grpc
import pytest
import redis

import flowstate
from conftest import free_port, port_open, serving, skewed_env, start_flowstate, stop, wait_until


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def ready(address: str) -> bool:
    with grpc.insecure_channel(address) as channel:
        return serving(channel)


# Writes `value` only if `token` is at least the highest fencing token seen: what a storage
# that honours fencing tokens does (here a Redis key; a database would use a column).
FENCED_WRITE = """
local seen = tonumber(redis.call('HGET', KEYS[1], 'fence') or '0')
if tonumber(ARGV[1]) < seen then return 0 end
redis.call('HSET', KEYS[1], 'fence', ARGV[1], 'value', ARGV[2])
return 1
"""


def test_sixteen_workers_under_a_lock_lose_no_update(target, redis_server):
    url, _ = redis_server
    store = redis.Redis.from_url(url)
    counter = unique("counter")
    name = unique("lock")
    fences: list[int] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            with flowstate.Client(target, timeout=5.0) as fs:
                for _ in range(200):
                    with fs.locks.hold(name, ttl=timedelta(seconds=10), wait=timedelta(seconds=30)) as lock:
                        value = int(store.get(counter) or 0)  # read ...
                        store.set(counter, value + 1)  # ... modify, write
                        fences.append(lock.fencing_token)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert int(store.get(counter)) == 3200
    # Appended while holding the lock: grant order, and each token beats the one before.
    assert len(fences) == 3200
    assert all(a < b for a, b in zip(fences, fences[1:]))


def test_a_paused_holder_loses_the_lock_and_its_late_write_is_refused(target, redis_server):
    url, _ = redis_server
    store = redis.Redis.from_url(url)
    fenced = store.register_script(FENCED_WRITE)
    name, record = unique("paused"), unique("record")
    worker = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from datetime import timedelta
            import redis, flowstate
            store = redis.Redis.from_url({url!r})
            fenced = store.register_script({FENCED_WRITE!r})
            with flowstate.Client({target!r}) as fs:
                with fs.locks.hold({name!r}, ttl=timedelta(milliseconds=600)) as lock:
                    print(lock.fencing_token, flush=True)
                    sys.stdin.readline()  # paused (SIGSTOP) around here, then told to go on
                    wrote = fenced(keys=[{record!r}], args=[lock.fencing_token, "late"])
                    lost = lock.lost.wait(5)
                    print(wrote, lost, flush=True)
        """)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=os.environ.copy(),
    )
    try:
        old_token = int(worker.stdout.readline())
        os.kill(worker.pid, signal.SIGSTOP)
        with flowstate.Client(target) as fs:
            # The paused holder cannot extend: the lock lapses and goes to us.
            with fs.locks.hold(name, ttl=timedelta(seconds=5), wait=timedelta(seconds=5)) as lock:
                assert lock.fencing_token > old_token
                assert fenced(keys=[record], args=[lock.fencing_token, "new"]) == 1
                os.kill(worker.pid, signal.SIGCONT)
                worker.stdin.write("go\n")
                worker.stdin.flush()
                wrote, lost = worker.stdout.readline().split()
        assert wrote == "0", "the late write carried a lower fencing token and was refused"
        assert lost == "True", "the paused holder learned it lost the lock"
        assert store.hget(record, "value") == b"new"
    finally:
        os.kill(worker.pid, signal.SIGCONT)
        worker.wait(10)


def test_fencing_tokens_keep_increasing_across_a_flowstate_restart(redis_server):
    url, _ = redis_server
    name = unique("restart")
    proc, address, _ = start_flowstate(url, "", ready)
    with flowstate.Client(address) as fs:
        with fs.locks.hold(name) as lock:
            before = lock.fencing_token
    stop(proc)
    proc, address, _ = start_flowstate(url, "", ready)
    try:
        with flowstate.Client(address) as fs:
            with fs.locks.hold(name) as lock:
                assert lock.fencing_token > before
            assert fs.locks.inspect(name).last_fencing_token == lock.fencing_token
    finally:
        stop(proc)


async def test_async_hold_waits_for_a_release_and_semaphores_bound_holders(target):
    name = unique("async")
    async with flowstate.AsyncClient(target) as fs:
        async with fs.locks.hold(name, ttl=timedelta(seconds=10)) as first:
            waiter = asyncio.create_task(fs.locks.acquire(name, timedelta(seconds=5), wait=timedelta(seconds=5)))
            await asyncio.sleep(0.2)
            assert not waiter.done()
            with pytest.raises(flowstate.LockBusy):
                async with fs.locks.hold(name, wait=timedelta(0)):
                    pass
        granted = await waiter
        assert granted.acquired and granted.fencing_token > first.fencing_token
        await fs.locks.release(name, granted.token)
        with pytest.raises(flowstate.LockLost):
            await fs.locks.release(name, granted.token)

        inside = most = 0

        async def job() -> None:
            nonlocal inside, most
            async with fs.locks.hold(name + ":sem", limit=4, wait=timedelta(seconds=10)):
                inside += 1
                most = max(most, inside)
                await asyncio.sleep(0.02)
                inside -= 1

        await asyncio.gather(*(job() for _ in range(20)))
        assert 1 < most <= 4


class Proxy:
    """A TCP proxy in front of flowstate whose connections can be cut (a dropped network)."""

    def __init__(self, target: str) -> None:
        host, port = target.rsplit(":", 1)
        self.upstream = (host, int(port))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.upstream)
            with self.lock:
                self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> None:
        with self.lock:
            for s in self.sockets:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self.sockets.clear()


def collect(subscription, want: int, out: list, done: threading.Event) -> None:
    for event in subscription:
        out.append(event)
        if len(out) == want:
            break
    done.set()


def test_a_subscription_resumes_over_dropped_connections_without_loss_or_duplicates(target):
    topic = unique("campaign")
    proxy = Proxy(target)
    got: list[flowstate.Event] = []
    done = threading.Event()
    with flowstate.Client(target) as publisher, flowstate.Client(proxy.address) as fs:
        subscription = fs.events.subscribe([topic])
        reader = threading.Thread(target=collect, args=(subscription, 300, got, done), daemon=True)
        reader.start()
        assert wait_until(lambda: subscription.positions.get(topic) is not None, 10)
        sent = []
        for i in range(300):
            sent.append(publisher.events.publish(topic, f"{i}".encode()))
            if i in (60, 150, 240):
                proxy.cut()  # mid-stream
        assert done.wait(30), f"got {len(got)} of 300"
        subscription.close()
    assert [e.id for e in got] == sent
    assert [e.payload for e in got] == [f"{i}".encode() for i in range(300)]
    assert subscription.resumes >= 1


def test_an_expired_position_raises(target):
    with flowstate.Client(target) as fs:
        topic = unique("gone")
        fs.events.publish(topic, b"only")
        # Nothing kept says what came before the first event: a position before it is a gap.
        with pytest.raises(flowstate.EventsExpired) as e:
            for _ in fs.events.subscribe([topic], after={topic: "1-0"}):
                pass
        assert e.value.topic == topic and e.value.first_id
        events = fs.events.subscribe([topic], after={topic: "1-0"}, accept_gaps=True)
        it = iter(events)
        gap = next(it)
        assert isinstance(gap, flowstate.Gap) and gap.first_id == e.value.first_id
        assert next(it).payload == b"only"
        events.close()


def test_redis_restart_ends_streams_unavailable_and_they_resume_with_what_redis_kept(tmp_path):
    port = free_port()
    cmd = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
           "--appendfsync", "always", "--dir", str(tmp_path)]
    redis_proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    assert wait_until(lambda: port_open(port))
    url = f"redis://127.0.0.1:{port}"
    proc, address, _ = start_flowstate(url, "", ready)
    topic = unique("durable")
    got: list[flowstate.Event] = []
    done = threading.Event()
    try:
        with flowstate.Client(address) as fs:
            subscription = fs.events.subscribe([topic])
            threading.Thread(target=collect, args=(subscription, 20, got, done), daemon=True).start()
            assert wait_until(lambda: subscription.positions.get(topic) is not None, 10)
            sent = [fs.events.publish(topic, f"{i}".encode()) for i in range(10)]
            assert wait_until(lambda: len(got) == 10, 10)
            redis_proc.kill()
            redis_proc.wait()
            # Meanwhile publishing fails, and the stream ends UNAVAILABLE once Redis stays away
            # longer than flowstate rides out by itself (redis.failover_wait): the
            # subscription keeps trying.
            with pytest.raises(flowstate.Unavailable):
                fs.events.publish(topic, b"lost")
            assert wait_until(lambda: subscription.resumes >= 1, 15), "the stream ended UNAVAILABLE"
            redis_proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
            assert wait_until(lambda: port_open(port))
            assert wait_until(lambda: ready(address), 20)
            for i in range(10, 20):
                for _ in range(50):
                    try:
                        sent.append(fs.events.publish(topic, f"{i}".encode()))
                        break
                    except flowstate.Unavailable:
                        time.sleep(0.1)
            assert done.wait(30), f"got {len(got)} of 20"
            subscription.close()
        assert [e.id for e in got] == sent
        assert subscription.resumes >= 1
    finally:
        stop(proc)
        redis_proc.kill()
        redis_proc.wait()


def test_publisher_on_one_replica_subscriber_and_waiter_on_another(redis_server, target):
    url, _ = redis_server
    # The second replica's clock is 300 ms ahead: ids and expiries come from Redis, not from it.
    env = skewed_env("+0.3")
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        proc, other, _ = start_flowstate(url, "", ready)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    topic, name = unique("cross"), unique("cross-lock")
    try:
        with flowstate.Client(target) as a, flowstate.Client(other) as b:
            got: list[flowstate.Event] = []
            done = threading.Event()
            subscription = b.events.subscribe([topic])
            threading.Thread(target=collect, args=(subscription, 50, got, done), daemon=True).start()
            assert wait_until(lambda: subscription.positions.get(topic) is not None, 10)
            sent = [a.events.publish(topic, f"{i}".encode()) for i in range(50)]
            assert done.wait(20)
            subscription.close()
            assert [e.id for e in got] == sent

            held = a.locks.acquire(name, timedelta(seconds=30))
            result: list = []
            waiter = threading.Thread(
                target=lambda: result.append(b.locks.acquire(name, timedelta(seconds=5), wait=timedelta(seconds=10)))
            )
            waiter.start()
            assert wait_until(lambda: a.locks.inspect(name).waiters == 1, 5)
            a.locks.release(name, held.token)
            waiter.join(15)
            assert result and result[0].acquired and result[0].fencing_token > held.fencing_token
    finally:
        stop(proc)
