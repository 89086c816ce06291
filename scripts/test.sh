#!/usr/bin/env bash
# Runs every check of the project: formatting, lints, unit + integration + end-to-end
# tests, and a build of the benchmarks.
#
# It is the one command for a fresh Debian 12 machine with only Rust installed: it
# installs what the end-to-end tests drive (see install_e2e_dependencies) and is quick
# when everything is already there. Runs as root, or with sudo for the installs.
#
#   bash scripts/test.sh
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

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

# Everything the end-to-end tests (tests/e2e) drive. One install_* function per
# component; each is quick when its component is already present.
install_e2e_dependencies() {
    install_nginx
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
    step "cargo clippy --all-targets -- -D warnings"
    cargo clippy --all-targets -- -D warnings
    step "cargo test --all-targets (unit, tests/api, tests/e2e)"
    cargo test --all-targets
    step "cargo bench --no-run"
    cargo bench --no-run
}

main() {
    step "installing what the tests need"
    install_rust_components
    install_e2e_dependencies
    run_checks
    step "all checks passed"
}

main "$@"
