#!/usr/bin/env bash
# herald's one test command (CI runs it through .ci/run):
#
#     bash tests/run-all.sh
#
# On a fresh Debian 12 machine with Rust stable (rustfmt, clippy), Python 3.11
# and Node 20 it installs what it is missing (Debian packages only when
# absent, the Python venv .venv/ with the pinned Autobahn driver), then runs,
# in order, stopping at the first failure:
#   1. cargo fmt --all -- --check
#   2. cargo clippy --workspace --all-targets -- -D warnings
#   3. cargo build --release --workspace
#   4. cargo test --workspace --release
#   5. bash tests/autobahn/run.sh        (Autobahn TestSuite vs herald --mode echo, ws:// and wss://)
#   6. bash tests/browser/run.sh         (the chat page in Debian's chromium, http:// and https://)
# Every step has a time limit; the whole run is meant to stay under 20 minutes.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

START=$SECONDS
PASSED=()
TIMINGS=()

say() { printf 'run-all: %s\n' "$*"; }

finish_fail() {
  local step="$1" why="$2"
  printf '\nrun-all: FAILED at step "%s": %s\n' "$step" "$why" >&2
  say "passed before it: ${PASSED[*]:-none}${TIMINGS[*]:+ (${TIMINGS[*]})}"
  say "FAILED: step \"$step\" failed after $((SECONDS - START)) s total"
  exit 1
}

# step NAME TIMEOUT_SECONDS COMMAND...
step() {
  local name="$1" limit="$2"
  shift 2
  printf '\n==> run-all: [%s] %s\n' "$name" "$*"
  local t0=$SECONDS rc=0
  timeout --kill-after=30 "$limit" "$@" </dev/null || rc=$?
  local dt=$((SECONDS - t0))
  if [[ $rc -eq 124 || $rc -eq 137 ]]; then
    finish_fail "$name" "timed out after ${limit} s: $*"
  elif [[ $rc -ne 0 ]]; then
    finish_fail "$name" "exit status $rc after ${dt} s: $*"
  fi
  PASSED+=("$name")
  TIMINGS+=("$name ${dt}s")
  printf '==> run-all: [%s] ok in %s s\n' "$name" "$dt"
}

# ------------------------------------------------------------ prerequisites
APT_UPDATED=0
apt_install() {
  # Installs Debian packages; only called for something that is missing.
  if ! command -v apt-get >/dev/null; then
    finish_fail setup "missing $*, and apt-get is not available to install it"
  fi
  local sudo=()
  if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || finish_fail setup "missing $*; need root (or sudo) to apt-get install it"
    sudo=(sudo -n)
  fi
  say "installing Debian packages: $*"
  if [[ $APT_UPDATED -eq 0 ]]; then
    timeout 600 "${sudo[@]}" apt-get update -qq || finish_fail setup "apt-get update failed"
    APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive timeout 900 "${sudo[@]}" apt-get install -y -qq --no-install-recommends "$@" \
    || finish_fail setup "apt-get install $* failed"
}

setup() {
  printf '==> run-all: [setup] checking prerequisites\n'
  local t0=$SECONDS
  command -v cargo >/dev/null \
    || finish_fail setup "cargo not found: install Rust stable (rustup) and put ~/.cargo/bin on PATH"
  cargo fmt --version >/dev/null 2>&1 \
    || finish_fail setup "rustfmt missing: rustup component add rustfmt"
  cargo clippy --version >/dev/null 2>&1 \
    || finish_fail setup "clippy missing: rustup component add clippy"

  local pkgs=()
  command -v cc >/dev/null || pkgs+=(gcc libc6-dev)
  command -v timeout >/dev/null || pkgs+=(coreutils)
  local py=""
  for cand in python3.11 python3; do
    if command -v "$cand" >/dev/null && "$cand" -c 'import sys; assert sys.version_info >= (3, 10)' 2>/dev/null; then
      py="$(command -v "$cand")"
      break
    fi
  done
  if [[ -z "$py" ]]; then
    pkgs+=(python3 python3-venv)
  elif ! "$py" -c 'import venv, ensurepip' 2>/dev/null; then
    # Debian's python3 ships venv's pip bootstrap separately.
    pkgs+=(python3-venv)
  fi
  # Browser test (tests/browser/): Debian's chromium and its WebDriver; node
  # and npm come with the machine (run.sh checks for Node >= 20).
  [[ -x /usr/bin/chromium ]] || pkgs+=(chromium chromium-driver)
  # The Redis backplane tests (tests/bus.rs, tests/bus_cluster.rs) start
  # their own redis-server processes and drive them with redis-cli (Debian's
  # redis-server brings redis-tools).
  # TLS: the browser and Autobahn runs make their certificates with openssl,
  # and tests/tls.rs tries a renegotiation with `openssl s_client`.
  command -v openssl >/dev/null || pkgs+=(openssl)
  if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
    pkgs+=(redis-server)
  fi
  if [[ ${#pkgs[@]} -gt 0 ]]; then
    apt_install "${pkgs[@]}"
  fi
  if [[ -z "$py" ]]; then
    py="$(command -v python3.11 || command -v python3 || true)"
    [[ -n "$py" ]] || finish_fail setup "python3 still missing after apt-get install"
  fi
  export PYTHON="$py"   # tests/autobahn/run.sh creates .venv with it
  say "cargo: $(cargo --version); python: $("$PYTHON" --version 2>&1); $(redis-server --version | cut -d' ' -f1-3)"
  printf '==> run-all: [setup] ok in %s s\n' "$((SECONDS - t0))"
}

setup

# ------------------------------------------------------------ steps
step fmt      120  cargo fmt --all -- --check
step clippy   900  cargo clippy --workspace --all-targets -- -D warnings
step build    900  cargo build --release --workspace
step test     900  cargo test --workspace --release
# The binary was just built by `build`; HERALD_BIN skips run.sh's own build.
step autobahn 900  env HERALD_BIN="${CARGO_TARGET_DIR:-target}/release/herald" bash tests/autobahn/run.sh

# The chat page in headless chromium: run.sh runs `npm ci` for playwright-core
# when needed, starts target/release/herald on a free 127.0.0.1 port (and
# restarts it there), drives two pages, stops herald by PID; screenshots in
# reports/browser/.
step browser  600  bash tests/browser/run.sh

printf '\n'
say "timings: ${TIMINGS[*]}"
say "OK: all ${#PASSED[@]} steps passed (${PASSED[*]}) in $((SECONDS - START)) s"
