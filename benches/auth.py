#!/usr/bin/env python3
"""What authentication and TLS cost on the hot path, measured side by side in one run:

    python3 benches/auth.py [--rounds 3] [--seconds 3] [--connections 16] [--streams 4]

Starts one private redis-server and three release flowstate servers on it: `auth.mode = none`
over plaintext, `auth.mode = required` with an API key over plaintext, and the same over TLS
(a throwaway CA made with openssl). h2load (16 connections x 4 streams by default) runs cache
Get and rate-limit Check against each in turn, for several rounds, alternating so that a busy
neighbour hits all three alike, and the medians are compared.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile

from run import OUT, ROOT, free_port, h2load_bodies, wait_port


def start(env_extra: dict[str, str], redis_port: int, prefix: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWSTATE_")}
    env.update(FLOWSTATE_REDIS__URL=f"redis://127.0.0.1:{redis_port}", FLOWSTATE_SERVER__LISTEN=f"127.0.0.1:{port}",
               FLOWSTATE_METRICS__ENABLED="false", FLOWSTATE_LOG__LEVEL="error", FLOWSTATE_REDIS__KEY_PREFIX=prefix,
               **env_extra)
    proc = subprocess.Popen([str(ROOT / "target/release/flowstate")], env=env)
    wait_port(port)
    return proc, port


def h2load(url: str, path: str, body, conns: int, streams: int, seconds: float, headers: list[str]) -> float:
    args = ["h2load", "-D", str(max(1, round(seconds))), "-c", str(conns), "-m", str(streams), "-t", "1",
            "-d", str(body), "-H", "content-type: application/grpc", "-H", "te: trailers"]
    for h in headers:
        args += ["-H", h]
    out = subprocess.run(args + [f"{url}{path}"], capture_output=True, text=True, check=True).stdout
    m = re.search(r"finished in [\d.]+s, ([\d.]+) req/s", out)
    failed = re.search(r"(\d+) failed", out)
    if not m or (failed and int(failed.group(1))):
        raise SystemExit(f"h2load failed:\n{out}")
    return float(m.group(1))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--streams", type=int, default=4)
    args = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "flowstate"], cwd=ROOT, check=True)
    OUT.mkdir(parents=True, exist_ok=True)
    bodies = h2load_bodies()
    pki = tempfile.mkdtemp()
    ossl = ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout", f"{pki}/key.pem", "-out", f"{pki}/cert.pem"]
    subprocess.run(ossl, check=True, capture_output=True)
    made = subprocess.run([str(ROOT / "target/release/flowstate"), "keys", "new", "--tenant", "bench", "--allow", "*"],
                          capture_output=True, text=True, check=True).stdout
    key, line = [l for l in made.splitlines() if not l.startswith("#")]

    rport = free_port()
    redis = subprocess.Popen(["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no"], stdout=subprocess.DEVNULL)
    procs = [redis]
    try:
        wait_port(rport)
        keyed = {"FLOWSTATE_AUTH__MODE": "required", "FLOWSTATE_AUTH__KEYS": line}
        tls = {"FLOWSTATE_SERVER__TLS__CERT_FILE": f"{pki}/cert.pem", "FLOWSTATE_SERVER__TLS__KEY_FILE": f"{pki}/key.pem"}
        setups = {
            "auth off": ({}, "http", []),
            "API key": (keyed, "http", [f"authorization: Bearer {key}"]),
            "API key + TLS": ({**keyed, **tls}, "https", [f"authorization: Bearer {key}"]),
        }
        servers = {}
        for name, (env, scheme, headers) in setups.items():
            proc, port = start(env, rport, re.sub(r"\W", "", name))
            procs.append(proc)
            servers[name] = (f"{scheme}://127.0.0.1:{port}", headers)
        results = {(n, s): [] for n in servers for s in bodies}
        for r in range(args.rounds):
            for scenario, (path, body) in bodies.items():
                for name, (url, headers) in servers.items():
                    rps = h2load(url, path, body, args.connections, args.streams, args.seconds, headers)
                    results[(name, scenario)].append(rps)
                    print(f"round {r + 1} {scenario} {name}: {rps:.0f}/s", flush=True)
        print(f"\nh2load {args.connections} connections x {args.streams} streams, medians of {args.rounds} rounds")
        print(f"{'scenario':<17}" + "".join(f"{n:>16}" for n in servers) + f"{'key/off':>10}{'TLS/off':>10}")
        for scenario in bodies:
            med = {n: statistics.median(results[(n, scenario)]) for n in servers}
            print(f"{scenario:<17}" + "".join(f"{med[n]:>16.0f}" for n in servers)
                  + f"{med['API key'] / med['auth off']:>10.1%}{med['API key + TLS'] / med['auth off']:>10.1%}")
    finally:
        for p in reversed(procs):
            p.terminate()
            p.wait(timeout=20)
    return 0


if __name__ == "__main__":
    sys.exit(main())
