#!/usr/bin/env bash
# Soak: tokengate for 10 minutes under a mixed load, with a JWKS rotation and an IdP
# outage, sampled every 10 s. See docs/soak.md.
#
#   bash benches/soak/run.sh                  # 10 minutes of load (plus 1-2 min of minting)
#   DURATION=180 ROTATING=20000 bash benches/soak/run.sh   # a quick try
#
# Knobs (environment): DURATION seconds of load (600), OUTAGE seconds the issuer stops
# answering (30), ROTATING distinct pre-minted tokens (100000), NEW_RATE tokens minted and
# sent once per second (50), SCALE multiplier of every other class's rate (1.0),
# CONNECTIONS most connections to tokengate at once, like a proxy's pool (256; 0: one per
# request in flight),
# AUTH_CPU (0) and LOAD_CPU (1): the cores of tokengate and of soak_load,
# WORK (/tmp/tokengate-soak: config, logs), OUT (benches/soak/results: soak.csv, soak.png,
# summary.md). The exit status is 0 only when every pass criterion holds.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
DURATION="${DURATION:-600}"
OUTAGE="${OUTAGE:-30}"
ROTATING="${ROTATING:-100000}"
NEW_RATE="${NEW_RATE:-50}"
SCALE="${SCALE:-1.0}"
CONNECTIONS="${CONNECTIONS:-256}"
AUTH_CPU="${AUTH_CPU:-0}"
LOAD_CPU="${LOAD_CPU:-1}"
WORK="${WORK:-/tmp/tokengate-soak}"
OUT="${OUT:-$HERE/results}"
REFRESH=30
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"

# 127.0.0.1 ports
P_ISSUER=18500     # soak_load's issuer: discovery, JWKS, introspection
P_TG=18580         # tokengate /auth
P_TG_ADMIN=18590   # tokengate admin (/readyz)

# shellcheck source=../common.sh
source "$ROOT/benches/common.sh"
# Everything goes to 127.0.0.1 directly, never through a proxy from the environment.
unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY all_proxy ALL_PROXY
export NO_PROXY=127.0.0.1,localhost no_proxy=127.0.0.1,localhost

# ---------------------------------------------------------------------------------------
# Install what is missing: taskset, curl, gnuplot (for the PNG).
need_apt=()
command -v taskset >/dev/null || need_apt+=(util-linux)
command -v curl >/dev/null || need_apt+=(curl)
command -v gnuplot >/dev/null || need_apt+=(gnuplot-nox)
apt_install_missing "${need_apt[@]}"
use_cores "tokengate and the load generator"
ports_free $P_ISSUER $P_TG $P_TG_ADMIN

log "cargo build --release (tokengate + examples/soak_load)"
(cd "$ROOT" && cargo build --release --quiet --bin tokengate --example soak_load)
TOKENGATE="$TARGET/release/tokengate"
LOAD="$TARGET/release/examples/soak_load"

rm -rf "$WORK"
mkdir -p "$WORK" "$OUT"
SECRET="soak-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
printf '%s\n' "$SECRET" > "$WORK/client-secret"
chmod 600 "$WORK/client-secret"
sed -e "s#@WORK@#$WORK#g" -e "s#@P_TG@#$P_TG#g" -e "s#@P_TG_ADMIN@#$P_TG_ADMIN#g" \
    -e "s#@P_ISSUER@#$P_ISSUER#g" -e "s#@REFRESH@#$REFRESH#g" \
    "$HERE/tokengate.yaml" > "$WORK/tokengate.yaml"
"$TOKENGATE" --config "$WORK/tokengate.yaml" --check-config >/dev/null || die "tokengate config invalid"

# ---------------------------------------------------------------------------------------
# 1. soak_load mints its tokens on every core, starts the issuer, writes issuer.ready.
log "soak_load: minting $ROTATING rotating tokens (RS256) on every core, then the issuer on 127.0.0.1:$P_ISSUER"
"$LOAD" --work "$WORK" --out "$OUT" \
    --issuer "127.0.0.1:$P_ISSUER" --tokengate "127.0.0.1:$P_TG" --admin "127.0.0.1:$P_TG_ADMIN" \
    --client-secret "$SECRET" --duration "$DURATION" --outage "$OUTAGE" --rotating "$ROTATING" \
    --new-rate "$NEW_RATE" --scale "$SCALE" --connections "$CONNECTIONS" --refresh-interval "$REFRESH" --clk-tck "$(getconf CLK_TCK)" \
    2> >(tee "$WORK/soak_load.log" >&2) &
LOAD_PID=$!; PIDS+=("$LOAD_PID")
for _ in $(seq 1 6000); do  # bounded: 10 minutes of minting at most
    [ -f "$WORK/issuer.ready" ] && break
    kill -0 "$LOAD_PID" 2>/dev/null || die "soak_load exited before its issuer was ready"
    sleep 0.1
done
[ -f "$WORK/issuer.ready" ] || die "soak_load's issuer not ready after 10 minutes"

# 2. Pin: soak_load (every thread) to LOAD_CPU, tokengate to AUTH_CPU.
taskset -a -p -c "$LOAD_CPU" "$LOAD_PID" >/dev/null
log "soak_load pinned to core $LOAD_CPU; starting tokengate on core $AUTH_CPU"
taskset -c "$AUTH_CPU" "$TOKENGATE" --config "$WORK/tokengate.yaml" \
    >"$WORK/tokengate.log" 2>&1 &
TG_PID=$!; PIDS+=("$TG_PID")
echo "$TG_PID" > "$WORK/tokengate.pid.tmp" && mv "$WORK/tokengate.pid.tmp" "$WORK/tokengate.pid"

# 3. soak_load waits for /readyz, runs the load, writes soak.csv and summary.md, and exits
#    by itself (its own watchdog bounds it too).
log "load for ${DURATION}s; one CSV row every 10 s in $OUT/soak.csv"
set +e
wait "$LOAD_PID"
STATUS=$?
set -e
kill -0 "$TG_PID" 2>/dev/null || log "WARNING: tokengate was not running at the end"

# ---------------------------------------------------------------------------------------
# 4. The plot.
if [ -s "$OUT/soak.csv" ] && [ -f "$OUT/timeline.env" ]; then
    # shellcheck disable=SC1091
    . "$OUT/timeline.env"
    gnuplot -e "csv='$OUT/soak.csv'; png='$OUT/soak.png'; rotate_add=$ROTATE_ADD; withdraw=$WITHDRAW; outage_start=$OUTAGE_START; outage_end=$OUTAGE_END; duration=$DURATION" \
        "$HERE/plot.gp" && log "plot: $OUT/soak.png"
fi
{
    echo
    echo "Machine: $(nproc) CPUs ($(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)), load average at the end $(cut -d' ' -f1-3 /proc/loadavg); $("$TOKENGATE" --version 2>/dev/null | head -1 || echo tokengate); $(date -u +%F)."
    echo "tokengate log: $(wc -l < "$WORK/tokengate.log") lines, $(grep -c '"level":"WARN"' "$WORK/tokengate.log" || true) warnings, $(grep -c '"level":"ERROR"' "$WORK/tokengate.log" || true) errors."
} >> "$OUT/summary.md"
tail -n 2 "$OUT/summary.md"
[ "$STATUS" -eq 0 ] && log "soak PASSED" || log "soak FAILED (soak_load exit status $STATUS): see $OUT/summary.md and $OUT/errors.log"
exit "$STATUS"
