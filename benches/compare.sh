#!/usr/bin/env bash
# herald against its peers under the same load: the seed's Node.js `ws` server and a Python
# `websockets` server. Each server runs alone on one core (SERVER_CPU), loadgen on another
# (LOADGEN_CPU); every scenario gets a freshly started server, which is stopped by PID
# afterwards. Prints one table, and writes the JSON of every run, the .hgrm latency
# distributions and an SVG latency plot of scenario (c) to $OUT.
#
# Scenarios (64-byte messages, 1 publisher unless said):
#   a  1,000 clients, saturation: --rate 0 --window 16
#   b  10,000 clients, the same
#   c  1,000 clients at a fixed 200 messages/s (latency)
#   d  idle: hold 19,000 connections (server memory per connection)
#   e  10,000 clients in 100 rooms of 100, one publisher per room, saturation
#      (herald only: the peers have no rooms); compare its CPU per delivery with (b)'s
#   g  19,000 clients at a fixed 20 messages/s, for DURATION_G seconds (fan-out to many:
#      how evenly the clients are served, and how many writes a delivery takes)
#
# Environment (defaults give a quick run, a few minutes in all):
#   DURATION=3 WARMUP=1 DRAIN=5   seconds of each measured window / warm-up / drain limit
#   DURATION_G=10                  (g)'s window: at 20 messages/s, 3 s would be 60 broadcasts,
#                                  too few for its p99 and for each client's median
#   IDLE_SECS=3                    how long (d) holds its connections
#   RATE_C=200 RATE_G=20           messages per second in (c) and (g)
#   CLIENTS_A=1000 CLIENTS_B=10000 CLIENTS_C=1000 CLIENTS_D=19000 CLIENTS_E=10000 ROOMS_E=100
#   CLIENTS_G=19000
#   SERVERS="herald node python"   SCENARIOS="a b c d e g"
#   SERVER_CPU=0 LOADGEN_CPU=1     cores for taskset
#   PORT=9400                      port the servers listen on (127.0.0.1 only)
#   OUT=target/compare             where results go
#   SKIP_BUILD=1 SKIP_INSTALL=1    reuse existing binaries / node_modules / venv
#   HERALD=... LOADGEN=...         binaries to use (default: $CARGO_TARGET_DIR or target/)
#   HERALD_FLAGS="--client-rate 0 --client-bandwidth 0"
#                                  herald's flags. The default turns off its per-client rate
#                                  limits: one publisher at window 16 sends far more than the
#                                  1,000 frames/s a client may send by default, and these are
#                                  saturation benchmarks, not a flood to pace.
#   HERALD_BASELINE=path HERALD_BASELINE_FLAGS="$HERALD_FLAGS"
#                                  a second herald binary (say, the previous commit built beside
#                                  this one), run as server "baseline" (add it to SERVERS), so
#                                  that a change is measured against its parent in the same run;
#                                  both get the same flags unless told (set the flags to "" for
#                                  a binary older than the flags). HERALD_BEFORE and
#                                  HERALD_BEFORE_FLAGS, and the server name "before", still work.
#
# herald and the baseline are run with loadgen --server-metrics: their writes per delivery
# come from /metrics when they count them (herald_frames_per_write), else the column is "-".
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
DURATION=${DURATION:-3}
WARMUP=${WARMUP:-1}
DRAIN=${DRAIN:-5}
DURATION_G=${DURATION_G:-10}
IDLE_SECS=${IDLE_SECS:-3}
RATE_C=${RATE_C:-200}
RATE_G=${RATE_G:-20}
CLIENTS_A=${CLIENTS_A:-1000}
CLIENTS_B=${CLIENTS_B:-10000}
CLIENTS_C=${CLIENTS_C:-1000}
CLIENTS_D=${CLIENTS_D:-19000}
CLIENTS_E=${CLIENTS_E:-10000}
ROOMS_E=${ROOMS_E:-100}
CLIENTS_G=${CLIENTS_G:-19000}
SERVERS=${SERVERS:-herald node python}
SCENARIOS=${SCENARIOS:-a b c d e g}
SERVER_CPU=${SERVER_CPU:-0}
LOADGEN_CPU=${LOADGEN_CPU:-1}
PORT=${PORT:-9400}
OUT=${OUT:-$ROOT/target/compare}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
HERALD=${HERALD:-$TARGET/release/herald}
HERALD_FLAGS=${HERALD_FLAGS---client-rate 0 --client-bandwidth 0}
# HERALD_BEFORE(_FLAGS): the names these had before; an empty flags variable that is set
# still means no flags.
HERALD_BASELINE=${HERALD_BASELINE:-${HERALD_BEFORE:-}}
HERALD_BASELINE_FLAGS=${HERALD_BASELINE_FLAGS-${HERALD_BEFORE_FLAGS-$HERALD_FLAGS}}
LOADGEN=${LOADGEN:-$TARGET/release/loadgen}
PEERS=$ROOT/benches/peers
# Source addresses for loadgen: 8 of them, so TIME_WAIT left by earlier runs never
# exhausts the ~28k ephemeral ports of a single address pair.
LOCAL_ADDRS=127.0.0.1-127.0.0.8
CONNECT_PHASE=60

