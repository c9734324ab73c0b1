#!/usr/bin/env bash
# Measures flowstate against Redis itself, side by side, in one run on this machine:
#   benches/compare.sh [concurrency] [seconds-per-scenario]
# Starts a private redis-server and a release flowstate on free loopback ports, runs
# flowstate-bench (closed loop) for every scenario, then redis-benchmark at the same concurrency
# for the closest Redis equivalents (GET, SET, EVALSHA of flowstate's own rate-limit script), and
# prints flowstate's throughput as a ratio of Redis's. Quote the ratios: absolute numbers on a
# shared 2-core machine move from run to run.
set -euo pipefail
cd "$(dirname "$0")/.."
CONC=${1:-16}
SECS=${2:-5}
OUT=${BENCH_OUT:-target/bench}
mkdir -p "$OUT"

command -v redis-benchmark >/dev/null || { echo "redis-benchmark missing (apt-get install redis-tools)"; exit 1; }
cargo build --release --quiet --bin flowstate --bin flowstate-bench

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; return 1; }

RPORT=$(free_port)
redis-server --port "$RPORT" --bind 127.0.0.1 --save "" --appendonly no --logfile "$OUT/redis.log" &
RPID=$!
FPID=
trap 'kill $RPID ${FPID:-} 2>/dev/null || true' EXIT
wait_port "$RPORT"

FPORT=$(free_port)
FLOWSTATE_REDIS__URL="redis://127.0.0.1:$RPORT" FLOWSTATE_SERVER__LISTEN="127.0.0.1:$FPORT" \
  FLOWSTATE_LOG__LEVEL=warn target/release/flowstate 2>"$OUT/flowstate.log" &
FPID=$!
wait_port "$FPORT"

echo "== flowstate-bench: concurrency $CONC, ${SECS}s per scenario, 4 HTTP/2 connections"
target/release/flowstate-bench --addr "127.0.0.1:$FPORT" --concurrency "$CONC" --duration "$SECS" \
  | tee "$OUT/flowstate.txt"

N=$((SECS * 60000))
SHA=$(redis-cli -p "$RPORT" SCRIPT LOAD "$(cat src/store/lua/ratelimit_check.lua)")
echo "== redis-benchmark: -c $CONC"
{
  redis-benchmark -p "$RPORT" -c "$CONC" -n "$N" -r 1000 --csv -t get,set
  redis-benchmark -p "$RPORT" -c "$CONC" -n "$N" -r 1000 --csv \
    EVALSHA "$SHA" 1 'bench:rl:{user-__rand_int__}' 1763000000000 1 1 4 100000000 3600000 100000000
} | tee "$OUT/redis.csv"

python3 - "$OUT/flowstate.txt" "$OUT/redis.csv" <<'PY'
import csv, json, sys
fs = {}
for line in open(sys.argv[1]):
    if line.startswith("{"):
        row = json.loads(line)
        fs[row["scenario"]] = row
redis = {}
for row in csv.reader(open(sys.argv[2])):
    if row and row[0] != "test":
        name = row[0].split()[0].upper()
        redis[name] = float(row[1])
pairs = [("cache-get", "GET"), ("session-get", "GET"), ("cache-set", "SET"),
         ("session-create", "SET"), ("ratelimit-check", "EVALSHA"), ("ratelimit-check2", "EVALSHA")]
print("\n== ratio of flowstate to redis-benchmark (same concurrency, same run)")
print(f"{'scenario':<17}{'flowstate/s':>12}{'redis op':>10}{'redis/s':>11}{'ratio':>8}{'p50 µs':>9}{'p99 µs':>9}")
for scenario, op in pairs:
    if scenario in fs and op in redis:
        f = fs[scenario]
        print(f"{scenario:<17}{f['rps']:>12.0f}{op:>10}{redis[op]:>11.0f}{f['rps'] / redis[op]:>8.1%}"
              f"{f['p50_us']:>9}{f['p99_us']:>9}")
PY
