#!/usr/bin/env bash
# Does a client that stops reading hurt the others? The same loadgen run against herald
# twice: alone, then next to STALLED clients that upgrade and never read a byte (each
# with a 4 KiB receive buffer, and herald runs with --send-buffer 32KiB, so what they
# do not read piles up in herald's queue, where --max-queued-bytes applies). Prints both
# runs' latency, loadgen's loss accounting, and herald's slow-consumer counter.
#
#   bash benches/slow_consumer_latency.sh
#   CLIENTS=1000 RATE=100 SIZE=1024 STALLED=20 DURATION=5 bash benches/slow_consumer_latency.sh
#
# herald on CPU 0, loadgen on CPU 1; everything on 127.0.0.1, stopped by PID, bounded.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
CLIENTS=${CLIENTS:-1000}
RATE=${RATE:-100}
STALLED=${STALLED:-20}
DURATION=${DURATION:-5}
SIZE=${SIZE:-1024}
PORT=${PORT:-9420}
QUEUE=${QUEUE:-256KiB}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
[[ -n ${SKIP_BUILD:-} ]] || cargo build --release -q -p herald -p loadgen

taskset -c 0 "$TARGET/release/herald" --listen "127.0.0.1:$PORT" --max-queued-bytes "$QUEUE" \
    --send-buffer 32KiB \
    >/dev/null 2>&1 &
HERALD=$!
STALLER=""
cleanup() {
    [[ -n $STALLER ]] && kill "$STALLER" 2>/dev/null || true
    kill "$HERALD" 2>/dev/null || true
}
trap cleanup EXIT
for _ in $(seq 50); do
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
    sleep 0.1
done

run() {
    taskset -c 1 timeout $((DURATION + 60)) "$TARGET/release/loadgen" broadcast \
        --url "ws://127.0.0.1:$PORT/" --clients "$CLIENTS" --rate "$RATE" --size "$SIZE" \
        --duration "$DURATION" --server-pid "$HERALD" --quiet 2>&1 |
        grep -E 'latency p50|latency p99.9|lost/dup|result'
}

echo "== $CLIENTS clients at $RATE messages/s of $SIZE bytes, alone"
run
echo "== the same, next to $STALLED clients that never read (--max-queued-bytes $QUEUE)"
timeout $((DURATION + 90)) python3 - "$PORT" "$STALLED" <<'PY' &
import socket, sys, time
port, n = int(sys.argv[1]), int(sys.argv[2])
req = (b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
       b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
socks = []
for _ in range(n):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", port))
    s.sendall(req)
    socks.append(s)  # never read again
time.sleep(3600)
PY
STALLER=$!
sleep 1
run
slow=$(curl -s "http://127.0.0.1:$PORT/metrics" | grep -E '^herald_slow_consumers_total' || true)
echo "herald: ${slow:-herald_slow_consumers_total ?}"