mkdir -p "$OUT"
log() { printf '== %s\n' "$*" >&2; }

if [[ -z ${SKIP_BUILD:-} ]]; then
    log "building herald and loadgen (release)"
    cargo build --release -q -p herald -p loadgen
fi
if [[ -z ${SKIP_INSTALL:-} ]]; then
    if [[ " $SERVERS " == *" node "* ]]; then
        log "installing the Node.js peer (npm ci)"
        npm ci --prefix "$PEERS/node" --no-audit --no-fund --loglevel=error >&2
    fi
    if [[ " $SERVERS " == *" python "* ]]; then
        log "installing the Python peer (venv)"
        [[ -x $PEERS/python/.venv/bin/python ]] || python3 -m venv "$PEERS/python/.venv"
        "$PEERS/python/.venv/bin/pip" install -q --disable-pip-version-check \
            -r "$PEERS/python/requirements.txt" >&2
    fi
fi

SERVER_PID=
stop_server() {
    [[ -n $SERVER_PID ]] || return 0
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 50); do
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=
}
trap stop_server EXIT INT TERM

start_server() { # NAME LOGFILE
    case $1 in
        # shellcheck disable=SC2086 # the flags are words
        herald) taskset -c "$SERVER_CPU" "$HERALD" --listen "127.0.0.1:$PORT" $HERALD_FLAGS >"$2" 2>&1 & ;;
        # shellcheck disable=SC2086
        baseline|before) taskset -c "$SERVER_CPU" \
            "${HERALD_BASELINE:?set HERALD_BASELINE to run server $1}" \
            --listen "127.0.0.1:$PORT" $HERALD_BASELINE_FLAGS >"$2" 2>&1 & ;;
        node) PORT=$PORT HOST=127.0.0.1 taskset -c "$SERVER_CPU" node "$PEERS/node/server.js" >"$2" 2>&1 & ;;
        python) PORT=$PORT HOST=127.0.0.1 taskset -c "$SERVER_CPU" \
            "$PEERS/python/.venv/bin/python" "$PEERS/python/server.py" >"$2" 2>&1 & ;;
        *) echo "unknown server $1" >&2; exit 2 ;;
    esac
    SERVER_PID=$!
    for _ in $(seq 100); do
        if ss -Hltn "sport = :$PORT" | grep -q .; then return 0; fi
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.1
    done
    echo "$1 did not start listening on 127.0.0.1:$PORT; its log:" >&2
    cat "$2" >&2
    exit 2
}

