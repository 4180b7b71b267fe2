#!/usr/bin/env bash
# Autobahn TestSuite conformance run: kosoku (fuzzingclient) against
# `herald --mode echo` on loopback, then tests/autobahn/summarize.py.
#
# Usage: bash tests/autobahn/run.sh [CASE_GLOB...]
#   With no arguments every case of groups 1-10, 12 and 13 runs (the suite
#   has no groups 8 and 11); otherwise only the given ids/globs, e.g. '9.*'.
#
# Environment (all optional):
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
# reports/autobahn-kosoku.log (kosoku output). reports/ is gitignored.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"

HERE=tests/autobahn
VENV=.venv
OUTDIR=reports/servers
SERVER_LOG=reports/autobahn-server.log
KOSOKU_LOG=reports/autobahn-kosoku.log
PARALLELISM="${AUTOBAHN_PARALLELISM:-4}"
KOSOKU_TIMEOUT="${AUTOBAHN_TIMEOUT:-600}"
# 9.x sends messages up to 16 MiB, some in 64-byte (or 1-byte) fragments.
# 9.3.x and 9.4.x send 4 MiB in 64-byte fragments: 65,536 fragments in one message.
# The per-client rate limits are off: the cases send tens of thousands of frames
# (9.x sends 1,000 messages of up to 16 MiB) to test the protocol, not flood control.
HERALD_ARGS=(--mode echo --max-message-size 20MiB --max-queued-bytes 64MiB --max-fragments 100000
  --client-rate 0 --client-bandwidth 0)

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
trap stop_server EXIT
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
      log "starting $HERALD ${HERALD_ARGS[*]} --listen 127.0.0.1:$PORT"
      "$HERALD" "${HERALD_ARGS[@]}" --listen "127.0.0.1:$PORT" >"$SERVER_LOG" 2>&1 &
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

# ---------------------------------------------------------------- main
START=$SECONDS
ensure_venv
mkdir -p reports
rm -rf "$OUTDIR"

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

start_server

log "kosoku 127.0.0.1:$PORT -p $PARALLELISM, cases: ${CASES[*]} (timeout ${KOSOKU_TIMEOUT}s)"
KSTART=$SECONDS
set +e
timeout --kill-after=10 "$KOSOKU_TIMEOUT" \
  "$VENV/bin/kosoku" "127.0.0.1:$PORT" -p "$PARALLELISM" -o "$OUTDIR" "${INCLUDES[@]}" \
  >"$KOSOKU_LOG" 2>&1 </dev/null
KRC=$?
set -e
log "kosoku finished in $((SECONDS - KSTART)) s (exit $KRC; 1 means some case did not pass, incl. UNIMPLEMENTED)"

SERVER_ALIVE=1
kill -0 "$SERVER_PID" 2>/dev/null || SERVER_ALIVE=0
stop_server

case "$KRC" in
  0|1) ;;
  124|137) die "kosoku did not finish within ${KOSOKU_TIMEOUT}s (no report written);" \
               "narrow it down with e.g. bash tests/autobahn/run.sh '9.*' (logs: $KOSOKU_LOG, $SERVER_LOG)" ;;
  *) tail -n 20 "$KOSOKU_LOG" >&2; die "kosoku exited with status $KRC (log: $KOSOKU_LOG)" ;;
esac
[[ -f "$OUTDIR/index.json" ]] || { tail -n 20 "$KOSOKU_LOG" >&2; die "kosoku wrote no $OUTDIR/index.json"; }

FAIL=0
if [[ $SERVER_ALIVE -eq 0 ]]; then
  log "the server exited during the suite (crash?); last lines of $SERVER_LOG:"
  tail -n 20 "$SERVER_LOG" >&2 || true
  FAIL=1
fi
if grep -q 'panicked at' "$SERVER_LOG"; then
  log "the server panicked during the suite:"
  grep -m 5 -A 3 'panicked at' "$SERVER_LOG" >&2 || true
  FAIL=1
fi

"$VENV/bin/python" "$HERE/summarize.py" "$OUTDIR/index.json" \
  --allow-unimplemented 12,13 "${SUMMARY_ARGS[@]}" || FAIL=1

log "total $((SECONDS - START)) s"
[[ $FAIL -eq 0 ]] || die "Autobahn conformance failed (reports: $OUTDIR/index.html)"
log "OK"
