#!/usr/bin/env bash
# herald's two ways in, side by side: the same broadcast scenarios published over the
# publisher's WebSocket (--publish-via ws) and through POST /publish (--publish-via http).
# One herald (--publish-token) runs on SERVER_CPU for the whole session; loadgen runs on
# LOADGEN_CPU, alternating ws and http within each round so that drift of the machine
# falls on both alike. herald is stopped by PID at the end; every run is bounded by
# `timeout`.
#
# Scenarios (64-byte messages, 1 publisher):
#   a  1,000 clients, saturation: --rate 0 --window 16
#   c  1,000 clients at 200 messages/s (latency)
#
# Environment: DURATION=5 WARMUP=1 DRAIN=30 ROUNDS=2 SCENARIOS="a c" CLIENTS=1000
#   RATE_C=200 SERVER_CPU=0 LOADGEN_CPU=1 PORT=9410 OUT=target/publish-via SKIP_BUILD=1
# DRAIN is long because a herald that falls behind (as through POST /publish in c) still
# delivers its backlog after publishing ends: a short drain would count it as lost.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
DURATION=${DURATION:-5}
WARMUP=${WARMUP:-1}
DRAIN=${DRAIN:-30}
ROUNDS=${ROUNDS:-2}
SCENARIOS=${SCENARIOS:-a c}
CLIENTS=${CLIENTS:-1000}
RATE_C=${RATE_C:-200}
SERVER_CPU=${SERVER_CPU:-0}
LOADGEN_CPU=${LOADGEN_CPU:-1}
PORT=${PORT:-9410}
OUT=${OUT:-$ROOT/target/publish-via}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
TOKEN=bench-token

mkdir -p "$OUT"
if [[ -z ${SKIP_BUILD:-} ]]; then
    cargo build --release -q -p herald -p loadgen
fi
# The per-client rate limits are off: the ws publisher saturates herald on purpose.
taskset -c "$SERVER_CPU" "$TARGET/release/herald" --listen "127.0.0.1:$PORT" \
    --publish-token "$TOKEN" --client-rate 0 --client-bandwidth 0 >"$OUT/herald.log" 2>&1 &
HERALD_PID=$!
trap 'kill "$HERALD_PID" 2>/dev/null; wait "$HERALD_PID" 2>/dev/null || true' EXIT
for _ in $(seq 50); do
    (echo >"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
    sleep 0.1
done

printf '# %s UTC, %s, herald %s\n' "$(date -u '+%Y-%m-%d %H:%M')" \
    "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)" \
    "$(git rev-parse --short HEAD)$(git diff --quiet -- src || echo -dirty)"
printf '%-5s %-4s %-6s %12s %9s %9s %13s %5s %5s %6s %6s %4s\n' round sc via deliveries/s \
    'p50 ms' 'p99 ms' 'CPU ns/deliv' srv% lg% lost pubErr ok
for round in $(seq "$ROUNDS"); do
    for sc in $SCENARIOS; do
        case $sc in
            a) load=(--rate 0 --window 16) ;;
            c) load=(--rate "$RATE_C") ;;
            *) echo "unknown scenario $sc" >&2; exit 2 ;;
        esac
        for via in ws http; do
            auth=()
            [[ $via == http ]] && auth=(--token "$TOKEN")
            json="$OUT/$sc-$via-$round.json"
            timeout $((DURATION + WARMUP + DRAIN + 90)) taskset -c "$LOADGEN_CPU" \
                "$TARGET/release/loadgen" broadcast --url "ws://127.0.0.1:$PORT/" \
                --clients "$CLIENTS" "${load[@]}" --publish-via "$via" "${auth[@]}" \
                --duration "$DURATION" --warmup "$WARMUP" --drain "$DRAIN" --server-pid "$HERALD_PID" \
                --local-addrs 127.0.0.1-127.0.0.8 --json --quiet >"$json" 2>"$OUT/$sc-$via-$round.txt" || true
            jq -r --arg r "$round" --arg sc "$sc" --arg via "$via" \
                '[$r, $sc, $via, (.deliveries_per_sec|floor), .latency.p50_ms, .latency.p99_ms,
                  (.server.cpu_ns_per_delivery // 0 | floor), 100 * .server.cpu_load,
                  100 * .loadgen.load, .lost, (.publish.failed // 0),
                  (if .ok then "yes" else "NO" end)] | @tsv' "$json" |
                awk -F'\t' '{printf "%-5s %-4s %-6s %12d %9.3f %9.3f %13d %5.0f %5.0f %6d %6d %4s\n",
                             $1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12}'
        done
    done
done
