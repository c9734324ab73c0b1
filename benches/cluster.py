#!/usr/bin/env python3
"""flowstate on Redis Cluster beside flowstate on one Redis, and what the session write concern
costs, measured side by side in one run on this machine:

    python3 benches/cluster.py [--rounds 3] [--seconds 3] [--concurrency 16]

1. Throughput: a standalone redis-server and a 3-master Redis Cluster (no replicas: two cores
   cannot host six busy nodes and the load), a release flowstate on each; every flowstate-bench
   scenario against both, alternating round by round, and redis-benchmark GET/SET against the
   same servers (`--cluster` for the cluster). Medians of the rounds, and each flowstate figure
   as a ratio of redis-benchmark on the same topology.
2. Write concern: a master with one replica, two flowstate servers on it, one with
   `session.write_concern.replicas = 1`; session-create against both, alternating.

Prints the tables and writes target/bench/cluster.json. Quote ratios: the machine is shared.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from run import OUT, ROOT, SCENARIOS, bench, wait_port


def node_port(used: set[int]) -> int:
    """A free port below 55536 whose +10000 (cluster bus) is free too."""
    import random
    import socket

    while True:
        port = random.randint(20000, 50000)
        if port in used or port + 10000 in used:
            continue
        try:
            for p in (port, port + 10000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        used.add(port)
        return port


def redis(port: int, *extra: str, dir: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--protected-mode", "no", "--dir", dir, *extra],
        stdout=subprocess.DEVNULL,
    )
    wait_port(port)
    return proc


def flowstate(env_extra: dict[str, str], used: set[int]) -> tuple[subprocess.Popen, str]:
    port = node_port(used)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWSTATE_")}
    env.update(FLOWSTATE_SERVER__LISTEN=f"127.0.0.1:{port}", FLOWSTATE_METRICS__ENABLED="false",
               FLOWSTATE_LOG__LEVEL="error", FLOWSTATE_REDIS__KEY_PREFIX=f"bench{port}", **env_extra)
    proc = subprocess.Popen([str(ROOT / "target/release/flowstate")], env=env)
    wait_port(port)
    return proc, f"127.0.0.1:{port}"


def redis_benchmark(port: int, conc: int, seconds: float, cluster: bool) -> dict[str, float]:
    n = str(int(seconds * 70_000))
    out = subprocess.run(
        ["redis-benchmark", "-p", str(port), "-c", str(conc), "-n", n, "-r", "1000", "--csv", "-t", "get,set",
         *(["--cluster"] if cluster else [])],
        capture_output=True, text=True, check=True,
    ).stdout
    # In cluster mode redis-benchmark prints the nodes it found before the CSV.
    table = out[out.index('"test"'):]
    return {row["test"].split()[0].upper(): float(row["rps"]) for row in csv.DictReader(io.StringIO(table))}


BASELINE = {"session-get": "GET", "session-create": "SET", "cache-get": "GET", "cache-set": "SET",
            "ratelimit-check": "GET", "ratelimit-check2": "GET"}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--concurrency", type=int, default=16)
    args = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "--quiet", "--features", "bench", "--bin", "flowstate", "--bin", "flowstate-bench"],
                   cwd=ROOT, check=True)
    OUT.mkdir(parents=True, exist_ok=True)
    used: set[int] = set()
    procs: list[subprocess.Popen] = []
    data = tempfile.mkdtemp()
    results: dict = {"concurrency": args.concurrency, "rounds": args.rounds}
    try:
        # 1. standalone vs cluster
        single = node_port(used)
        procs.append(redis(single, dir=data))
        masters = [node_port(used) for _ in range(3)]
        for p in masters:
            procs.append(redis(p, "--cluster-enabled", "yes", "--cluster-config-file", f"{data}/nodes-{p}.conf",
                               "--cluster-node-timeout", "5000", dir=data))
        subprocess.run(["redis-cli", "--cluster", "create", *[f"127.0.0.1:{p}" for p in masters], "--cluster-yes"],
                       check=True, capture_output=True, stdin=subprocess.DEVNULL)
        for _ in range(200):
            info = subprocess.run(["redis-cli", "-p", str(masters[0]), "CLUSTER", "INFO"],
                                  capture_output=True, text=True).stdout
            if "cluster_state:ok" in info:
                break
            time.sleep(0.05)
        s_proc, s_addr = flowstate({"FLOWSTATE_REDIS__URL": f"redis://127.0.0.1:{single}"}, used)
        c_proc, c_addr = flowstate({"FLOWSTATE_REDIS__MODE": "cluster",
                                    "FLOWSTATE_REDIS__NODES": ",".join(f"redis://127.0.0.1:{p}" for p in masters)},
                                   used)
        procs += [s_proc, c_proc]
        runs = {t: {s: [] for s in SCENARIOS} for t in ("standalone", "cluster")}
        base = {t: {"GET": [], "SET": []} for t in ("standalone", "cluster")}
        for r in range(args.rounds):
            for topo, addr, port, cluster in (("standalone", s_addr, single, False),
                                              ("cluster", c_addr, masters[0], True)):
                out = bench(addr, args.concurrency, args.seconds)
                for s in SCENARIOS:
                    runs[topo][s].append(out[s]["rps"])
                for op, rps in redis_benchmark(port, args.concurrency, args.seconds, cluster).items():
                    base[topo][op].append(rps)
                print(f"round {r + 1} {topo}: " + ", ".join(f"{s} {out[s]['rps']:.0f}/s" for s in SCENARIOS),
                      flush=True)
        med = {t: {s: statistics.median(v) for s, v in runs[t].items()} for t in runs}
        bmed = {t: {op: statistics.median(v) for op, v in base[t].items()} for t in base}
        results["throughput"] = {"flowstate": med, "redis_benchmark": bmed}
        print(f"\nflowstate-bench closed loop, concurrency {args.concurrency}, medians of {args.rounds} rounds")
        print(f"{'scenario':<18}{'standalone/s':>14}{'ratio':>8}{'cluster/s':>12}{'ratio':>8}{'cluster/standalone':>20}")
        for s in SCENARIOS:
            op = BASELINE[s]
            print(f"{s:<18}{med['standalone'][s]:>14.0f}{med['standalone'][s] / bmed['standalone'][op]:>8.1%}"
                  f"{med['cluster'][s]:>12.0f}{med['cluster'][s] / bmed['cluster'][op]:>8.1%}"
                  f"{med['cluster'][s] / med['standalone'][s]:>20.1%}")
        print("redis-benchmark: " + ", ".join(f"{t} {op} {bmed[t][op]:.0f}/s" for t in bmed for op in bmed[t]))
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=20)
        procs = []

        # 2. the write concern
        master, replica = node_port(used), node_port(used)
        procs.append(redis(master, dir=data, ))
        procs.append(redis(replica, "--replicaof", "127.0.0.1", str(master), "--dbfilename", "replica.rdb",
                           dir=data))
        for _ in range(200):
            info = subprocess.run(["redis-cli", "-p", str(replica), "INFO", "replication"],
                                  capture_output=True, text=True).stdout
            if "master_link_status:up" in info:
                break
            time.sleep(0.05)
        url = {"FLOWSTATE_REDIS__URL": f"redis://127.0.0.1:{master}"}
        off_proc, off_addr = flowstate(url, used)
        on_proc, on_addr = flowstate({**url, "FLOWSTATE_SESSION__WRITE_CONCERN__REPLICAS": "1",
                                      "FLOWSTATE_SESSION__WRITE_CONCERN__TIMEOUT": "500ms"}, used)
        procs += [off_proc, on_proc]
        wc = {"off": [], "on": []}
        for r in range(args.rounds):
            for name, addr in (("off", off_addr), ("on", on_addr)):
                out = bench(addr, args.concurrency, args.seconds, scenarios=["session-create"])["session-create"]
                if out["errors"]:
                    raise SystemExit(f"write concern {name}: {out['errors']} errors")
                wc[name].append(out)
                print(f"round {r + 1} session-create, write concern {name}: {out['rps']:.0f}/s "
                      f"p50 {out['p50_us']} µs p99 {out['p99_us']} µs", flush=True)
        summary = {n: {k: statistics.median(o[k] for o in v) for k in ("rps", "p50_us", "p99_us")}
                   for n, v in wc.items()}
        results["write_concern"] = summary
        print(f"\nsession-create, master + 1 replica, concurrency {args.concurrency}, medians of {args.rounds} rounds")
        for n, v in summary.items():
            print(f"write concern {n:<4} {v['rps']:>8.0f}/s  p50 {v['p50_us']:>6.0f} µs  p99 {v['p99_us']:>6.0f} µs")
        print(f"on / off: {summary['on']['rps'] / summary['off']['rps']:.1%} of the throughput")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=20)
    (OUT / "cluster.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
