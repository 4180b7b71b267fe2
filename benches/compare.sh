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
#   fa, fc  issue 12's cluster: (a)'s and (c)'s loads (CLIENTS_A clients saturating at
#      window 16; CLIENTS_C clients at RATE_C messages/s) on two herald nodes that share PORT
#      (--reuse-port) and one Redis (--redis): each run starts its own redis-server on a free
#      127.0.0.1 port (--save '' --appendonly no, a temporary --dir) and two nodes with
#      HERALD_FLAGS; loadgen connects to PORT and the kernel spreads the connections over the
#      nodes (the split is read from each node's /metrics, benches/node_metrics.py). herald
#      only: the peers have no bus. Pinning, on this 2-core machine: both nodes AND Redis on
#      SERVER_CPU (REDIS_CPU moves Redis), loadgen (and redis-benchmark, and the metrics reader) on LOADGEN_CPU, so
#      the cluster gets the one core single-process herald gets in (a) and (c), and its CPU
#      per delivery and latency compare at the same hardware; the nodes' deliveries/s at
#      saturation are then three processes' share of one core, not two cores' worth.
#      Reported apart from the main table: CPU per delivery of each node (its CPU over its
#      own receivers' deliveries) and of both together (over all deliveries), Redis's CPU
#      per delivery and per message, the publish-to-echo time (herald_bus_echo_seconds,
#      whole run, quantiles interpolated inside its power-of-two buckets, and the exact
#      mean), gaps, order mismatches and losses, and as the ceiling
#      `redis-benchmark -q -P 64 -n REDIS_BENCH_N PUBLISH herald:bench PAYLOAD` against the
#      same redis-server once the nodes have stopped (`-t publish` runs nothing in this
#      redis-benchmark, 7.0; PAYLOAD is as long as the run's mean bus bytes per publish, the
#      command's framing included; a channel without subscribers: Redis's command path, not
#      a fan-out). With (a) and (c) in the same run it prints the issue's
#      targets and whether they are met: both nodes' CPU per delivery within 1.2x of (a)'s
#      and (c)'s, and (fc)'s p50 at most 0.5 ms above (c)'s.
#
# Environment (defaults give a quick run, a few minutes in all):
#   DURATION=3 WARMUP=1 DRAIN=5   seconds of each measured window / warm-up / drain limit
#   DURATION_G=10                  (g)'s window: at 20 messages/s, 3 s would be 60 broadcasts,
#                                  too few for its p99 and for each client's median
#   IDLE_SECS=3                    how long (d) holds its connections
#   RATE_C=200 RATE_G=20           messages per second in (c) and (g)
#   CLIENTS_A=1000 CLIENTS_B=10000 CLIENTS_C=1000 CLIENTS_D=19000 CLIENTS_E=10000 ROOMS_E=100
#   CLIENTS_G=19000
#   REDIS_BENCH_N=1000000          PUBLISH commands of the (f) ceiling (redis-benchmark -n)
#   REDIS_SERVER=redis-server REDIS_BENCHMARK=redis-benchmark
#   SERVERS="herald node python"   SCENARIOS="a b c d e g" (fa and fc on request)
#   SERVER_CPU=0 LOADGEN_CPU=1     cores for taskset
#   REDIS_CPU=$SERVER_CPU          (f)'s redis-server: with the nodes by default; LOADGEN_CPU
#                                  runs it as a service beside herald's core, as a deployment
#                                  would, where the nodes alone share SERVER_CPU
#   PORT=9400                      port the servers listen on (127.0.0.1 only)
#   OUT=target/compare/<UTC date-time>-<commit>
#                                  where results go (a new directory each run; target/compare/latest
#                                  links to the newest); an OUT given is used as it is
#   HERALD_LOG=warn                herald's RUST_LOG during the runs
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
REDIS_BENCH_N=${REDIS_BENCH_N:-1000000}
REDIS_SERVER=${REDIS_SERVER:-redis-server}
REDIS_BENCHMARK=${REDIS_BENCHMARK:-redis-benchmark}
SERVERS=${SERVERS:-herald node python}
SCENARIOS=${SCENARIOS:-a b c d e g}
SERVER_CPU=${SERVER_CPU:-0}
LOADGEN_CPU=${LOADGEN_CPU:-1}
REDIS_CPU=${REDIS_CPU:-$SERVER_CPU}
PORT=${PORT:-9400}
# One directory per run, named by when and at which commit it ran, and a `latest` link
# to the newest; OUT given is used as it is.
if [[ -z ${OUT:-} ]]; then
    OUT=$ROOT/target/compare/$(date -u +%Y%m%d-%H%M%S)-$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo nogit)
    LATEST=$ROOT/target/compare/latest
