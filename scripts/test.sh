#!/usr/bin/env bash
# Full check of the workspace: format, lints, tests, docs.
#
# Container tests need a Docker engine: they are #[ignore = "needs a Docker engine"], and run
# (--include-ignored) when an engine answers. Without one they are reported ignored, unless
# FOLD_REQUIRE_DOCKER=1 (as in CI), which turns a missing engine into a failure.
#
# gVisor tests (module docker::gvisor_tier) are #[ignore = "needs a Docker engine with gVisor"]: they run when the engine
# has the `runsc` runtime, and are skipped, loudly, when it has not, unless
# FOLD_REQUIRE_GVISOR=1 (as in CI), which turns a missing runtime into a failure.
#
# With FOLD_PODMAN_HOST set to a Podman API socket (as in CI: unix:///run/fold-ci-podman.sock),
# the Podman engine's tests (module docker::podman_engine) run against it after the rest.
#
# Each step is bounded by FOLD_STEP_TIMEOUT seconds (default 3600).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

step_timeout="${FOLD_STEP_TIMEOUT:-3600}"

section() {
    printf '\n==== %s ====\n' "$*"
}

# run CMD...: runs one step with a deadline; a timeout fails the script like any error.
run() {
    echo "+ $*"
    timeout --kill-after=30s "$step_timeout" "$@"
}

section "toolchain"
cargo --version
rustc --version

section "docker engine"
test_args=()
if command -v docker >/dev/null 2>&1 && timeout 30 docker info >/dev/null 2>&1; then
    echo "engine answers: $(timeout 30 docker version --format 'server {{.Server.Version}}, API {{.Server.APIVersion}}' 2>/dev/null || echo '?')"
    test_args=(--include-ignored)
elif [ "${FOLD_REQUIRE_DOCKER:-}" = "1" ]; then
    echo "error: FOLD_REQUIRE_DOCKER=1 but 'docker info' fails (DOCKER_HOST=${DOCKER_HOST:-<unset>})." >&2
    echo "Start a Docker engine (see .ci/run) or unset FOLD_REQUIRE_DOCKER to skip container tests." >&2
    exit 1
else
    echo "no Docker engine answers: container tests will be reported ignored"
fi

# The Podman engine's tests run only against Podman, below.
test_args+=(--skip docker::podman_engine)
if [ "${test_args[0]}" = "--include-ignored" ]; then
    if timeout 30 docker info --format '{{json .Runtimes}}' 2>/dev/null | grep -q '"runsc"'; then
        echo "the engine offers gVisor (runtime runsc): gVisor tests run"
    elif [ "${FOLD_REQUIRE_GVISOR:-}" = "1" ]; then
        echo "error: FOLD_REQUIRE_GVISOR=1 but the engine has no runtime named runsc." >&2
        echo "Install runsc and register it in /etc/docker/daemon.json (see .ci/run)." >&2
        exit 1
    else
        echo "WARNING: the engine has no runtime named runsc: the gVisor tests are SKIPPED" >&2
        echo "WARNING: (install runsc and register it as .ci/run does to run them)" >&2
        test_args+=(--skip docker::gvisor_tier)
    fi
fi

section "format: cargo fmt --all --check"
run cargo fmt --all --check

section "lint: cargo clippy --workspace --all-targets -- -D warnings"
run cargo clippy --workspace --all-targets -- -D warnings

section "test: cargo test --workspace -- ${test_args[*]}"
run cargo test --workspace -- "${test_args[@]}"

if [ -n "${FOLD_PODMAN_HOST:-}" ]; then
    section "test: the Podman engine at $FOLD_PODMAN_HOST"
    DOCKER_HOST="$FOLD_PODMAN_HOST" FOLD_REQUIRE_PODMAN=1 run cargo test -p fold_client --test it \
        -- --include-ignored docker::podman_engine
fi

section "docs: cargo doc --no-deps --workspace (RUSTDOCFLAGS=-D warnings)"
RUSTDOCFLAGS="-D warnings" run cargo doc --no-deps --workspace

section "all checks passed"