run_scenario() { # SERVER SCENARIO
    local server=$1 sc=$2 base="$OUT/$1-$2" args limit publishers=1 duration=$DURATION
    case $sc in
        a) args=(broadcast --clients "$CLIENTS_A" --rate 0 --window 16) ;;
        b) args=(broadcast --clients "$CLIENTS_B" --rate 0 --window 16) ;;
        c) args=(broadcast --clients "$CLIENTS_C" --rate "$RATE_C") ;;
        d) args=(idle --clients "$CLIENTS_D" --duration "$IDLE_SECS") ;;
        e) if [[ $server == node || $server == python ]]; then
               log "$server has no rooms: scenario e skipped"
               return 0
           fi
           publishers=$ROOMS_E
           args=(broadcast --clients "$CLIENTS_E" --rooms "$ROOMS_E" --rate 0 --window 16) ;;
        g) duration=$DURATION_G
           args=(broadcast --clients "$CLIENTS_G" --rate "$RATE_G") ;;
        *) echo "unknown scenario $sc" >&2; exit 2 ;;
    esac
    if [[ ${args[0]} == broadcast ]]; then
        args+=(--size 64 --publishers "$publishers" --duration "$duration" --warmup "$WARMUP"
            --drain "$DRAIN" --hgrm "$base.hgrm")
        case $server in
            herald|baseline|before) args+=(--server-metrics) ;;
        esac
    fi
    limit=$((CONNECT_PHASE + ${WARMUP%.*} + ${duration%.*} + ${DRAIN%.*} + ${IDLE_SECS%.*} + 30))
    start_server "$server" "$base.server.log"
    log "$server, scenario $sc: loadgen ${args[*]}"
    local rc=0
    timeout --signal=INT --kill-after=5 "$limit" taskset -c "$LOADGEN_CPU" "$LOADGEN" "${args[@]}" \
        --url "ws://127.0.0.1:$PORT/" --local-addrs "$LOCAL_ADDRS" \
        --connect-phase-timeout "$CONNECT_PHASE" --server-pid "$SERVER_PID" --json --quiet \
        >"$base.json" 2>"$base.log" || rc=$?
    stop_server
    echo "$rc" >"$base.rc"
    case $rc in
        0) ;;
        1) log "$server $sc: loadgen reported a failure (see $base.log)" ;;
        *) log "$server $sc: loadgen exited $rc (see $base.log)" ;;
    esac
}

for sc in $SCENARIOS; do
    for server in $SERVERS; do
        run_scenario "$server" "$sc"
    done
done

PLOTS=()
for server in $SERVERS; do
    [[ -s $OUT/$server-c.hgrm ]] && PLOTS+=("$server=$OUT/$server-c.hgrm")
