#!/usr/bin/env bash
# Autobahn TestSuite conformance run: kosoku (fuzzingclient) against
# `herald --mode echo` on loopback, then tests/autobahn/summarize.py; then
# the same cases over wss:// against a second `herald --mode echo` serving
# TLS only (a self-signed certificate made by openssl), through
# tests/autobahn/tls_bridge.py: kosoku 0.1.0 has no TLS (it refuses wss://
# URLs), so the bridge takes its plain connections and opens a verified TLS
# connection to herald for each, relaying the bytes unchanged.
#
# Usage: bash tests/autobahn/run.sh [CASE_GLOB...]
#   With no arguments every case of groups 1-10, 12 and 13 runs (the suite
#   has no groups 8 and 11); otherwise only the given ids/globs, e.g. '9.*'.
#   Both runs take the same cases.
#
# Environment (all optional):
#   AUTOBAHN_TLS          0: skip the wss:// run (default 1; always skipped
#                         with AUTOBAHN_SERVER_CMD)
#   AUTOBAHN_PARALLELISM  cases run at once by kosoku (default 4)
#   AUTOBAHN_TIMEOUT      seconds allowed for the whole kosoku run (default 600)
#   HERALD_BIN            server binary to test (default: cargo build --release,
#                         then target/release/herald)
#   AUTOBAHN_SERVER_CMD   shell command to start instead of herald, for checking
#                         the harness itself against another echo server; it
#                         must listen on 127.0.0.1:$PORT (PORT is exported)
#   PYTHON                interpreter used to create .venv (default python3.11
#                         or python3, >= 3.10)
#
# Output: reports/servers/index.json (+ one JSON/HTML file per case),
# reports/autobahn-server.log (server stderr/stdout),
# reports/autobahn-kosoku.log (kosoku output); for the wss:// run
# reports/servers-tls/, reports/autobahn-server-tls.log,
# reports/autobahn-kosoku-tls.log, reports/autobahn-bridge.log.
# reports/ is gitignored.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"

HERE=tests/autobahn
VENV=.venv
PARALLELISM="${AUTOBAHN_PARALLELISM:-4}"
KOSOKU_TIMEOUT="${AUTOBAHN_TIMEOUT:-600}"
# 9.x sends messages up to 16 MiB, some in 64-byte (or 1-byte) fragments.
# 9.3.x and 9.4.x send 4 MiB in 64-byte fragments: 65,536 fragments in one message.
# The per-client rate limits are off: the cases send tens of thousands of frames
# (9.x sends 1,000 messages of up to 16 MiB) to test the protocol, not flood control.
HERALD_ARGS=(--mode echo --max-message-size 20MiB --max-queued-bytes 64MiB --max-fragments 100000
  --client-rate 0 --client-bandwidth 0)
# Set per run: where the reports and logs go, herald's extra flags (TLS).
OUTDIR=""
SERVER_LOG=""
KOSOKU_LOG=""
EXTRA_ARGS=()

