#!/usr/bin/env bash
# End-to-end test of herald's chat page in Debian's chromium (headless),
# driven by playwright-core (tests/browser/chat.mjs).
#
# Usage: bash tests/browser/run.sh
#
# Installs what is missing: chromium and chromium-driver with apt-get (only
# when /usr/bin/chromium is absent), playwright-core with `npm ci` from the
# committed package-lock.json (it never downloads a browser). Starts two
# target/release/herald processes on free 127.0.0.1 ports: one plain (http://,
# ws://) and one serving TLS only (https://, wss://) with a self-signed
# P-256 certificate for localhost and 127.0.0.1 that openssl makes in a temp
# dir (chromium runs with --ignore-certificate-errors). Runs the page test in
# one chromium (which restarts the plain herald on the same port through
# `run.sh ctl`), and stops both by their PIDs on exit.
#
# Environment (all optional):
#   HERALD_BIN              server binary (default target/release/herald, under
#                           $CARGO_TARGET_DIR if set; built with cargo build
#                           --release if missing)
#   UPDATE_DOCS_SCREENSHOT  1: also copy the combined screenshot to
#                           docs/chat-page.png (the README's picture)
#
# Output: reports/browser/page-a.png, page-b.png, chat-pages.png (the two
# side by side), page-tls.png (a page over https://), herald.log and
# herald-tls.log. reports/ is gitignored.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
HERE="$ROOT/tests/browser"
REPORT_DIR="$ROOT/reports/browser"
CHROMIUM=/usr/bin/chromium

log() { printf 'browser: %s\n' "$*"; }
die() { printf 'browser: FAIL: %s\n' "$*" >&2; exit 1; }

# ------------------------------------------------------------ herald control
# `run.sh ctl stop|start` is how chat.mjs restarts the plain herald. A
# herald's state lives in files under a directory: port, pid, herald.log, and
# for the TLS one cert.pem and key.pem. $BROWSER_STATE (set by the main run)
# is the plain herald's; $BROWSER_STATE/tls the TLS one's.

# Whether $1 is a live process (a zombie, exited but not yet reaped by its
# parent, does not count).
alive() {
  local pid="$1" state
  [[ -r /proc/$pid/stat ]] || return 1
  state="$(sed 's/^[0-9]* (.*) \([A-Za-z]\).*/\1/' "/proc/$pid/stat" 2>/dev/null)" || return 1
  [[ "$state" != Z && "$state" != X ]]
}

# Whether herald answers GET /healthz with 200 on $1 (over TLS, with openssl
# s_client, when $2 is tls).
healthy() {
  local port="$1" tls="${2:-}" line=""
  local request='GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n'
  if [[ "$tls" == tls ]]; then
    # shellcheck disable=SC2059
    line="$(printf "$request" | timeout 5 openssl s_client -quiet -connect "127.0.0.1:$port" \
      -servername localhost 2>/dev/null | head -1)" || true
    [[ "$line" == "HTTP/1.1 200 "* ]]
    return
  fi
  { exec 3<>"/dev/tcp/127.0.0.1/$port"; } 2>/dev/null || return 1
  # shellcheck disable=SC2059
  printf "$request" >&3 || { exec 3<&-; return 1; }
  IFS= read -r -t 2 line <&3 || true
  exec 3<&- 3>&-
  [[ "$line" == "HTTP/1.1 200 "* ]]
}

herald_start() {
  local state="$1" port pid tls="" args=()
  port="$(cat "$state/port")"
  if [[ -f "$state/cert.pem" ]]; then
    tls=tls
    args=(--tls-cert "$state/cert.pem" --tls-key "$state/key.pem")
  fi
  "$HERALD_BIN" --listen "127.0.0.1:$port" --shutdown-timeout 2s "${args[@]}" >>"$state/herald.log" 2>&1 &
  pid=$!
  echo "$pid" >"$state/pid"
  local deadline=$((SECONDS + 15))
  until healthy "$port" "$tls"; do
    alive "$pid" || die "herald (pid $pid) exited at start; see $state/herald.log: $(tail -3 "$state/herald.log")"
    ((SECONDS < deadline)) || die "herald did not answer /healthz on port $port within 15 s"
    sleep 0.1
  done
  log "herald pid $pid serving ${tls:+TLS on }127.0.0.1:$port"
}

herald_stop() {
  local state="$1" pid
  pid="$(cat "$state/pid" 2>/dev/null || true)"
  [[ -n "$pid" ]] || return 0
  if alive "$pid"; then
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + 10))
    while alive "$pid"; do
      if ((SECONDS >= deadline)); then
        log "herald pid $pid ignored SIGTERM for 10 s; killing it"
        kill -KILL "$pid" 2>/dev/null || true
        break
      fi
      sleep 0.05
    done
  fi
  : >"$state/pid"
  log "herald pid $pid stopped"
}

if [[ "${1:-}" == ctl ]]; then
  [[ -n "${BROWSER_STATE:-}" && -n "${HERALD_BIN:-}" ]] || die "ctl: run through tests/browser/run.sh"
  case "${2:-}" in
    stop) herald_stop "$BROWSER_STATE" ;;
    start) herald_start "$BROWSER_STATE" ;;
    *) die "ctl: expected stop or start, got '${2:-}'" ;;
  esac
  exit 0
