#!/usr/bin/env bash
# herald over TLS against herald in plaintext, side by side in one run: the same binary,
# a fresh server for every measurement (on SERVER_CPU), loadgen on LOADGEN_CPU, plain and
# TLS alternating within each round, then the median of the rounds' TLS/plain ratios.
#
#   a   1,000 clients in one room, one publisher, saturation (--rate 0 --window 16,
#       64-byte messages): deliveries/s and herald's CPU per delivery
#   d   CLIENTS_D idle connections held IDLE_SECS: herald's RSS per connection
#   hs  `loadgen connect`: CONNECTS full handshakes (TCP, TLS 1.3 without resumption,
#       WebSocket upgrade), one at a time per slot: handshakes/s reached, and herald's CPU
#       per handshake, whose inverse is what one core of herald could complete
#
#   benches/tls.sh                      # ROUNDS=3 DURATION=3
#   ROUNDS=5 CLIENTS_D=19000 benches/tls.sh
#
# The certificate is an ECDSA P-256 self-signed one made with openssl (what a modern CA
# issues; an RSA-2048 key costs several times more per handshake: KEY=rsa to measure it).
# Environment: ROUNDS=3 DURATION=3 WARMUP=1 CLIENTS_A=1000 CLIENTS_D=10000 IDLE_SECS=3
#   CONNECTS=5000 KEY=ec SERVER_CPU=0 LOADGEN_CPU=1 PORT=9460 OUT=target/tls-bench/<date>
#   SKIP_BUILD=1 HERALD=... LOADGEN=...
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-3}
WARMUP=${WARMUP:-1}
CLIENTS_A=${CLIENTS_A:-1000}
CLIENTS_D=${CLIENTS_D:-10000}
IDLE_SECS=${IDLE_SECS:-3}
CONNECTS=${CONNECTS:-5000}
KEY=${KEY:-ec}
SERVER_CPU=${SERVER_CPU:-0}
LOADGEN_CPU=${LOADGEN_CPU:-1}
PORT=${PORT:-9460}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
HERALD=${HERALD:-$TARGET/release/herald}
LOADGEN=${LOADGEN:-$TARGET/release/loadgen}
OUT=${OUT:-$TARGET/tls-bench/$(date -u +%Y%m%d-%H%M%S)-$(git rev-parse --short HEAD 2>/dev/null || echo nogit)}
LOCAL_ADDRS=127.0.0.1-127.0.0.8
mkdir -p "$OUT"
log() { printf '== %s\n' "$*" >&2; }

if [[ -z ${SKIP_BUILD:-} ]]; then
    log "building herald and loadgen (release)"
    cargo build --release -q -p herald -p loadgen
fi
command -v openssl >/dev/null || { echo "tls.sh needs openssl (apt-get install openssl)" >&2; exit 2; }
case $KEY in
    ec) keyopt=(-newkey ec -pkeyopt ec_paramgen_curve:P-256) ;;
    rsa) keyopt=(-newkey rsa:2048) ;;
    *) echo "KEY is ec or rsa" >&2; exit 2 ;;
esac
openssl req -x509 "${keyopt[@]}" -nodes -keyout "$OUT/key.pem" -out "$OUT/cert.pem" -days 2 \
    -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
    -addext basicConstraints=critical,CA:FALSE 2>/dev/null

SERVER_PID=
stop_server() {
    [[ -n $SERVER_PID ]] || return 0
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=
}
trap stop_server EXIT
trap 'exit 130' INT TERM

start_herald() { # MODE(plain|tls) LOGFILE
    local tls=()
    [[ $1 == tls ]] && tls=(--tls-cert "$OUT/cert.pem" --tls-key "$OUT/key.pem")
    RUST_LOG=warn taskset -c "$SERVER_CPU" "$HERALD" --listen "127.0.0.1:$PORT" \
        --client-rate 0 --client-bandwidth 0 --max-connections 100000 "${tls[@]}" >"$2" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 100); do
        ss -Hltn "sport = :$PORT" | grep -q . && return 0
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.1
    done
    echo "herald did not start; its log:" >&2
    cat "$2" >&2
    exit 2
}