fi
# herald's log level during runs: warn, so a run's log holds its problems, not a line per
# connection (HERALD_LOG=info or debug to see more).
HERALD_LOG=${HERALD_LOG:-warn}
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
[[ -z ${LATEST:-} ]] || ln -sfn "$OUT" "$LATEST"
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

stop_pid() { # PID: one process this script started
    kill -TERM "$1" 2>/dev/null || true
    for _ in $(seq 50); do
        kill -0 "$1" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

# SERVER_PID: the server of a scenario; CLUSTER_PIDS: (f)'s nodes, then its redis-server.
SERVER_PID=
CLUSTER_PIDS=()
CLUSTER_DIR=
stop_server() {
    [[ -n $SERVER_PID ]] || return 0
    stop_pid "$SERVER_PID"
    SERVER_PID=
}
stop_cluster() { # stops the nodes and Redis still running, in the order they started
    local pid
    for pid in "${CLUSTER_PIDS[@]}"; do
        stop_pid "$pid"
    done
    CLUSTER_PIDS=()
    [[ -z $CLUSTER_DIR ]] || rm -rf "$CLUSTER_DIR"
    CLUSTER_DIR=
}
trap 'stop_server; stop_cluster' EXIT
# A signal ends the script (the EXIT trap then stops what it started), not only the
# command it interrupted: bash runs the next scenario after a trap that does not exit.
trap 'exit 130' INT
trap 'exit 143' TERM

start_server() { # NAME LOGFILE
    case $1 in
        # shellcheck disable=SC2086 # the flags are words
        herald) RUST_LOG=$HERALD_LOG taskset -c "$SERVER_CPU" "$HERALD" --listen "127.0.0.1:$PORT" $HERALD_FLAGS >"$2" 2>&1 & ;;
        # shellcheck disable=SC2086
        baseline|before) RUST_LOG=$HERALD_LOG taskset -c "$SERVER_CPU" \
            "${HERALD_BASELINE:?set HERALD_BASELINE to run server $1}" \
            --listen "127.0.0.1:$PORT" $HERALD_BASELINE_FLAGS >"$2" 2>&1 & ;;
        node) PORT=$PORT HOST=127.0.0.1 taskset -c "$SERVER_CPU" node "$PEERS/node/server.js" >"$2" 2>&1 & ;;
        python) PORT=$PORT HOST=127.0.0.1 taskset -c "$SERVER_CPU" \
            "$PEERS/python/.venv/bin/python" "$PEERS/python/server.py" >"$2" 2>&1 & ;;
        *) echo "unknown server $1" >&2; exit 2 ;;
    esac
    SERVER_PID=$!
    wait_listening "$PORT" "$SERVER_PID" "$1" "$2"
}

