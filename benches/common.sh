# shellcheck shell=bash
# What benches/load/run.sh and benches/soak/run.sh share: logging, the processes they
# start (all stopped on exit), Debian packages installed when missing, the cores and the
# loopback ports they use. Sourced after `set -euo pipefail`; AUTH_CPU and LOAD_CPU set.

log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# Processes we start (add each PID); on exit SIGTERM, a bounded wait, then SIGKILL.
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]:-}"; do
        if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; fi
    done
    for pid in "${PIDS[@]:-}"; do
        [ -n "$pid" ] || continue
        for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# apt_install_missing PACKAGE...: installs the packages, if any are named.
apt_install_missing() {
    [ "$#" -gt 0 ] || return 0
    log "apt-get install $*"
    local sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "$@" >/dev/null
}

# use_cores WHAT: AUTH_CPU and LOAD_CPU within this machine's cores (0 when beyond).
use_cores() {
    local cpus
    cpus=$(nproc)
    [ "$cpus" -ge 2 ] || log "WARNING: only $cpus CPU: $1 share it"
    [ "$AUTH_CPU" -lt "$cpus" ] || AUTH_CPU=0
    [ "$LOAD_CPU" -lt "$cpus" ] || LOAD_CPU=0
}

# ports_free PORT...: dies when one of these loopback ports already answers.
ports_free() {
    local port
    for port in "$@"; do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            die "port 127.0.0.1:$port is already in use"
        fi
    done
}
