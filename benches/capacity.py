#!/usr/bin/env python3
"""The figures of docs/CAPACITY.md, measured on a real Redis:

    python3 benches/capacity.py [--n 20000]

(needs the Python client: pip install ./clients/python). Starts a private redis-server and a
release flowstate on it, then for each RPC shape runs it `--n` times and reads from Redis:
- commands per RPC: INFO commandstats before and after (a script counts as its EVALSHA plus
  every command it runs);
- bytes and keys per object: INFO memory `used_memory` and DBSIZE before and after creating
  `--n` sessions, cache entries (untagged and with one tag) and rate-limit counters.
Prints a table and writes target/bench/capacity.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from datetime import timedelta

from run import OUT, ROOT, free_port, wait_port

try:
    import flowstate
except ImportError:
    raise SystemExit("pip install ./clients/python first")


def cli(port: int, *args: str) -> str:
    return subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True, text=True, check=True).stdout


def commandstats(port: int) -> dict[str, tuple[int, int]]:
    """Command -> (calls, microseconds of Redis CPU spent in it)."""
    stats = {}
    for line in cli(port, "INFO", "commandstats").splitlines():
        m = re.match(r"cmdstat_([\w|]+):calls=(\d+),usec=(\d+)", line)
        if m:
            stats[m.group(1)] = (int(m.group(2)), int(m.group(3)))
    return stats


def used_memory(port: int) -> int:
    cli(port, "MEMORY", "PURGE")
    return int(re.search(r"used_memory:(\d+)", cli(port, "INFO", "memory")).group(1))


def dbsize(port: int) -> int:
    return int(cli(port, "DBSIZE").strip())


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20_000)
    args = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "flowstate"], cwd=ROOT, check=True)
    OUT.mkdir(parents=True, exist_ok=True)
    rport, fport = free_port(), free_port()
    procs = [subprocess.Popen(["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save", "",
                               "--appendonly", "no"], stdout=subprocess.DEVNULL)]
    results: dict = {"n": args.n, "per_rpc": {}, "per_object": {}}
    try:
        wait_port(rport)
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWSTATE_")}
        # Health probes write a key every interval; slow them so they do not count.
        env.update(FLOWSTATE_REDIS__URL=f"redis://127.0.0.1:{rport}", FLOWSTATE_SERVER__LISTEN=f"127.0.0.1:{fport}",
                   FLOWSTATE_METRICS__ENABLED="false", FLOWSTATE_LOG__LEVEL="error",
                   FLOWSTATE_REDIS__HEALTH_INTERVAL="1h")
        procs.append(subprocess.Popen([str(ROOT / "target/release/flowstate")], env=env))
        wait_port(fport)
        fs = flowstate.Client(f"127.0.0.1:{fport}", timeout=5)
        for _ in range(50):
            if fs.health():
                break
        n = args.n
        value = b"x" * 100
        data = {"cart": b"3 items", "locale": b"en-GB"}
        sessions = []

        def create_sessions():
            for i in range(n):
                sessions.append(fs.sessions.create(f"user-{i}", data=data, metadata={"ip": "10.0.0.1"}).id)

        def per_object(name, run):
            before_mem, before_keys = used_memory(rport), dbsize(rport)
            run()
            after_mem, after_keys = used_memory(rport), dbsize(rport)
            results["per_object"][name] = {
                "bytes": (after_mem - before_mem) / n,
                "keys": (after_keys - before_keys) / n,
            }

        def per_rpc(name, run, count):
            before = commandstats(rport)
            run()
            after = commandstats(rport)
            calls = {k: after[k][0] - before.get(k, (0, 0))[0] for k in after}
            usec = {k: after[k][1] - before.get(k, (0, 0))[1] for k in after}
            # `info` is redis-cli's own INFO of the previous reading. A script's usec includes
            # the commands it ran (they are also listed on their own): count EVALSHA's.
            calls = {k: v for k, v in calls.items() if v and k != "info"}
            scripted = "evalsha" in calls
            cpu = usec.get("evalsha", 0) if scripted else sum(v for k, v in usec.items() if k in calls)
            if scripted:
                cpu += sum(usec[k] for k in ("get", "hmget", "zscan") if k in calls and calls[k] >= count)
            results["per_rpc"][name] = {"commands": sum(calls.values()) / count, "usec": cpu / count,
                                        "detail": {k: v / count for k, v in sorted(calls.items())}}

        per_object("session (2 data fields, 1 metadata field)", create_sessions)
        per_object("cache entry (100-byte value, no tags)",
                   lambda: [fs.cache.set("ns", f"k{i}", value, ttl=timedelta(hours=1)) for i in range(n)])
        per_object("cache entry (100-byte value, 1 tag shared by 100)",
                   lambda: [fs.cache.set("tagged", f"k{i}", value, ttl=timedelta(hours=1), tags=[f"t{i % (n // 100)}"])
                            for i in range(n)])
        per_object("rate-limit counter (GCRA)",
                   lambda: [fs.ratelimit.check([(flowstate.Limit("gcra", 100, timedelta(minutes=1)),
                                                 f"user-{i}")]) for i in range(n)])
        per_object("queued job (100-byte payload, ready)",
                   lambda: [fs.queues.enqueue_many("jobs", [value] * 500) for _ in range(n // 500)])
        m = min(n, 2000)
        per_rpc("CreateSession", lambda: [fs.sessions.create(f"u2-{i}", data=data) for i in range(m)], m)
        per_rpc("GetSession", lambda: [fs.sessions.get(sessions[i]) for i in range(m)], m)
        per_rpc("GetSession touch", lambda: [fs.sessions.get(sessions[i], touch=True) for i in range(m)], m)
        per_rpc("UpdateSession", lambda: [fs.sessions.update(sessions[i], set={"cart": b"4 items"}) for i in range(m)],
                m)
        per_rpc("cache Get (hit)", lambda: [fs.cache.get("ns", f"k{i}") for i in range(m)], m)
        per_rpc("cache Get (miss, lease)", lambda: [fs.cache.get("ns", f"absent{i}", lease=True) for i in range(m)], m)
        per_rpc("cache Set (untagged)", lambda: [fs.cache.set("ns", f"k{i}", value) for i in range(m)], m)
        per_rpc("cache Set (1 tag)", lambda: [fs.cache.set("tagged", f"k{i}", value, tags=["x"]) for i in range(m)], m)
        per_rpc("cache GetMany (10 keys)",
                lambda: [fs.cache.get_many("ns", [f"k{(i + j) % n}" for j in range(10)]) for i in range(m)], m)
        inline = flowstate.Limit("gcra", 100, timedelta(minutes=1))
        per_rpc("rate-limit Check (1 limit)", lambda: [fs.ratelimit.check([(inline, f"user-{i}")]) for i in range(m)], m)
        per_rpc("rate-limit Check (2 limits)",
                lambda: [fs.ratelimit.check([(inline, f"user-{i}"), (inline, "tenant")]) for i in range(m)], m)
        per_rpc("queue Enqueue", lambda: [fs.queues.enqueue("q", value) for _ in range(m)], m)
        leased: list = []
        per_rpc("queue Fetch (1 job)", lambda: [leased.extend(fs.queues.fetch(["q"])) for _ in range(m)], m)
        half = leased[: m // 2]
        per_rpc("queue Ack", lambda: [fs.queues.ack(j) for j in half], len(half))
        per_rpc("queue Fail (retried)", lambda: [fs.queues.fail(j, "boom") for j in leased[m // 2:]], m - len(half))
        per_rpc("queue Fetch (10 jobs)", lambda: [fs.queues.fetch(["jobs"], max=10) for _ in range(m // 10)], m // 10)
        per_rpc("InvalidateNamespace", lambda: [fs.cache.invalidate_namespace(f"ns{i}") for i in range(200)], 200)
        fs.close()
    finally:
        for p in reversed(procs):
            p.terminate()
            p.wait(timeout=20)
    print(f"\nper object ({args.n} of each), Redis 7 used_memory and DBSIZE deltas")
    for name, r in results["per_object"].items():
        print(f"  {name:<52} {r['bytes']:>7.0f} B  {r['keys']:.2f} keys")
    print("\nper RPC: Redis commands executed (a script counts as EVALSHA plus what it runs) and Redis CPU "
          "in command execution (INFO commandstats usec; network and parsing not included)")
    for name, r in results["per_rpc"].items():
        detail = " ".join(f"{k}={v:.2g}" for k, v in r["detail"].items())
        print(f"  {name:<30} {r['commands']:>6.2f} cmds {r['usec']:>6.1f} µs   {detail}")
    (OUT / "capacity.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