log() { printf 'autobahn: %s\n' "$*"; }
die() { printf 'autobahn: FAIL: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- 1. venv
ensure_venv() {
  local py="${PYTHON:-}"
  if [[ -z "$py" ]]; then
    py="$(command -v python3.11 || command -v python3 || true)"
  fi
  [[ -n "$py" ]] || die "python3 not found (need Python >= 3.10)"
  if ! "$VENV/bin/python" -c 'import sys; assert sys.version_info >= (3, 10)' 2>/dev/null; then
    "$py" -c 'import sys; assert sys.version_info >= (3, 10)' 2>/dev/null \
      || die "$py is older than Python 3.10"
    log "creating $VENV with $py"
    rm -rf "$VENV"
    "$py" -m venv "$VENV" \
      || die "could not create $VENV (on Debian: apt-get install python3-venv)"
  fi
  local want
  want="$(sed -n 's/^kosoku==\([^[:space:]]*\).*/\1/p' "$HERE/requirements.txt")"
  [[ -n "$want" ]] || die "$HERE/requirements.txt does not pin kosoku==VERSION"
  if ! "$VENV/bin/python" - "$want" 2>/dev/null <<'PY'
import sys
from importlib.metadata import version
sys.exit(0 if version("kosoku") == sys.argv[1] else 1)
PY
  then
    log "installing kosoku==$want into $VENV"
    timeout 600 "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
      -r "$HERE/requirements.txt" || die "pip install -r $HERE/requirements.txt failed"
  fi
  [[ -x "$VENV/bin/kosoku" ]] || die "$VENV/bin/kosoku missing after install"
}

# ---------------------------------------------------------------- 2. server
SERVER_PID=""
PORT=""
BRIDGE_PID=""
TLS_DIR=""

stop_server() {
  [[ -n "$SERVER_PID" ]] || return 0
  local pid="$SERVER_PID"
  SERVER_PID=""
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      log "server (pid $pid) ignored SIGTERM for 5 s; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  wait "$pid" 2>/dev/null || true
}

stop_bridge() {
  [[ -n "$BRIDGE_PID" ]] || return 0
  local pid="$BRIDGE_PID"
  BRIDGE_PID=""
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 50); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

cleanup() {
  stop_bridge
  stop_server
  [[ -z "$TLS_DIR" ]] || rm -rf "$TLS_DIR"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() {
  "$VENV/bin/python" -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])'
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

start_server() {
  local attempt
  for attempt in 1 2 3; do
    PORT="$(free_port)"
    export PORT
    if [[ -n "${AUTOBAHN_SERVER_CMD:-}" ]]; then
      log "starting custom server: $AUTOBAHN_SERVER_CMD (PORT=$PORT)"
      bash -c "exec $AUTOBAHN_SERVER_CMD" >"$SERVER_LOG" 2>&1 &
    else
      log "starting $HERALD ${HERALD_ARGS[*]} ${EXTRA_ARGS[*]} --listen 127.0.0.1:$PORT"
      "$HERALD" "${HERALD_ARGS[@]}" "${EXTRA_ARGS[@]}" --listen "127.0.0.1:$PORT" >"$SERVER_LOG" 2>&1 &
    fi
    SERVER_PID=$!
    for _ in $(seq 100); do          # up to 10 s to start listening
      if ! kill -0 "$SERVER_PID" 2>/dev/null; then
        break
      fi
      if port_open "$PORT"; then
        log "server pid $SERVER_PID listening on 127.0.0.1:$PORT"
        return 0
      fi
      sleep 0.1
    done
    if kill -0 "$SERVER_PID" 2>/dev/null; then
      stop_server
      die "server did not listen on 127.0.0.1:$PORT within 10 s (log: $SERVER_LOG)"
    fi
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
    log "server exited at startup (attempt $attempt); its output:"
    tail -n 20 "$SERVER_LOG" >&2 || true
  done
  die "server failed to start 3 times (log: $SERVER_LOG)"
}

# ---------------------------------------------------------------- 3. bridge
# Starts tls_bridge.py towards herald's TLS port $PORT; sets BRIDGE_PORT.
BRIDGE_PORT=""
start_bridge() {
  local port_file="$TLS_DIR/bridge.port"
  rm -f "$port_file"
  "$VENV/bin/python" "$HERE/tls_bridge.py" --connect "127.0.0.1:$PORT" \
    --cafile "$TLS_DIR/cert.pem" --server-name localhost --port-file "$port_file" \
    >reports/autobahn-bridge.log 2>&1 &
  BRIDGE_PID=$!
  for _ in $(seq 100); do
    kill -0 "$BRIDGE_PID" 2>/dev/null || break
    if [[ -s "$port_file" ]]; then
      BRIDGE_PORT="$(cat "$port_file")"
      log "tls_bridge.py pid $BRIDGE_PID: 127.0.0.1:$BRIDGE_PORT -> TLS 127.0.0.1:$PORT"
      return 0
    fi
    sleep 0.1
  done
  tail -n 20 reports/autobahn-bridge.log >&2 || true
  die "tls_bridge.py did not start (log: reports/autobahn-bridge.log)"
}

# ---------------------------------------------------------------- 4. one run
# run_suite LABEL: one server, kosoku against it (through the bridge when
# LABEL is wss), the summary. Sets FAIL=1 on any failure it can report.
FAIL=0
run_suite() {
  local label="$1" target
  rm -rf "$OUTDIR"
  start_server
  target="$PORT"
  if [[ "$label" == wss ]]; then
    start_bridge
    target="$BRIDGE_PORT"
  fi

  log "[$label] kosoku 127.0.0.1:$target -p $PARALLELISM, cases: ${CASES[*]} (timeout ${KOSOKU_TIMEOUT}s)"
  local kstart=$SECONDS krc
  set +e
  timeout --kill-after=10 "$KOSOKU_TIMEOUT" \
    "$VENV/bin/kosoku" "127.0.0.1:$target" -p "$PARALLELISM" -o "$OUTDIR" "${INCLUDES[@]}" \
    >"$KOSOKU_LOG" 2>&1 </dev/null
  krc=$?
  set -e
  log "[$label] kosoku finished in $((SECONDS - kstart)) s (exit $krc; 1 means some case did not pass, incl. UNIMPLEMENTED)"

  local alive=1
  kill -0 "$SERVER_PID" 2>/dev/null || alive=0
  if [[ "$label" == wss && $alive -eq 1 && -f "$OUTDIR/index.json" ]]; then
    # herald's own count, through the bridge: every case was a TLS session
    # (one more for this request), and none broke.
    "$VENV/bin/python" - "http://127.0.0.1:$BRIDGE_PORT/metrics" "$OUTDIR/index.json" <<'PY' || FAIL=1
import json, sys, urllib.request
text = urllib.request.urlopen(sys.argv[1], timeout=10).read().decode()
m = {l.split()[0]: float(l.split()[1]) for l in text.splitlines() if l and not l.startswith("#")}
report = json.load(open(sys.argv[2]))
cases = sum(len(v) for v in report.values())
hs, bad = m.get("herald_tls_handshakes_total", 0), m.get("herald_tls_failures_total", 0)
print(f"autobahn: [wss] herald counted {hs:.0f} TLS handshakes and {bad:.0f} TLS failures for {cases} cases")
sys.exit(0 if hs >= cases + 1 and bad == 0 else 1)
PY
  fi
  stop_bridge
  stop_server

  case "$krc" in
    0|1) ;;
    124|137) die "[$label] kosoku did not finish within ${KOSOKU_TIMEOUT}s (no report written);" \
                 "narrow it down with e.g. bash tests/autobahn/run.sh '9.*' (logs: $KOSOKU_LOG, $SERVER_LOG)" ;;
    *) tail -n 20 "$KOSOKU_LOG" >&2; die "[$label] kosoku exited with status $krc (log: $KOSOKU_LOG)" ;;
  esac
  [[ -f "$OUTDIR/index.json" ]] || { tail -n 20 "$KOSOKU_LOG" >&2; die "[$label] kosoku wrote no $OUTDIR/index.json"; }

  if [[ $alive -eq 0 ]]; then
    log "[$label] the server exited during the suite (crash?); last lines of $SERVER_LOG:"
    tail -n 20 "$SERVER_LOG" >&2 || true
    FAIL=1
  fi
  if grep -q 'panicked at' "$SERVER_LOG"; then
    log "[$label] the server panicked during the suite:"
    grep -m 5 -A 3 'panicked at' "$SERVER_LOG" >&2 || true
    FAIL=1
  fi

  log "[$label] summary of $OUTDIR/index.json:"
  "$VENV/bin/python" "$HERE/summarize.py" "$OUTDIR/index.json" \
    --allow-unimplemented 12,13 "${SUMMARY_ARGS[@]}" || FAIL=1
}

