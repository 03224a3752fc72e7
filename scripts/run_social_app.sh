#!/usr/bin/env bash
# Runs the social example app end to end, sandboxed in a hardened container (Docker, or
# Podman through its Docker-compatible API), under the isolation tier asked for:
#
#   1. builds the fold_client daemon and the social app (static, so it runs in any image);
#   2. makes sure a base image is present: alpine:latest if it can be had, else the local
#      foldclient/base:latest, imported from busybox-static (no registry needed);
#   3. starts the daemon, with its embedded data node, on a fresh state directory;
#   4. installs the app with exactly the grants it needs;
#   5. launches it, waits for it, prints its output and a short audit summary;
#   6. stops everything it started and removes the state (KEEP_STATE=1 keeps it).
#
# Usage: scripts/run_social_app.sh [--direct] [--release] [--isolation TIER] [--engine ENGINE]
#
#   --direct          dev mode: run the app as a host process, NOT sandboxed (no engine needed)
#   --release         build the daemon with the release profile (default: dev, shared with tests)
#   --isolation TIER  container (runc, the default), gvisor (needs runsc registered with the
#                     engine; see docs/operations.md) or auto (the strongest tier offered)
#   --engine ENGINE   docker (default: DOCKER_HOST or the local socket) or podman (starts
#                     `podman system service` on a socket of its own for the run, unless
#                     DOCKER_HOST already points at one)
#
# Environment: KEEP_STATE=1 keeps the state directory (printed at the end);
# FOLD_APP_IMAGE=IMAGE uses that image instead; FOLD_PULL_TIMEOUT_SECS (default 60) bounds
# the alpine pull; FOLD_BUSYBOX names a static busybox for the local base image;
# FOLD_STATIC_TARGET / FOLD_STATIC_TARGET_DIR as for the tests (fold_testkit).
#
# Exits 0 when the app ran and exited 0; otherwise non-zero with the reason.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

MODE=docker
PROFILE=dev
ISOLATION=container
ENGINE=docker
while [ "$#" -gt 0 ]; do
    arg="$1"
    shift
    case "$arg" in
        --direct) MODE=direct ;;
        --release) PROFILE=release ;;
        --isolation | --engine)
            [ "$#" -gt 0 ] || { echo "run_social_app.sh: $arg needs a value" >&2; exit 2; }
            if [ "$arg" = --isolation ]; then ISOLATION="$1"; else ENGINE="$1"; fi
            shift
            ;;
        -h | --help)
            awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"
            exit 0
            ;;
        *)
            echo "run_social_app.sh: unknown argument $arg (try --help)" >&2
            exit 2
            ;;
    esac
done
case "$ISOLATION" in container | gvisor | auto) ;; *)
    echo "run_social_app.sh: --isolation must be container, gvisor or auto (got $ISOLATION)" >&2
    exit 2
    ;;
esac
case "$ENGINE" in docker | podman) ;; *)
    echo "run_social_app.sh: --engine must be docker or podman (got $ENGINE)" >&2
    exit 2
    ;;
esac
if [ "$MODE" = direct ] && { [ "$ISOLATION" != container ] || [ "$ENGINE" != docker ]; }; then
    echo "run_social_app.sh: --direct runs on the host: no --isolation or --engine" >&2
    exit 2
fi

APP=social
# The operator's decision: exactly what the app needs (`social_app --print-grants`).
GRANTS=(
    create_schema:user create_schema:post create_schema:comment
    query:user query:post query:comment
    mutation:user mutation:post mutation:comment
    history:post
)
BASE_IMAGE=foldclient/base:latest
BASE_LABEL=io.foldclient.testkit.base
BASE_LAYOUT_VERSION=1 # as fold_testkit's ensure_base_image, which then reuses the image
PULL_TIMEOUT="${FOLD_PULL_TIMEOUT_SECS:-60}"
CLI_TIMEOUT=60
RUN_TIMEOUT=600
BUILD_TIMEOUT=1800

STATE_ROOT=""
FC=""
DAEMON_PID=""
PODMAN_PID=""
STEP_START=$SECONDS

step() {
    printf '\n==> %s\n' "$*"
}

die() {
    printf '\nrun_social_app.sh: error: %s\n' "$*" >&2
    exit 1
}

no_engine() {
    cat >&2 <<EOF

run_social_app.sh: no Docker engine answers ($1).

The sandboxed run needs a Docker engine. Either:

  * run the app in dev mode instead, on this host and NOT sandboxed:

        scripts/run_social_app.sh --direct

  * or start a Docker engine (as root), then run this script again:

        apt-get install docker.io && dockerd &
EOF
    exit 2
}