measure() { # ROUND SCENARIO MODE
    local base="$OUT/r$1-$2-$3" url args
    if [[ $3 == tls ]]; then url=(--url "wss://127.0.0.1:$PORT/" --ca "$OUT/cert.pem")
    else url=(--url "ws://127.0.0.1:$PORT/"); fi
    case $2 in
        a) args=(broadcast --clients "$CLIENTS_A" --rate 0 --window 16 --size 64 --publishers 1
               --duration "$DURATION" --warmup "$WARMUP" --drain 5) ;;
        d) args=(idle --clients "$CLIENTS_D" --duration "$IDLE_SECS") ;;
        hs) args=(connect --clients "$CONNECTS" --duration 30) ;;
    esac
    start_herald "$3" "$base.server.log"
    log "round $1, $2 over $3: loadgen ${args[*]}"
    local rc=0
    timeout --signal=INT --kill-after=5 180 taskset -c "$LOADGEN_CPU" "$LOADGEN" "${args[@]}" \
        "${url[@]}" --local-addrs "$LOCAL_ADDRS" --server-pid "$SERVER_PID" --json --quiet \
        >"$base.json" 2>"$base.log" || rc=$?
    stop_server
    ((rc == 0)) || log "round $1 $2 $3: loadgen exited $rc (see $base.log)"
}

for round in $(seq "$ROUNDS"); do
    for sc in a d hs; do
        # Alternate which goes first, so neither always runs on a warmer machine.
        if ((round % 2)); then modes=(plain tls); else modes=(tls plain); fi
        for mode in "${modes[@]}"; do
            measure "$round" "$sc" "$mode"
        done
    done
done

python3 - "$OUT" "$ROUNDS" <<'PY' | tee "$OUT/table.txt"
import json, os, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])

def load(r, sc, mode):
    try:
        with open(os.path.join(out, f"r{r}-{sc}-{mode}.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None

def figures(j, sc):
    """The scenario's figures from loadgen's JSON, None where missing."""
    if j is None:
        return {}
    srv = j.get("server") or {}
    cpu = srv.get("cpu_secs")
    if sc == "a":
        d = j.get("deliveries_in_window") or 0
        lost = j.get("lost", 0)
        return {"deliveries/s": j.get("deliveries_per_sec"),
                "CPU ns/deliv": cpu * 1e9 / d if cpu and d else None, "lost": lost}
    if sc == "d":
        b = srv.get("bytes_per_connection")
        return {"KiB/conn": b / 1024 if b else None}
    n = j.get("connected") or 0
    return {"handshakes/s": j.get("handshakes_per_sec"),
            "CPU us/handshake": cpu * 1e6 / n if cpu and n else None,
            "one core's handshakes/s": n / cpu if cpu and n else None,
            "failed": j.get("failed")}

rows, ratios = [], {}
for r in range(1, rounds + 1):
    for sc in ("a", "d", "hs"):
        f = {m: figures(load(r, sc, m), sc) for m in ("plain", "tls")}
        for k in f["plain"].keys() | f["tls"].keys():
            p, t = f["plain"].get(k), f["tls"].get(k)
            rows.append((r, sc, k, p, t))
            if isinstance(p, (int, float)) and isinstance(t, (int, float)) and p:
                ratios.setdefault((sc, k), []).append(t / p)

def fmt(v):
    if v is None:
        return "-"
    return f"{v:,.2f}" if abs(v) < 100 else f"{v:,.0f}"

print(f"# {out}")
print("| round | scenario | figure | plain | TLS | TLS/plain |")
print("|---|---|---|---|---|---|")
for r, sc, k, p, t in sorted(rows):
    ratio = f"{t / p:.2f}x" if isinstance(p, (int, float)) and isinstance(t, (int, float)) and p else "-"
    print(f"| {r} | {sc} | {k} | {fmt(p)} | {fmt(t)} | {ratio} |")
print()
print("median TLS/plain over the rounds:")
for (sc, k), v in sorted(ratios.items()):
    print(f"  {sc} {k}: {statistics.median(v):.2f}x ({', '.join(f'{x:.2f}' for x in v)})")
tls_hs = [figures(load(r, "hs", "tls"), "hs").get("one core's handshakes/s") for r in range(1, rounds + 1)]
tls_hs = [x for x in tls_hs if x]
if tls_hs:
    print(f"  TLS handshakes one core of herald completes (1 / CPU per handshake), median: {statistics.median(tls_hs):,.0f}/s")
tls_kib = [figures(load(r, "d", "tls"), "d").get("KiB/conn") for r in range(1, rounds + 1)]
tls_kib = [x for x in tls_kib if x]
if tls_kib:
    print(f"  KiB per idle TLS connection, median: {statistics.median(tls_kib):.2f}")
PY
log "wrote $OUT/table.txt"
