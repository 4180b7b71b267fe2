#!/usr/bin/env bash
# Does a room's fan-out cost depend on who else is connected? Broadcasts in one room of
# MEMBERS clients (RATE messages/s from 1 publisher, 64-byte messages) are measured twice
# per round, each time on a freshly started herald: alone, and with IDLE idle connections
# spread over IDLE_ROOMS other rooms. The figure is herald's CPU per delivery (from /proc,
# over the measured window); each round prints crowded/alone, and the end the median of
# the rounds. herald's fan-out visits only the room's members, so the ratio should be
# close to 1.
#
# A fixed rate, not saturation: at saturation herald's CPU per delivery is set by how many
# messages share a write, which follows the load generator's pace more than herald's own
# work (one publisher with 16 or 64 messages in flight: 235 or 82 ns per delivery, with
# both processes under half a core, taking turns). At RATE=2000 each message is mostly
# read and sent on its own, so the figure is the cost of one broadcast divided by its
# recipients, with both processes well below a full core.
#
# herald on SERVER_CPU, both loadgens on LOADGEN_CPU; the order of the two runs alternates
# between rounds, so a machine getting busier or quieter does not favour one side.
#
# Environment:
#   ROUNDS=5 MEMBERS=100 IDLE=15000 IDLE_ROOMS=150 DURATION=3 WARMUP=1
#   RATE=2000 PUBLISHERS=1 WINDOW=16   (RATE=0: saturation, WINDOW messages in flight
#                                       per publisher)
#   SERVER_CPU=0 LOADGEN_CPU=1 PORT=9410 OUT=target/room-isolation SKIP_BUILD=1
#   HERALD=... LOADGEN=...   binaries (default: $CARGO_TARGET_DIR or target/, release)
#   HERALD_FLAGS="--client-rate 0 --client-bandwidth 0"   (one publisher sends more than
#                            the 1,000 frames/s a client may send by default)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
ROUNDS=${ROUNDS:-5}
MEMBERS=${MEMBERS:-100}
PUBLISHERS=${PUBLISHERS:-1}
WINDOW=${WINDOW:-16}
RATE=${RATE:-2000}
IDLE=${IDLE:-15000}
IDLE_ROOMS=${IDLE_ROOMS:-150}
DURATION=${DURATION:-3}
WARMUP=${WARMUP:-1}
SERVER_CPU=${SERVER_CPU:-0}
LOADGEN_CPU=${LOADGEN_CPU:-1}
PORT=${PORT:-9410}
OUT=${OUT:-$ROOT/target/room-isolation}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
HERALD=${HERALD:-$TARGET/release/herald}
LOADGEN=${LOADGEN:-$TARGET/release/loadgen}
HERALD_FLAGS=${HERALD_FLAGS---client-rate 0 --client-bandwidth 0}
# The idle connections come from 4 source addresses, so TIME_WAIT left by earlier rounds
# never runs a single address pair out of ports.
IDLE_ADDRS=127.0.0.2-127.0.0.5

mkdir -p "$OUT"
log() { printf '== %s\n' "$*" >&2; }
[[ -n ${SKIP_BUILD:-} ]] || cargo build --release -q -p herald -p loadgen

SERVER_PID= IDLE_PID=
stop() { # PID-VARIABLE
    local pid=${!1}
    [[ -n $pid ]] || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    printf -v "$1" '%s' ''
}
cleanup() { stop IDLE_PID; stop SERVER_PID; }
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

metric() { # NAME: its value from herald's /metrics, or nothing
    curl -s --max-time 2 "http://127.0.0.1:$PORT/metrics" | sed -n "s/^$1 //p"
}

start_server() { # LOGFILE
    # shellcheck disable=SC2086 # the flags are words
    taskset -c "$SERVER_CPU" "$HERALD" --listen "127.0.0.1:$PORT" $HERALD_FLAGS >"$1" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 100); do
        [[ -n $(metric herald_connections_open) ]] && return 0
        sleep 0.1
    done
    echo "herald did not start; its log:" >&2
    cat "$1" >&2
    exit 2
}