cleanup() {
    local rc=$?
    if [ -n "$DAEMON_PID" ] && kill -0 "$DAEMON_PID" 2>/dev/null; then
        echo
        echo "==> stopping the daemon (pid $DAEMON_PID)"
        kill -TERM "$DAEMON_PID" 2>/dev/null || true
        local deadline=$((SECONDS + 30))
        while kill -0 "$DAEMON_PID" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do
            sleep 0.2
        done
        if kill -0 "$DAEMON_PID" 2>/dev/null; then
            echo "the daemon did not stop within 30 s; killing it"
            kill -KILL "$DAEMON_PID" 2>/dev/null || true
        fi
        wait "$DAEMON_PID" 2>/dev/null || true
    fi
    if [ -n "$PODMAN_PID" ] && kill -0 "$PODMAN_PID" 2>/dev/null; then
        echo "==> stopping the podman service (pid $PODMAN_PID)"
        kill -TERM "$PODMAN_PID" 2>/dev/null || true
        wait "$PODMAN_PID" 2>/dev/null || true
    fi
    if [ "$rc" -ne 0 ] && [ -n "$STATE_ROOT" ] && [ -s "$STATE_ROOT/daemon.log" ]; then
        echo "---- daemon log (last 20 lines) ----" >&2
        tail -n 20 "$STATE_ROOT/daemon.log" >&2
    fi
    if [ -n "$STATE_ROOT" ] && [ -d "$STATE_ROOT" ]; then
        if [ "${KEEP_STATE:-0}" = 1 ]; then
            echo "state kept in $STATE_ROOT (daemon log: $STATE_ROOT/daemon.log)"
            echo "  inspect: $FC --state-dir $STATE_ROOT/state audit tail"
        else
            rm -rf "$STATE_ROOT"
        fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Whether the executable $1 is statically linked (ldd, from libc-bin, says so).
is_static() {
    local out
    command -v ldd >/dev/null 2>&1 || return 0 # cannot tell; the engine will
    out="$(LANG=C timeout 20 ldd "$1" 2>&1 || true)"
    grep -q 'not a dynamic executable\|statically linked' <<<"$out"
}

# fold_client CLI against this run's daemon, with a deadline.
fc() {
    timeout "$CLI_TIMEOUT" "$FC" --state-dir "$STATE" "$@"
}

# ---------------------------------------------------------------------------------------
STATE_ROOT="$(mktemp -d /tmp/fold_social.XXXXXX)" # short: socket paths are limited
# Searchable (not listable) by the app's uid: in dev mode as root the app runs as its own
# uid and reaches its binary and socket through this directory.
chmod 711 "$STATE_ROOT"
STATE="$STATE_ROOT/state"

if [ "$ENGINE" = podman ] && [ -z "${DOCKER_HOST:-}" ]; then
    step "starting Podman's Docker-compatible API for this run"
    command -v podman >/dev/null 2>&1 ||
        die "podman is not installed (apt-get install podman catatonit)"
    podman_socket="$STATE_ROOT/podman.sock"
    podman system service --time=0 "unix://$podman_socket" >"$STATE_ROOT/podman.log" 2>&1 &
    PODMAN_PID=$!
    export DOCKER_HOST="unix://$podman_socket"
    deadline=$((SECONDS + 30))
    until timeout 20 docker version >/dev/null 2>&1; do
        kill -0 "$PODMAN_PID" 2>/dev/null || die "podman system service exited: $(tail -n 5 "$STATE_ROOT/podman.log")"
        [ "$SECONDS" -lt "$deadline" ] || die "podman system service did not answer within 30 s"
        sleep 0.2
    done
    echo "podman answers at $DOCKER_HOST"
fi

if [ "$MODE" = docker ]; then
    step "checking the container engine ($ENGINE, isolation $ISOLATION)"
    command -v docker >/dev/null 2>&1 || no_engine "the docker command is not installed"
    if ! engine="$(timeout 20 docker version --format '{{.Server.Version}}' 2>&1)"; then
        no_engine "$(printf '%s' "$engine" | tail -n 1)"
    fi
    echo "engine $engine at ${DOCKER_HOST:-unix:///var/run/docker.sock}"
else
    step "dev mode (--direct): the app will run on this host, NOT SANDBOXED"
fi

command -v cargo >/dev/null 2>&1 || die "cargo is not installed (https://rustup.rs)"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
STATIC_DIR="${FOLD_STATIC_TARGET_DIR:-$TARGET_DIR/static}"
TRIPLE="${FOLD_STATIC_TARGET:-$(uname -m)-unknown-linux-gnu}"

step "building fold_client: the daemon, with its embedded data node ($PROFILE profile)"
profile_flag=()
[ "$PROFILE" = release ] && profile_flag=(--release)
timeout "$BUILD_TIMEOUT" cargo build "${profile_flag[@]}" -p fold_client --bin fold_client
FC="$TARGET_DIR/$( [ "$PROFILE" = release ] && echo release || echo debug )/fold_client"
[ -x "$FC" ] || die "the build succeeded but $FC is missing"

step "building the social app, statically linked ($TRIPLE, in $STATIC_DIR)"
# Static (+crt-static) so the same binary runs in alpine, busybox or scratch images and on
# the host. The explicit --target keeps RUSTFLAGS off build scripts and proc macros.
env -u CARGO_ENCODED_RUSTFLAGS -u CARGO_TARGET_DIR -u CARGO_BUILD_TARGET_DIR \
    RUSTFLAGS="-C target-feature=+crt-static" \
    timeout "$BUILD_TIMEOUT" cargo build --target-dir "$STATIC_DIR" --target "$TRIPLE" \
    -p example-social_app --bin social_app
APP_BIN="$STATIC_DIR/$TRIPLE/debug/social_app"
[ -x "$APP_BIN" ] || die "the build succeeded but $APP_BIN is missing"
if ! is_static "$APP_BIN"; then
    die "$APP_BIN is dynamically linked; install static glibc (apt-get install libc6-dev)"
fi
echo "built $APP_BIN (static)"

# ---------------------------------------------------------------------------------------
# A static busybox: FOLD_BUSYBOX, else Debian's busybox-static at /bin or /usr/bin.
find_static_busybox() {
    local candidate
    for candidate in "${FOLD_BUSYBOX:-}" /bin/busybox /usr/bin/busybox; do
        if [ -n "$candidate" ] && [ -x "$candidate" ] && is_static "$candidate"; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

# Imports foldclient/base:latest from a rootfs of a static busybox plus applet links: the
# same layout as fold_testkit's ensure_base_image (a static app needs nothing else).
import_base_image() {
    local busybox rootfs applet
    busybox="$(find_static_busybox)" ||
        die "no static busybox found to build $BASE_IMAGE: apt-get install busybox-static (or set FOLD_BUSYBOX)"
    echo "building $BASE_IMAGE from $busybox"
    rootfs="$STATE_ROOT/rootfs"
    mkdir -p "$rootfs"/{bin,usr/bin,etc,root,tmp,app,dev,proc,sys}
    chmod 755 "$rootfs"/{bin,usr,usr/bin,etc,app,dev}
    chmod 700 "$rootfs/root"
    chmod 1777 "$rootfs/tmp"
    chmod 555 "$rootfs"/{proc,sys}
    cp "$busybox" "$rootfs/bin/busybox"
    chmod 755 "$rootfs/bin/busybox"
    for applet in '[' ash awk cat chmod chown cp cut date dd df du echo env false find free \
        grep head hexdump hostname id ifconfig ip kill ln ls mkdir mknod mount mv nc nproc \
        nsenter od ping printf ps pwd readlink rm rmdir sed seq setpriv sh sleep sort stat su \
        tail tee test timeout top touch tr true umount uname unshare wc wget which whoami \
        xargs yes; do
        ln -s busybox "$rootfs/bin/$applet"
    done
    ln -s /bin/busybox "$rootfs/usr/bin/env"
    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' \
        >"$rootfs/etc/passwd"
    printf 'root:x:0:\nnogroup:x:65534:\n' >"$rootfs/etc/group"
    chmod 644 "$rootfs/etc/passwd" "$rootfs/etc/group"
    tar -C "$rootfs" --owner=0 --group=0 --numeric-owner -cf - . |
        timeout 180 docker import \
            --change "LABEL $BASE_LABEL=$BASE_LAYOUT_VERSION" \
            --message 'fold_client base image (busybox-static)' \
            - "$BASE_IMAGE" >/dev/null
    rm -rf "$rootfs"
    echo "imported $BASE_IMAGE"
}

base_image_is_current() {
    local label
    label="$(timeout 20 docker image inspect --format "{{index .Config.Labels \"$BASE_LABEL\"}}" \
        "$BASE_IMAGE" 2>/dev/null)" || return 1
    [ "$label" = "$BASE_LAYOUT_VERSION" ]
}

IMAGE=""
if [ "$MODE" = docker ]; then
    step "making sure a base image is present"
    if [ -n "${FOLD_APP_IMAGE:-}" ]; then
        IMAGE="$FOLD_APP_IMAGE"
        timeout 20 docker image inspect "$IMAGE" >/dev/null 2>&1 ||
            timeout "$PULL_TIMEOUT" docker pull "$IMAGE" ||
            die "image $IMAGE (FOLD_APP_IMAGE) is not present and cannot be pulled"
    elif timeout 20 docker image inspect alpine:latest >/dev/null 2>&1; then
        IMAGE=alpine:latest
    elif echo "pulling alpine:latest (at most ${PULL_TIMEOUT} s)" &&
        timeout "$PULL_TIMEOUT" docker pull alpine:latest; then
        IMAGE=alpine:latest
    else
        echo "alpine:latest cannot be pulled; using the local base image $BASE_IMAGE"
        base_image_is_current || import_base_image
        IMAGE="$BASE_IMAGE"
    fi
    echo "image: $IMAGE"
fi

# ---------------------------------------------------------------------------------------
step "starting the daemon (state: $STATE, log: $STATE_ROOT/daemon.log)"
NO_COLOR=1 "$FC" --state-dir "$STATE" serve --log info >"$STATE_ROOT/daemon.log" 2>&1 &
DAEMON_PID=$!
deadline=$((SECONDS + 30))
until fc app list >/dev/null 2>&1; do
    if ! kill -0 "$DAEMON_PID" 2>/dev/null; then
        tail -n 30 "$STATE_ROOT/daemon.log" >&2
        die "the daemon exited during start-up (log above)"
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
        tail -n 30 "$STATE_ROOT/daemon.log" >&2
        die "the daemon did not answer within 30 s (log above)"
    fi
    sleep 0.2
done
echo "daemon running (pid $DAEMON_PID)"

step "installing $APP with grants: ${GRANTS[*]}"
install_args=(app install "$APP" --binary "$APP_BIN")
[ -n "$IMAGE" ] && install_args+=(--image "$IMAGE" --isolation "$ISOLATION")
for grant in "${GRANTS[@]}"; do
    install_args+=(--grant "$grant")
done
fc "${install_args[@]}" >"$STATE_ROOT/install.txt" ||
    die "installing $APP failed: $(cat "$STATE_ROOT/install.txt")"
shown='^(id|uid) '
[ "$MODE" = docker ] && shown='^(id|uid|image) '
grep -E "$shown" "$STATE_ROOT/install.txt" | sed 's/^/  /'

if [ "$MODE" = docker ]; then
    step "launching $APP sandboxed ($ENGINE, isolation $ISOLATION, image $IMAGE) and waiting for it"
    launch_args=(app launch "$APP" --wait --restart never)
else
    step "launching $APP in dev mode (direct, NOT SANDBOXED) and waiting for it"
    launch_args=(app launch "$APP" --direct --wait --restart never)
fi
STEP_START=$SECONDS
set +e
timeout "$RUN_TIMEOUT" "$FC" --state-dir "$STATE" "${launch_args[@]}"
app_rc=$?
set -e
echo "(took $((SECONDS - STEP_START)) s, exit status $app_rc)"

step "$APP's output (fold_client app logs $APP)"
app_log="$(fc app logs "$APP")" || die "cannot read $APP's log"
printf '%s\n' "$app_log" | sed 's/^stdout: //'

step "audit summary ($STATE/audit.jsonl)"
audit="$(fc --json audit tail --app "$APP" -n 1000000)" || die "cannot read the audit log"
count() {
    grep -c -- "$1" <<<"$audit" || true
}
echo "requests allowed: $(count '"verdict":"allow"')"
echo "requests denied:  $(count '"verdict":"deny"')"
grep -- '"verdict":"allow"' <<<"$audit" | grep -o '"operation":"[a-z_]*"' | cut -d'"' -f4 |
    sort | uniq -c | awk '{printf "  allowed %-14s %s\n", $2, $1}'
grep -- '"verdict":"deny"' <<<"$audit" | while IFS= read -r line; do
    op="$(grep -o '"operation":"[a-z_]*"' <<<"$line" | cut -d'"' -f4)"
    schema="$(grep -o '"schema":"[a-z0-9_]*"' <<<"$line" | cut -d'"' -f4)"
    code="$(grep -o '"code":"[a-z_]*"' <<<"$line" | cut -d'"' -f4)"
    echo "  denied  ${op:-?} ${schema:--} (${code:-?})"
done
grep -- '"event":"launch"' <<<"$audit" | grep -o '"detail":"[^"]*"' | cut -d'"' -f4 |
    sed 's/^/launch: /'

if [ "$app_rc" -ne 0 ]; then
    die "$APP exited with status $app_rc (its output is above; KEEP_STATE=1 keeps the state)"
fi
if ! grep -q 'social_app: done' <<<"$app_log"; then
    die "$APP exited 0 but did not print its summary"
fi
echo
if [ "$MODE" = docker ]; then
    tier="$(grep -- '"event":"launch"' <<<"$audit" | grep -o 'isolation [a-z]*' | tail -n 1)"
    echo "OK: the social app ran sandboxed ($ENGINE, ${tier:-isolation ?}, image $IMAGE) and exited 0"
else
    echo "OK: the social app ran in dev mode (NOT SANDBOXED) and exited 0"
fi