wait_listening() { # PORT PID NAME LOGFILE: until something listens on 127.0.0.1:PORT
    for _ in $(seq 100); do
        if ss -Hltn "sport = :$1" | grep -q .; then return 0; fi
        kill -0 "$2" 2>/dev/null || break
        sleep 0.1
    done
    echo "$3 did not start listening on 127.0.0.1:$1; its log:" >&2
    cat "$4" >&2
    exit 2
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# (f): two herald nodes on PORT with --reuse-port over their own redis-server; see the header.
run_cluster() { # SCENARIO
    local sc=$1 base="$OUT/herald-$1" args clients rport url node n rc=0 split_pid limit
    case $sc in
        fa) clients=$CLIENTS_A args=(--rate 0 --window 16) ;;
        fc) clients=$CLIENTS_C args=(--rate "$RATE_C") ;;
    esac
    rm -f "$base.nodes" "$base.split" "$base.redis-benchmark.txt"
    CLUSTER_DIR=$(mktemp -d "${TMPDIR:-/tmp}/herald-bench-redis.XXXXXX")
    rport=$(free_port)
    taskset -c "$REDIS_CPU" "$REDIS_SERVER" --bind 127.0.0.1 --port "$rport" --save '' \
        --appendonly no --dir "$CLUSTER_DIR" >"$base.redis.log" 2>&1 &
    local redis_pid=$!
    CLUSTER_PIDS=("$redis_pid")
    wait_listening "$rport" "$redis_pid" redis-server "$base.redis.log"
    url=redis://127.0.0.1:$rport
    local nodes=()
    for n in 1 2; do
        # shellcheck disable=SC2086 # the flags are words
        RUST_LOG=$HERALD_LOG taskset -c "$SERVER_CPU" "$HERALD" --listen "127.0.0.1:$PORT" --reuse-port --redis "$url" \
            $HERALD_FLAGS >"$base.node$n.log" 2>&1 &
        nodes+=("$!")
        # Nodes first: they are stopped before Redis.
        CLUSTER_PIDS=("${nodes[@]}" "$redis_pid")
    done
    if ! taskset -c "$LOADGEN_CPU" python3 "$ROOT/benches/node_metrics.py" ready "$PORT" "${nodes[@]}"; then
        cat "$base.node1.log" "$base.node2.log" >&2
        exit 2
    fi
    # Which node got how many clients: read while they connect, and left alone after.
    taskset -c "$LOADGEN_CPU" python3 "$ROOT/benches/node_metrics.py" split "$PORT" "$clients" \
        "$base.split" "${nodes[@]}" &
    split_pid=$!
    args=(broadcast --clients "$clients" "${args[@]}" --size 64 --publishers 1
        --duration "$DURATION" --warmup "$WARMUP" --drain "$DRAIN" --hgrm "$base.hgrm")
    limit=$((CONNECT_PHASE + ${WARMUP%.*} + ${DURATION%.*} + ${DRAIN%.*} + 30))
    log "herald x2 + redis, scenario $sc: loadgen ${args[*]}"
    # Not --server-metrics: it reads one page per address, and here one address is two nodes.
    timeout --signal=INT --kill-after=5 "$limit" taskset -c "$LOADGEN_CPU" "$LOADGEN" "${args[@]}" \
        --url "ws://127.0.0.1:$PORT/" --local-addrs "$LOCAL_ADDRS" \
        --connect-phase-timeout "$CONNECT_PHASE" --server-pid "${nodes[0]}" \
        --also-pid "${nodes[1]}" --also-pid "$redis_pid" --json --quiet \
        >"$base.json" 2>"$base.log" || rc=$?
    if kill -0 "$split_pid" 2>/dev/null; then
        log "herald $sc: the nodes' connections never added up to $clients"
        kill "$split_pid" 2>/dev/null || true
    fi
    wait "$split_pid" 2>/dev/null || true
    taskset -c "$LOADGEN_CPU" python3 "$ROOT/benches/node_metrics.py" final "$PORT" \
        "$base.split" "$base.nodes" "${nodes[@]}" ||
        log "herald $sc: a node's /metrics could not be read after the run"
    for node in "${nodes[@]}"; do
        stop_pid "$node"
    done
    CLUSTER_PIDS=("$redis_pid")
    # This redis-benchmark has no "publish" among its -t tests (-t publish runs nothing), so
    # the command is given; it does not fill in __data__, so the payload is spelled out.
    local size payload
    size=$(python3 -c 'import json, sys
n = json.load(open(sys.argv[1]))["nodes"]
p = sum(x.get("bus_publishes") or 0 for x in n)
print(round(sum(x.get("bus_sent_bytes") or 0 for x in n) / p) if p else 140)' "$base.nodes" 2>/dev/null ||
        echo 140)
    payload=$(head -c "$size" /dev/zero | tr '\0' x)
    log "redis-benchmark -q -P 64 -n $REDIS_BENCH_N PUBLISH herald:bench <$size bytes> (the ceiling)"
    timeout --kill-after=5 60 taskset -c "$LOADGEN_CPU" "$REDIS_BENCHMARK" -h 127.0.0.1 -p "$rport" \
        -q -P 64 -n "$REDIS_BENCH_N" PUBLISH herald:bench "$payload" 2>&1 | tr '\r' '\n' |
        grep -a 'requests per second' | tail -1 | sed "s/$payload/<$size bytes>/" \
        >"$base.redis-benchmark.txt" || true
    stop_cluster
    echo "$rc" >"$base.rc"
    case $rc in
        0) ;;
        1) log "herald $sc: loadgen reported a failure (see $base.log)" ;;
        *) log "herald $sc: loadgen exited $rc (see $base.log)" ;;
    esac
}

