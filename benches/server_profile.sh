#!/usr/bin/env bash
# Where herald's CPU goes in one loadgen scenario, and how many messages its writes
# carry: herald (on SERVER_CPU) under `loadgen broadcast` (on LOADGEN_CPU), then
#   - herald's user and system CPU time over the whole run (/proc/PID/stat, fields 14
#     and 15, in clock ticks), and the system share;
#   - herald_frames_per_write from /metrics at the end: writes, messages, messages per
#     write and the share of writes in each power-of-two bucket.
#
#   benches/server_profile.sh b                      # 10,000 clients, saturation
#   benches/server_profile.sh g --flush-slice 0      # 19,000 clients at 20 msg/s, old schedule
#
# Scenarios as in compare.sh: a (1,000 clients, --rate 0 --window 16), b (10,000, the
# same), e (10,000 in 100 rooms, a publisher each), g (19,000 at 20 messages/s). Words
# after the scenario are herald's flags (after --client-rate 0 --client-bandwidth 0).
# Environment: DURATION=3 WARMUP=1 SERVER_CPU=0 LOADGEN_CPU=1 PORT=9431 HERALD=... LOADGEN=...
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
HERALD=${HERALD:-$TARGET/release/herald}
LOADGEN=${LOADGEN:-$TARGET/release/loadgen}
DURATION=${DURATION:-3}
WARMUP=${WARMUP:-1}
SERVER_CPU=${SERVER_CPU:-0}
LOADGEN_CPU=${LOADGEN_CPU:-1}
PORT=${PORT:-9431}
scenario=${1:?usage: server_profile.sh a|b|e|g [herald flags...]}
shift
case $scenario in
    a) args=(--clients 1000 --rate 0 --window 16) ;;
    b) args=(--clients 10000 --rate 0 --window 16) ;;
    e) args=(--clients 10000 --rooms 100 --publishers 100 --rate 0 --window 16) ;;
    g) args=(--clients 19000 --rate 20) ;;
    *) echo "unknown scenario $scenario" >&2; exit 2 ;;
esac

taskset -c "$SERVER_CPU" "$HERALD" --listen "127.0.0.1:$PORT" --client-rate 0 \
    --client-bandwidth 0 "$@" >/dev/null 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true' EXIT
for _ in $(seq 100); do
    curl -s --max-time 1 "http://127.0.0.1:$PORT/healthz" >/dev/null && break
    sleep 0.1
done
read -r user0 sys0 < <(awk '{print $14, $15}' "/proc/$pid/stat")
taskset -c "$LOADGEN_CPU" "$LOADGEN" broadcast --url "ws://127.0.0.1:$PORT/" "${args[@]}" \
    --duration "$DURATION" --warmup "$WARMUP" --local-addrs 127.0.0.1-127.0.0.8 \
    --json --quiet >/dev/null 2>&1 || echo "loadgen reported a failure" >&2
read -r user1 sys1 < <(awk '{print $14, $15}' "/proc/$pid/stat")
curl -s --max-time 5 "http://127.0.0.1:$PORT/metrics" | python3 -c '
import sys
scenario, flags, user, sys_ = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
rows = [l.split() for l in sys.stdin if l.startswith("herald_frames_per_write")]
count = next(int(float(v)) for k, v in rows if k.endswith("_count"))
total = next(int(float(v)) for k, v in rows if k.endswith("_sum"))
shares, below = [], 0
for k, v in rows:
    if "_bucket" in k:
        le, n = k.split("le=")[1].strip("{}\"").rstrip("\"}"), int(float(v))
        if n > below:
            shares.append(f"<={le}: {100 * (n - below) / max(count, 1):.1f}%")
        below = n
label = flags or "(defaults)"
buckets = ", ".join(shares)
print(f"{scenario} {label}: user {user} ticks, system {sys_} ticks "
      f"({100 * sys_ / max(user + sys_, 1):.0f}% system); {count:,} writes carried "
      f"{total:,} messages ({total / max(count, 1):.2f} per write): {buckets}")
' "$scenario" "$*" "$((user1 - user0))" "$((sys1 - sys0))"