done
if ((${#PLOTS[@]})) && [[ " $SCENARIOS " == *" c "* ]]; then
    "$LOADGEN" plot --out "$OUT/latency-c.svg" --log-latency \
        --title "Delivery latency, $CLIENTS_C clients at $RATE_C msg/s, 64-byte messages" "${PLOTS[@]}"
fi

CPU_MODEL=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
{
    echo "# $(date -u '+%Y-%m-%d %H:%M UTC'), $CPU_MODEL, $(nproc) CPUs, Linux $(uname -r)," \
        "herald $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo '?')"
    echo "# server on CPU $SERVER_CPU, loadgen on CPU $LOADGEN_CPU; DURATION=$DURATION WARMUP=$WARMUP" \
        "DRAIN=$DRAIN IDLE_SECS=$IDLE_SECS RATE_C=$RATE_C DURATION_G=$DURATION_G RATE_G=$RATE_G;" \
        "64-byte messages, 1 publisher (e: one per room)"
    echo "# herald flags: ${HERALD_FLAGS:-none}"
    if [[ " $SERVERS " == *" baseline "* || " $SERVERS " == *" before "* ]]; then
        echo "# baseline: $HERALD_BASELINE, flags: ${HERALD_BASELINE_FLAGS:-none}"
    fi
} | tee "$OUT/table.txt"
python3 - "$OUT" "$SERVERS" "$SCENARIOS" <<'PY' | tee -a "$OUT/table.txt"
import json, os, sys

out, servers, scenarios = sys.argv[1], sys.argv[2].split(), sys.argv[3].split()

def load(server, sc):
    try:
        with open(os.path.join(out, f"{server}-{sc}.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None

def fmt(v, spec="{:,.0f}"):
    return "-" if v is None else spec.format(v)

# p50 spread: p90/p10 of the clients' own median latencies (1.00x: all served alike).
# writes/deliv: the server's socket writes per delivery, from its /metrics (herald's
# herald_frames_per_write), "-" when it does not count them.
head = ["scenario", "server", "clients", "mode", "deliveries/s", "p50 ms", "p99 ms",
        "p99.9 ms", "p50 spread", "CPU ns/deliv", "writes/deliv", "RSS MiB", "KiB/conn",
        "lost", "ok"]
LOST = head.index("lost")
rows = []
for sc in scenarios:
    for server in servers:
        r = load(server, sc)
        if r is None:
            rows.append([sc, server, "-", "-", "no result"] + ["-"] * (len(head) - 5))
            continue
        lat, srv = r.get("latency") or {}, r.get("server") or {}
        spread = r.get("client_p50_spread") or {}
        lost = r.get("lost")
        if lost is not None and not r.get("drained", True):
            lost = f"{lost}*"
        rss, per_conn = srv.get("rss_end"), srv.get("bytes_per_connection")
        rows.append([
            sc, server, f"{r['connected']:,}/{r['clients']:,}", r["mode"],
            fmt(r.get("deliveries_per_sec")),
            fmt(lat.get("p50_ms"), "{:.3f}"), fmt(lat.get("p99_ms"), "{:.3f}"),
            fmt(lat.get("p99_9_ms"), "{:.3f}"),
            fmt(spread.get("p90_p10"), "{:.2f}x"),
            fmt(srv.get("cpu_ns_per_delivery")),
            fmt(srv.get("writes_per_delivery"), "{:.4f}"),
            fmt(None if rss is None else rss / 2**20, "{:.1f}"),
            fmt(None if per_conn is None else per_conn / 1024, "{:.2f}"),
            "-" if lost is None else str(lost),
            "yes" if r.get("ok") else "NO",
        ])
widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
line = lambda cells: "  ".join(str(c).rjust(w) for c, w in zip(cells, widths))
print(line(head))
print("  ".join("-" * w for w in widths))
for row in rows:
    print(line(row))

def ratio(a, b, digits=1):
    return f"{a / b:.{digits}f}x" if a and b else "-"

def versus(h, p, figures, digits=1):
    """herald's ratio to another run on each of `figures`, oriented so above 1 favours herald."""
    if h.get("scenario") == "idle":
        figures = ("memory per connection",)
    parts = []
    for name in figures:
        hv, pv = FIGURES[name](h), FIGURES[name](p)
        parts.append(f"{name} " + (ratio(hv, pv, digits) if name == "deliveries/s" else ratio(pv, hv, digits)))
    return ", ".join(parts)

FIGURES = {
    "deliveries/s": lambda r: r.get("deliveries_per_sec"),
    "CPU per delivery": lambda r: (r.get("server") or {}).get("cpu_ns_per_delivery"),
    "p50": lambda r: (r.get("latency") or {}).get("p50_ms"),
    "p99": lambda r: (r.get("latency") or {}).get("p99_ms"),
    "memory per connection": lambda r: (r.get("server") or {}).get("bytes_per_connection"),
}
# The second herald binary: "before" is its older name.
BASELINES = ("baseline", "before")
peers = [s for s in servers if s != "herald" and s not in BASELINES]
if "herald" in servers and peers:
    print()
    print("herald's ratio to each peer (above 1 means herald is better):")
    for sc in scenarios:
        h = load("herald", sc)
        for peer in peers:
            p = load(peer, sc)
            if h and p:
                print(f"  {sc} vs {peer}: " + versus(h, p, ("deliveries/s", "CPU per delivery", "p99")))
for base in (s for s in BASELINES if s in servers and "herald" in servers):
    print()
    print(f"herald's ratio to {base} (above 1 means herald is better):")
    for sc in scenarios:
        h, b = load("herald", sc), load(base, sc)
        if h and b:
            print(f"  {sc}: " + versus(h, b, ("deliveries/s", "CPU per delivery", "p50", "p99"), 2))
for server in servers:
    b, e = load(server, "b"), load(server, "e")
    if b and e and (b.get("server") or {}).get("cpu_ns_per_delivery") and (e.get("server") or {}).get("cpu_ns_per_delivery"):
        print()
        print(f"{server}: rooms (e) cost {e['server']['cpu_ns_per_delivery'] / b['server']['cpu_ns_per_delivery']:.2f}x "
              "the CPU per delivery of one room of the same size (b); misrouted "
              f"{e.get('misrouted', '-')}")
if any(str(row[LOST]).endswith("*") for row in rows):
    print()
    print("* the drain timed out: messages still queued in the server when loadgen stopped count as lost.")
warn = [f"{s}-{sc}" for sc in scenarios for s in servers
        if (load(s, sc) or {}).get("loadgen", {}).get("saturated")]
if warn:
    print("loadgen used over 90% of its core in: " + ", ".join(warn) + " (those figures are a floor)")
PY
echo "results (table.txt, one JSON per run), logs, .hgrm files and latency-c.svg are in $OUT" >&2