run_scenario() { # SERVER SCENARIO
    local server=$1 sc=$2 base="$OUT/$1-$2" args limit publishers=1 duration=$DURATION
    case $sc in
        fa|fc) if [[ $server != herald ]]; then
               log "$server has no Redis bus (or is not this herald): scenario $sc skipped"
               return 0
           fi
           run_cluster "$sc"
           return 0 ;;
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
SERVER_CPU=$SERVER_CPU REDIS_CPU=$REDIS_CPU python3 - "$OUT" "$SERVERS" "$SCENARIOS" <<'PY' | tee -a "$OUT/table.txt"
import json, os, re, sys

out, servers, scenarios = sys.argv[1], sys.argv[2].split(), sys.argv[3].split()

def load(server, sc):
    try:
        with open(os.path.join(out, f"{server}-{sc}.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None

def fmt(v, spec="{:,.0f}"):
    return "-" if v is None else spec.format(v)

CLUSTER = ("fa", "fc")

def load_extra(server, sc, suffix):
    try:
        with open(os.path.join(out, f"{server}-{sc}.{suffix}")) as f:
            return f.read()
    except OSError:
        return None

def bucket_quantile(buckets, q):
    """Quantile q of a cumulative histogram [[le, count], ...], interpolated linearly inside
    its bucket (as Prometheus's histogram_quantile; the first bucket starts at 0)."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank, lo, below = q * buckets[-1][1], 0.0, 0.0
    for le, n in buckets:
        if n >= rank:
            if le == float("inf"):
                return lo
            return lo + (le - lo) * (rank - below) / max(n - below, 1e-12)
        lo, below = le, n
    return lo

def cluster(sc):
    """(f)'s figures from loadgen's JSON (node 1 as the server, node 2 and Redis as "also"),
    the nodes' /metrics after the run and redis-benchmark's line; None without a run."""
    r = load("herald", sc)
    if r is None or sc not in CLUSTER:
        return None
    nodes_text = load_extra("herald", sc, "nodes")
    nodes = json.loads(nodes_text)["nodes"] if nodes_text else []
    also = r.get("also") or []
    srv = r.get("server") or {}
    d = r.get("deliveries_in_window") or 0
    cpu = [srv.get("cpu_secs")] + [a.get("cpu_secs") for a in also[:1]]
    redis_cpu = also[1].get("cpu_secs") if len(also) > 1 else None
    # Each client receives every message of the one room, so a node's share of the
    # deliveries is its share of the clients (its upgrades).
    ups = [n.get("upgrades") or 0 for n in nodes]
    c = {"json": r, "nodes": nodes, "split": ups,
         "open_max": [n.get("websockets_open_max") for n in nodes]}
    c["node_ns"] = [
        (cpu[i] * 1e9 / (d * ups[i] / sum(ups))) if cpu[i] and d and i < len(ups) and ups[i] else None
        for i in range(len(cpu))]
    c["nodes_ns"] = sum(cpu) * 1e9 / d if d and None not in cpu and len(cpu) == 2 else None
    messages = d / r["connected"] if r.get("connected") else None
    c["messages"] = messages
    c["redis_ns"] = redis_cpu * 1e9 / d if redis_cpu is not None and d else None
    c["redis_us_msg"] = redis_cpu * 1e6 / messages if redis_cpu is not None and messages else None
    buckets = {}
    count = total = 0.0
    for n in nodes:
        for le, k in n.get("echo_buckets") or []:
            buckets[le] = buckets.get(le, 0.0) + k
        count += n.get("echo_count") or 0
        total += n.get("echo_sum") or 0
    b = sorted(buckets.items())
    c["echo"] = (bucket_quantile(b, 0.5), bucket_quantile(b, 0.99),
                 total / count if count else None, count)
    c["gaps"] = sum(n.get("bus_gaps") or 0 for n in nodes) if nodes else None
    # Socket writes per delivery, both nodes, over the whole run (the counters are not read
    # at the window's ends here): compare with (a)'s and (c)'s writes/deliv.
    w, dl = (sum(n.get(k) or 0 for n in nodes) for k in ("writes", "deliveries"))
    c["writes_per_delivery"] = w / dl if w and dl else None
    line = (load_extra("herald", sc, "redis-benchmark.txt") or "").strip()
    m = re.search(r"^PUBLISH .*: ([0-9.]+) requests per second", line)
    c["ceiling"] = float(m.group(1)) if m else None
    return c

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
        cpu_per = srv.get("cpu_ns_per_delivery")
        if sc in CLUSTER:
            # Both nodes' CPU over all deliveries; memory is node 1's alone, so left out.
            cpu_per, rss, per_conn = (cluster(sc) or {}).get("nodes_ns"), None, None
        rows.append([
            sc, server, f"{r['connected']:,}/{r['clients']:,}", r["mode"],
            fmt(r.get("deliveries_per_sec")),
            fmt(lat.get("p50_ms"), "{:.3f}"), fmt(lat.get("p99_ms"), "{:.3f}"),
            fmt(lat.get("p99_9_ms"), "{:.3f}"),
            fmt(spread.get("p90_p10"), "{:.2f}x"),
            fmt(cpu_per),
            fmt(srv.get("writes_per_delivery"), "{:.4f}"),
            fmt(None if rss is None else rss / 2**20, "{:.1f}"),
            fmt(None if per_conn is None else per_conn / 1024, "{:.2f}"),
            "-" if lost is None else str(lost),
            "yes" if r.get("ok") else "NO",
        ])
def print_table(head, rows):
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    line = lambda cells: "  ".join(str(c).rjust(w) for c, w in zip(cells, widths))
    print(line(head))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print(line(row))

print_table(head, rows)

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
clusters = [(sc, cluster(sc)) for sc in scenarios if sc in CLUSTER and "herald" in servers]
clusters = [(sc, c) for sc, c in clusters if c]
if clusters:
    print()
    print("(f) two herald nodes (--reuse-port) on CPU "
          f"{os.environ.get('SERVER_CPU', '?')}, Redis on CPU {os.environ.get('REDIS_CPU', '?')}"
          "; CPU in ns per delivery (node: over its own "
          "clients' deliveries; nodes: both over all); echo = herald_bus_echo_seconds over "
          "the whole run, p50/p99 interpolated in its power-of-two buckets, mean exact")
    head2 = ["scenario", "clients node1/node2", "deliveries/s", "node1 ns", "node2 ns",
             "nodes ns/deliv", "writes/deliv (run)", "redis ns/deliv", "redis us/msg",
             "p50 ms", "p99 ms",
             "echo p50/p99/mean ms", "gaps", "order mismatch", "lost", "ok"]
    rows2 = []
    for sc, c in clusters:
        r = c["json"]
        lat = r.get("latency") or {}
        e50, e99, emean, _ = c["echo"]
        split = "/".join(f"{u:,.0f}" for u in c["split"]) or "-"
        if c["open_max"] and None not in c["open_max"]:
            split += " (open " + "/".join(f"{u:,}" for u in c["open_max"]) + ")"
        ns = c["node_ns"] + [None, None]
        rows2.append([
            sc, split, fmt(r.get("deliveries_per_sec")), fmt(ns[0]), fmt(ns[1]),
            fmt(c["nodes_ns"]), fmt(c["writes_per_delivery"], "{:.4f}"), fmt(c["redis_ns"]),
            fmt(c["redis_us_msg"], "{:.2f}"),
            fmt(lat.get("p50_ms"), "{:.3f}"), fmt(lat.get("p99_ms"), "{:.3f}"),
            " / ".join(fmt(None if v is None else v * 1e3, "{:.3f}") for v in (e50, e99, emean)),
            fmt(c["gaps"]), fmt(r.get("order_mismatch")), fmt(r.get("lost")),
            "yes" if r.get("ok") else "NO",
        ])
    for sc, c in clusters:
        rows2.append([f"{sc} ceiling", "redis-benchmark -P 64 PUBLISH",
                      fmt(c["ceiling"]) + " msg/s"] + [""] * (len(head2) - 3))
    print_table(head2, rows2)
    print()
    print("issue 12's targets:")
    for sc, single in (("fa", "a"), ("fc", "c")):
        c, s1 = dict(clusters).get(sc), load("herald", single)
        s_ns = ((s1 or {}).get("server") or {}).get("cpu_ns_per_delivery")
        if c and c["nodes_ns"] and s_ns:
            ratio_ = c["nodes_ns"] / s_ns
            print(f"  CPU per delivery, nodes ({sc}) / single herald ({single}): "
                  f"{c['nodes_ns']:,.0f} / {s_ns:,.0f} ns = {ratio_:.2f}x (target <= 1.2x: "
                  f"{'met' if ratio_ <= 1.2 else 'NOT met'})")
    c, s1 = dict(clusters).get("fc"), load("herald", "c")
    if c and s1:
        p_f, p_c = (c["json"].get("latency") or {}).get("p50_ms"), (s1.get("latency") or {}).get("p50_ms")
        if p_f is not None and p_c is not None:
            print(f"  p50 at {c['json'].get('rate'):g} msg/s, (fc) - (c): {p_f:.3f} - {p_c:.3f} = "
                  f"{p_f - p_c:+.3f} ms (target <= +0.5 ms: {'met' if p_f - p_c <= 0.5 else 'NOT met'})")
    if not ({"a", "c"} & set(scenarios)):
        print("  (run (a) and (c) with (fa) and (fc) to compare them)")
    for sc, c in clusters:
        with open(os.path.join(out, f"herald-{sc}.cluster"), "w") as f:
            json.dump({k: v for k, v in c.items() if k not in ("json", "nodes")}, f)
if any(str(row[LOST]).endswith("*") for row in rows):
    print()
    print("* the drain timed out: messages still queued in the server when loadgen stopped count as lost.")
warn = [f"{s}-{sc}" for sc in scenarios for s in servers
        if (load(s, sc) or {}).get("loadgen", {}).get("saturated")]
if warn:
    print("loadgen used over 90% of its core in: " + ", ".join(warn) + " (those figures are a floor)")
PY
# Only what this run wrote.
wrote=("table.txt")
n_json=$(find "$OUT" -maxdepth 1 -name '*.json' | wc -l)
((n_json == 0)) || wrote+=("$n_json JSON results")
n_logs=$(find "$OUT" -maxdepth 1 -name '*.log' | wc -l)
((n_logs == 0)) || wrote+=("$n_logs logs")
n_hgrm=$(find "$OUT" -maxdepth 1 -name '*.hgrm' | wc -l)
((n_hgrm == 0)) || wrote+=("$n_hgrm .hgrm latency distributions")
[[ ! -s $OUT/latency-c.svg ]] || wrote+=("latency-c.svg")
(IFS=,; echo "wrote ${wrote[*]} in $OUT${LATEST:+ (also $LATEST)}" | sed 's/,/, /g') >&2