measure() { # ROUND CASE
    local base="$OUT/$1-$2"
    start_server "$base.server.log"
    if [[ $2 == crowded ]]; then
        taskset -c "$LOADGEN_CPU" "$LOADGEN" idle --url "ws://127.0.0.1:$PORT/" \
            --clients "$IDLE" --rooms "$IDLE_ROOMS" --local-addrs "$IDLE_ADDRS" \
            --duration 600 --quiet >"$base.idle.log" 2>&1 &
        IDLE_PID=$!
        local open=0
        for _ in $(seq 600); do
            open=$(metric herald_websockets_open)
            ((${open:-0} >= IDLE)) && break
            kill -0 "$IDLE_PID" 2>/dev/null || break
            sleep 0.1
        done
        if ((${open:-0} < IDLE)); then
            echo "only ${open:-0} of $IDLE idle connections opened; see $base.idle.log" >&2
            exit 2
        fi
    fi
    log "round $1, $2: $MEMBERS members in /rooms/bench$([[ $2 == crowded ]] && echo ", $IDLE idle in $IDLE_ROOMS other rooms")"
    taskset -c "$LOADGEN_CPU" "$LOADGEN" broadcast --url "ws://127.0.0.1:$PORT/rooms/bench" \
        --clients "$MEMBERS" --publishers "$PUBLISHERS" --rate "$RATE" --window "$WINDOW" --size 64 \
        --duration "$DURATION" --warmup "$WARMUP" --server-pid "$SERVER_PID" --json --quiet \
        >"$base.json" 2>"$base.log" || log "round $1 $2: loadgen failed (see $base.log)"
    stop IDLE_PID
    stop SERVER_PID
}

for round in $(seq "$ROUNDS"); do
    if ((round % 2)); then
        measure "$round" alone
        measure "$round" crowded
    else
        measure "$round" crowded
        measure "$round" alone
    fi
done

python3 - "$OUT" "$ROUNDS" "$MEMBERS" "$IDLE" "$IDLE_ROOMS" <<'PY'
import json, os, statistics, sys

out, rounds, members, idle, idle_rooms = sys.argv[1], int(sys.argv[2]), *sys.argv[3:]

def load(name):
    try:
        with open(os.path.join(out, name + ".json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None

print(f"# a broadcast in a room of {members}: alone, and next to {idle} idle connections "
      f"in {idle_rooms} other rooms")
print(f"{'round':>5}  {'alone ns/deliv':>14}  {'crowded ns/deliv':>16}  {'ratio':>6}  "
      f"{'alone deliv/s':>13}  {'crowded deliv/s':>15}  lost  ok")
ratios, failed = [], False
for r in range(1, rounds + 1):
    a, c = load(f"{r}-alone"), load(f"{r}-crowded")
    if not a or not c:
        print(f"{r:>5}  no result")
        failed = True
        continue
    an = (a.get("server") or {}).get("cpu_ns_per_delivery")
    cn = (c.get("server") or {}).get("cpu_ns_per_delivery")
    ok = a.get("ok") and c.get("ok")
    failed |= not ok
    ratio = cn / an if an and cn else None
    if ratio:
        ratios.append(ratio)
    print(f"{r:>5}  {an or 0:>14,.0f}  {cn or 0:>16,.0f}  {ratio or 0:>5.2f}x  "
          f"{a.get('deliveries_per_sec') or 0:>13,.0f}  {c.get('deliveries_per_sec') or 0:>15,.0f}  "
          f"{(a.get('lost') or 0) + (c.get('lost') or 0):>4}  {'yes' if ok else 'NO'}")
if ratios:
    print(f"median crowded/alone CPU per delivery: {statistics.median(ratios):.2f}x "
          f"over {len(ratios)} rounds")
sys.exit(1 if failed else 0)
PY
