#!/usr/bin/env python3
"""Side-by-side comparison of two flowstate builds on this machine, in one run:

    python3 benches/ab.py BEFORE_BIN AFTER_BIN [--rounds 3] [--seconds 3] [--concurrency 16]

BEFORE_BIN and AFTER_BIN are release `flowstate` binaries (e.g. one built from an earlier commit
in a `git worktree`: `cargo build --release --bin flowstate`, with its own CARGO_TARGET_DIR).
Both serve the same private redis-server (each under its own key prefix) on their own ports;
the rounds alternate between them (before, after, before, after, …) so that a busy neighbour
hits both alike, and each round runs `flowstate-bench` (this tree's, closed loop) over every
scenario. Prints every round and the change of the medians. Run-to-run noise on this shared
machine is ±15 %: only compare builds measured together like this.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

from run import ROOT, SCENARIOS, bench, free_port, wait_port


def start(binary: str, redis_port: int, prefix: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWSTATE_")}
    env.update(FLOWSTATE_REDIS__URL=f"redis://127.0.0.1:{redis_port}", FLOWSTATE_SERVER__LISTEN=f"127.0.0.1:{port}",
               FLOWSTATE_METRICS__ENABLED="false", FLOWSTATE_LOG__LEVEL="warn", FLOWSTATE_REDIS__KEY_PREFIX=prefix)
    proc = subprocess.Popen([binary], env=env)
    wait_port(port)
    return proc, f"127.0.0.1:{port}"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("before")
    ap.add_argument("after")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--concurrency", type=int, default=16)
    args = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "--quiet", "--features", "bench", "--bin", "flowstate-bench"], cwd=ROOT, check=True)
    rport = free_port()
    redis = subprocess.Popen(
        ["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL)
    procs = [redis]
    try:
        wait_port(rport)
        servers = {}
        for name, binary in (("before", args.before), ("after", args.after)):
            proc, addr = start(binary, rport, f"ab{name}")
            procs.append(proc)
            servers[name] = addr
        rounds: dict[str, dict[str, list[float]]] = {n: {s: [] for s in SCENARIOS} for n in servers}
        for r in range(args.rounds):
            for name, addr in servers.items():
                result = bench(addr, args.concurrency, args.seconds)
                for s in SCENARIOS:
                    rounds[name][s].append(result[s]["rps"])
                print(f"round {r + 1} {name}: " + ", ".join(f"{s} {result[s]['rps']:.0f}" for s in SCENARIOS),
                      flush=True)
        width = 7 * args.rounds + 2
        print(f"\n{'scenario':<17}{'before (rounds)':>{width}}  {'after (rounds)':>{width}}  {'change (medians)':>16}")
        for s in SCENARIOS:
            b, a = rounds["before"][s], rounds["after"][s]
            change = statistics.median(a) / statistics.median(b) - 1
            print(f"{s:<17}{', '.join(f'{x:.0f}' for x in b):>{width}}  {', '.join(f'{x:.0f}' for x in a):>{width}}"
                  f"  {change:>+16.1%}")
    finally:
        for p in reversed(procs):
            p.terminate()
            p.wait(timeout=20)
    return 0


if __name__ == "__main__":
    sys.exit(main())