# ---------------------------------------------------------------- main
START=$SECONDS
ensure_venv
mkdir -p reports

if [[ -z "${AUTOBAHN_SERVER_CMD:-}" ]]; then
  if [[ -n "${HERALD_BIN:-}" ]]; then
    HERALD="$HERALD_BIN"
  else
    log "cargo build --release --bin herald"
    cargo build --release --quiet --bin herald || die "cargo build --release failed"
    HERALD="${CARGO_TARGET_DIR:-target}/release/herald"
  fi
  [[ -x "$HERALD" ]] || die "server binary $HERALD not found"
  HELP="$("$HERALD" --help 2>&1 || true)"
  [[ "$HELP" == *--mode* ]] \
    || die "$HERALD has no --mode option (echo mode is required for Autobahn)"
fi

if [[ $# -gt 0 ]]; then
  CASES=("$@")
  SUMMARY_ARGS=()
else
  CASES=('1.*' '2.*' '3.*' '4.*' '5.*' '6.*' '7.*' '9.*' '10.*' '12.*' '13.*')
  SUMMARY_ARGS=(--require-groups '1,2,3,4,5,6,7,9,10,12,13')
fi
INCLUDES=()
for c in "${CASES[@]}"; do INCLUDES+=(-i "$c"); done

OUTDIR=reports/servers
SERVER_LOG=reports/autobahn-server.log
KOSOKU_LOG=reports/autobahn-kosoku.log
run_suite ws

rm -rf reports/servers-tls
if [[ -n "${AUTOBAHN_SERVER_CMD:-}" || "${AUTOBAHN_TLS:-1}" == 0 ]]; then
  log "the wss:// run is skipped (${AUTOBAHN_SERVER_CMD:+AUTOBAHN_SERVER_CMD is set}${AUTOBAHN_SERVER_CMD:-AUTOBAHN_TLS=0})"
else
  if ! command -v openssl >/dev/null; then
    [[ $(id -u) -eq 0 ]] \
      || die "openssl not found (needed for the wss:// run's certificate; AUTOBAHN_TLS=0 skips it)"
    log "openssl missing: installing it"
    DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -qq --no-install-recommends openssl \
      || die "apt-get install openssl failed"
  fi
  TLS_DIR="$(mktemp -d)"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
    -keyout "$TLS_DIR/key.pem" -out "$TLS_DIR/cert.pem" -subj /CN=localhost \
    -addext subjectAltName=DNS:localhost,IP:127.0.0.1 >"$TLS_DIR/openssl.log" 2>&1 \
    || die "openssl could not make a certificate: $(tail -3 "$TLS_DIR/openssl.log")"
  OUTDIR=reports/servers-tls
  SERVER_LOG=reports/autobahn-server-tls.log
  KOSOKU_LOG=reports/autobahn-kosoku-tls.log
  EXTRA_ARGS=(--tls-cert "$TLS_DIR/cert.pem" --tls-key "$TLS_DIR/key.pem")
  run_suite wss
  if grep -q 'failed' reports/autobahn-bridge.log; then
    log "[wss] tls_bridge.py could not reach herald over TLS:"
    tail -n 5 reports/autobahn-bridge.log >&2
    FAIL=1
  fi
fi

log "total $((SECONDS - START)) s"
[[ $FAIL -eq 0 ]] || die "Autobahn conformance failed (reports: reports/servers/index.html, reports/servers-tls/index.html)"
log "OK"
