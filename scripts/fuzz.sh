#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for a bounded time, from the seed corpora in
# fuzz/corpus/<target> (read-only: new inputs go to a scratch directory).
#
#   bash scripts/fuzz.sh                  # 20 s per target (what the test command runs)
#   FUZZ_SECONDS=600 bash scripts/fuzz.sh # a longer run
#   bash scripts/fuzz.sh original_request # one target
#
# Needs the nightly toolchain (`cargo +nightly`) and cargo-fuzz; cargo-fuzz is installed
# from crates.io when missing. A crash stops the run with the failing input saved under
# fuzz/artifacts/<target>/; turn it into a regular regression test.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

FUZZ_SECONDS=${FUZZ_SECONDS:-20}
# shellcheck source=versions.env
source scripts/versions.env

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzzing needs the nightly toolchain: cargo +nightly is not available" >&2
    exit 1
fi
if [[ $(cargo fuzz --version 2>/dev/null | awk '{print $2}') != "$CARGO_FUZZ_VERSION" ]]; then
    cargo install --locked --quiet cargo-fuzz --version "$CARGO_FUZZ_VERSION"
fi

targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then
    mapfile -t targets < <(cd fuzz && cargo +nightly fuzz list)
fi

cd fuzz
cargo +nightly fuzz build -O
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for target in "${targets[@]}"; do
    mkdir -p "$scratch/$target"
    rm -rf "artifacts/$target"
    echo "fuzz: $target for ${FUZZ_SECONDS}s"
    status=0
    cargo +nightly fuzz run -O "$target" "$scratch/$target" "corpus/$target" -- \
        -max_total_time="$FUZZ_SECONDS" >"$scratch/$target.log" 2>&1 || status=$?
    grep -E '^#[0-9]+[[:space:]]+DONE' "$scratch/$target.log" || true
    if [[ $status -ne 0 ]]; then
        tail -n 40 "$scratch/$target.log" >&2
        echo "fuzz: $target failed; the input is under fuzz/artifacts/$target/" >&2
        exit 1
    fi
done
echo "fuzz: every target ran ${FUZZ_SECONDS}s without a failure"