fi

# ------------------------------------------------------------ prerequisites
cd "$ROOT"
if [[ ! -x "$CHROMIUM" ]]; then
  log "$CHROMIUM missing: installing chromium and chromium-driver"
  [[ $(id -u) -eq 0 ]] || die "$CHROMIUM is missing and installing it needs root (apt-get install chromium chromium-driver)"
  timeout 600 apt-get update -qq || die "apt-get update failed"
  DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -qq --no-install-recommends \
    chromium chromium-driver || die "apt-get install chromium chromium-driver failed"
  [[ -x "$CHROMIUM" ]] || die "$CHROMIUM still missing after apt-get install"
fi
log "$("$CHROMIUM" --version 2>/dev/null | head -1)"
if ! command -v openssl >/dev/null; then
  log "openssl missing: installing it"
  [[ $(id -u) -eq 0 ]] || die "openssl is missing and installing it needs root (apt-get install openssl)"
  DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -qq --no-install-recommends openssl \
    || die "apt-get install openssl failed"
fi

command -v node >/dev/null || die "node not found (Node 20 or newer is needed)"
command -v npm >/dev/null || die "npm not found"
node -e 'process.exit(+process.versions.node.split(".")[0] >= 20 ? 0 : 1)' \
  || die "node $(node --version) is too old: playwright-core needs Node 20 or newer"

want="$(node -p 'require("./tests/browser/package-lock.json").packages["node_modules/playwright-core"].version')"
have="$(node -p 'try { require("./tests/browser/node_modules/playwright-core/package.json").version } catch { "" }')"
if [[ "$have" != "$want" ]]; then
  log "npm ci (playwright-core $want)"
  PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 timeout 300 npm ci --prefix tests/browser \
    --no-audit --no-fund --loglevel=error || die "npm ci in tests/browser failed"
fi

HERALD_BIN="${HERALD_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/herald}"
if [[ ! -x "$HERALD_BIN" ]]; then
  log "building $HERALD_BIN"
  timeout 900 cargo build --release -p herald || die "cargo build --release failed"
fi
[[ -x "$HERALD_BIN" ]] || die "$HERALD_BIN is not an executable"
export HERALD_BIN

# ------------------------------------------------------------ run
mkdir -p "$REPORT_DIR"
rm -f "$REPORT_DIR"/*.png "$REPORT_DIR/herald.log" "$REPORT_DIR/herald-tls.log"
BROWSER_STATE="$(mktemp -d)"
export BROWSER_STATE
TLS_STATE="$BROWSER_STATE/tls"
mkdir "$TLS_STATE"

cleanup() {
  herald_stop "$BROWSER_STATE" >/dev/null 2>&1 || true
  herald_stop "$TLS_STATE" >/dev/null 2>&1 || true
  # Reap the first two heralds, which are this shell's children.
  wait 2>/dev/null || true
  cp "$BROWSER_STATE/herald.log" "$REPORT_DIR/herald.log" 2>/dev/null || true
  cp "$TLS_STATE/herald.log" "$REPORT_DIR/herald-tls.log" 2>/dev/null || true
  rm -rf "$BROWSER_STATE"
}
trap cleanup EXIT
trap 'exit 143' TERM
trap 'exit 130' INT

# A free port: the kernel picks one; herald binds it right after.
free_port() {
  node -e 'const s = require("net").createServer().listen(0, "127.0.0.1", () => { console.log(s.address().port); s.close(); })'
}
PORT="$(free_port)"
echo "$PORT" >"$BROWSER_STATE/port"
herald_start "$BROWSER_STATE"

# The TLS herald: a self-signed certificate for localhost and 127.0.0.1
# (P-256, as a small deployment would use), valid for a day.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
  -keyout "$TLS_STATE/key.pem" -out "$TLS_STATE/cert.pem" -subj /CN=localhost \
  -addext subjectAltName=DNS:localhost,IP:127.0.0.1 >"$TLS_STATE/openssl.log" 2>&1 \
  || die "openssl could not make a certificate: $(tail -3 "$TLS_STATE/openssl.log")"
TLS_PORT="$(free_port)"
echo "$TLS_PORT" >"$TLS_STATE/port"
herald_start "$TLS_STATE"

docs=""
[[ "${UPDATE_DOCS_SCREENSHOT:-0}" == 1 ]] && docs="$ROOT/docs/chat-page.png"

t0=$SECONDS
rc=0
HERALD_URL="http://127.0.0.1:$PORT/" \
  HERALD_TLS_URL="https://127.0.0.1:$TLS_PORT/" \
  HERALD_CTL="bash $(printf '%q' "$HERE/run.sh") ctl" \
  REPORT_DIR="$REPORT_DIR" \
  DOCS_SCREENSHOT="$docs" \
  CHROMIUM="$CHROMIUM" \
  timeout --kill-after=10 300 node "$HERE/chat.mjs" </dev/null || rc=$?
if [[ $rc -eq 124 || $rc -eq 137 ]]; then
  die "the page test timed out after 300 s"
elif [[ $rc -ne 0 ]]; then
  die "the page test failed (exit $rc); herald's logs: $REPORT_DIR/herald.log, $REPORT_DIR/herald-tls.log"
fi
log "PASS in $((SECONDS - t0)) s; screenshots in reports/browser/"
