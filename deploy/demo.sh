#!/usr/bin/env bash
# The whole mission on one machine, on SQLite (MySQL/MariaDB with --mysql), in ./demo-run/:
#
#   dev PKI -> first key v9 -> daemon -> unseal by alice and bob -> seed
#   200,000 records through the hook -> the application keeps reading and
#   writing -> rotation v9 -> v10 (prepare, every keyholder fetches and
#   verifies its share, activate, switch, re-encrypt with a progress bar,
#   drained) -> retire v9 planned, then executed by two operators -> a final
#   check whose digest equals the one before the rotation.
#
# Usage: deploy/demo.sh [--rows N] [--quick] [--mysql URL] [--docker IMAGE]
#   --rows N   records to seed (default 200000)
#   --quick    CI mode: debug build (the one deploy/test.sh already made), a
#              lighter application load, no progress bar
#   --mysql URL  run on MySQL/MariaDB instead of SQLite, e.g.
#              mysql://root@127.0.0.1:3306/test (password from MYSQL_PWD);
#              its table `customers` is dropped and created afresh
#   --docker IMAGE  keyholderd runs in a container of IMAGE (deploy/Dockerfile)
#              as its non-root user, ./demo-run mounted at the same path, its
#              port published on 127.0.0.1; everything else (the CLI, the
#              application) talks to it from the host (deploy/docker-smoke.sh)
#
# Env: KEYHOLDER_DEMO_PORT (default 18443) for the daemon's address.
#
# It stops every process it started, also on Ctrl-C, and leaves ./demo-run
# for inspection (logs, config, the SQLite file). Running it again starts from
# a fresh ./demo-run. Exit 0 only when the application saw zero errors and the
# digests match.
set -euo pipefail
umask 077

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
RUN="$ROOT/demo-run"
ROWS=200000
QUICK=0
MYSQL_URL=""
DOCKER_IMAGE=""
PORT="${KEYHOLDER_DEMO_PORT:-18443}"

usage() { sed -n '2,27p' "$0" | sed 's/^# \{0,1\}//'; }
while [[ $# -gt 0 ]]; do
    case "$1" in
        --rows)
            [[ $# -ge 2 && "$2" =~ ^[1-9][0-9]*$ ]] || { echo "demo: --rows needs a positive number" >&2; exit 2; }
            ROWS="$2"; shift 2 ;;
        --quick) QUICK=1; shift ;;
        --mysql)
            [[ $# -ge 2 && "$2" == mysql://* ]] || { echo "demo: --mysql needs a mysql://user@host:port/db URL" >&2; exit 2; }
            MYSQL_URL="$2"; shift 2 ;;
        --docker)
            [[ $# -ge 2 && -n "$2" ]] || { echo "demo: --docker needs an image name" >&2; exit 2; }
            DOCKER_IMAGE="$2"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "demo: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

# ---------------------------------------------------------------- output ---
if [[ -t 1 ]]; then B=$'\e[1m'; G=$'\e[32m'; R=$'\e[31m'; N=$'\e[0m'; else B=""; G=""; R=""; N=""; fi
step() { printf '\n%s==> %s%s\n' "$B" "$*" "$N"; }
note() { printf '    %s\n' "$*"; }
die() { printf '%sdemo: %s%s\n' "$R" "$*" "$N" >&2; exit 1; }

# ------------------------------------------------------------- processes ---
DAEMON_PID=""
CONTAINER=""
SERVE_PID=""
WATCH_PID=""
FINISHED=0

stop_pid() { # stop_pid PID NAME: SIGTERM, wait up to 10 s, then SIGKILL
    local pid="$1" name="$2" i
    [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
        kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
        sleep 0.1
    done
    echo "demo: $name (pid $pid) ignored SIGTERM; killing it" >&2
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    stop_pid "$WATCH_PID" "progress watcher"
    stop_pid "$SERVE_PID" "demo application"
    stop_pid "$DAEMON_PID" "keyholderd"
    [[ -n "$CONTAINER" ]] && docker rm -f "$CONTAINER" >/dev/null 2>&1 || true
    rm -f "$RUN"/pids/*.pid 2>/dev/null || true
    if [[ $FINISHED -eq 0 && -d "$RUN" ]]; then
        echo >&2
        echo "demo: stopped (status $status); every process it started is stopped." >&2
        echo "demo: inspect $RUN (keyholderd.log, serve.log, pki/keyholder.toml)" >&2
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

remember() { echo "$2" >"$RUN/pids/$1.pid"; }

# A previous run killed hard may have left its daemon or application behind:
# stop them by their recorded pid, and only if they still run from demo-run.
stop_leftovers() {
    local file pid
    for file in "$RUN"/pids/*.pid; do
        [[ -f "$file" ]] || continue
        pid="$(cat "$file")"
        if [[ "$pid" =~ ^[0-9]+$ ]] && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "$RUN"; then
            echo "demo: stopping $(basename "$file" .pid) left over from a previous run (pid $pid)"
            kill -TERM "$pid" 2>/dev/null || true
            sleep 1
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
}

# ---------------------------------------------------------------- JSON -----
# Small readers for the CLI's `--output json` documents, so the demo needs no
# jq. Field names are those of keyholder-api (Status, RotationStatus).
json_flat() { tr -d '\n'; }
# The rotation part of a status document (or the whole of a rotation status).
rotation_part() { json_flat | sed 's/.*"rotation" *: *//'; }
# A field that is absent or null prints nothing (and is not an error under
# `set -e -o pipefail`).
json_str() { { grep -o "\"$1\" *: *\"[^\"]*\"" || true; } | head -1 | sed 's/.*: *"\(.*\)"$/\1/'; }
json_num() { { grep -o "\"$1\" *: *[0-9.]*" || true; } | head -1 | sed 's/.*: *//'; }
json_empty_list() { grep -q "\"$1\" *: *\[ *\]"; }

# ---------------------------------------------------------------- build ----
cd "$ROOT"
command -v cargo >/dev/null || die "cargo is not installed; install Rust 1.95 (https://rustup.rs)"
if [[ $QUICK -eq 1 ]]; then PROFILE=debug; PROFILE_FLAG=(); else PROFILE=release; PROFILE_FLAG=(--release); fi
step "building keyholderd, keyholder and the demo application ($PROFILE)"
cargo build "${PROFILE_FLAG[@]}" --locked -p keyholder-server -p keyholder-client -p keyholder-demo-app
TARGET_DIR="$(cargo metadata --no-deps --format-version 1 | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
BIN="${TARGET_DIR:-$ROOT/target}/$PROFILE"
for exe in keyholderd keyholder keyholder-demo-app; do
    [[ -x "$BIN/$exe" ]] || die "$BIN/$exe is missing after the build"
done
KEYHOLDERD="$BIN/keyholderd"
KEYHOLDER="$BIN/keyholder"
APP="$BIN/keyholder-demo-app"

# ---------------------------------------------------------------- setup ----
[[ -d "$RUN" ]] && stop_leftovers
rm -rf "$RUN"
mkdir -p "$RUN/pids" "$RUN/shares"
PKI="$RUN/pki"
CONFIG="$PKI/keyholder.toml"
DB="$RUN/app.db"
STORE="sqlite://$DB"
if [[ -n "$MYSQL_URL" ]]; then DB="$MYSQL_URL"; STORE="$MYSQL_URL"; fi

if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
    die "127.0.0.1:$PORT is already in use; set KEYHOLDER_DEMO_PORT to a free port"
fi

export KEYHOLDER_ADDR="127.0.0.1:$PORT"
export KEYHOLDER_CACERT="$PKI/ca.pem"
# Every CLI call runs as one principal: its certificate and key.
as() { local who="$1"; shift; KEYHOLDER_CLIENT_CERT="$PKI/$who.pem" KEYHOLDER_CLIENT_KEY="$PKI/$who.key" "$@"; }
kh() { local who="$1"; shift; as "$who" "$KEYHOLDER" "$@"; }
status_json() { kh olga --output json status; }

KEYHOLDERS=(alice bob carol)
START=$SECONDS

step "dev PKI: a CA, the server, keyholders alice/bob/carol (2 of 3), operators olga/oscar, database db1"
"$KEYHOLDER" pki init --dir "$PKI" --keyholders alice,bob,carol --operators olga,oscar \
    --databases db1 --listen "127.0.0.1:$PORT"
[[ -d "$PKI/state" ]] || mkdir -m 0700 "$PKI/state"
# The target the daemon samples at unseal and re-encrypts at rotation: both
# columns of the demo table, with the same associated-data rule as the app.
cat >>"$CONFIG" <<EOF

[[targets]]
name = "customers"
store = "$STORE"
table = "customers"
primary_key = "id"
columns = ["ssn", "card"]
aad = "row"
EOF
# The application's table first: check-config refuses a target that does not exist.
"$APP" schema --replace --db "$DB"
"$KEYHOLDERD" check-config --config "$CONFIG"

step "first key v9: split 2-of-3, one age-encrypted share file per keyholder"
"$KEYHOLDERD" init --config "$CONFIG" --first-version v9 --out "$RUN/shares"
share_file() { # the v9 share file keyholderd init wrote for $1
    local file
    file="$(find "$RUN/shares" -maxdepth 1 -type f -name "*$1*" | sort | head -1)"
    [[ -n "$file" ]] || die "keyholderd init wrote no share file for $1 in $RUN/shares"
    echo "$file"
}

step "starting keyholderd (sealed: it holds no key yet)"
if [[ -n "$DOCKER_IMAGE" ]]; then
    # The image's keyholderd runs as uid 10001 and checks that what it reads
    # is its own: hand it the daemon's files (root on the host still reads
    # and writes them). Inside, it listens on 0.0.0.0:8443, published on the
    # host's loopback port the certificate names.
    sed -i "s|^addr = \"127.0.0.1:$PORT\"|addr = \"0.0.0.0:8443\"|" "$CONFIG"
    grep -q '^addr = "0.0.0.0:8443"' "$CONFIG" || die "could not point listen.addr at the container's port"
    chown -R 10001:10001 "$RUN"
    CONTAINER="keyholder-demo-$PORT"
    docker rm -f "$CONTAINER" >/dev/null 2>&1 || true
    # In the foreground (not -d): the docker client's pid stands for the
    # daemon, and the signals the demo sends it reach keyholderd.
    docker run --rm --name "$CONTAINER" \
        --cap-drop ALL --cap-add IPC_LOCK --security-opt no-new-privileges \
        --ulimit core=0 \
        -v "$RUN:$RUN" -p "127.0.0.1:$PORT:8443" \
        "$DOCKER_IMAGE" run --config "$CONFIG" >"$RUN/keyholderd.log" 2>&1 &
else
    "$KEYHOLDERD" run --config "$CONFIG" >"$RUN/keyholderd.log" 2>&1 &
fi
DAEMON_PID=$!
remember keyholderd "$DAEMON_PID"
for ((i = 0; i < 100; i++)); do
    kill -0 "$DAEMON_PID" 2>/dev/null || { tail -20 "$RUN/keyholderd.log" >&2; die "keyholderd exited at start"; }
    kh olga status >/dev/null 2>&1 && break
    sleep 0.2
done
kh olga status

step "unseal: alice, then bob (the two-person rule)"
kh alice unseal --shares "$(share_file alice)" --identity "$PKI/alice.age"
kh bob unseal --shares "$(share_file bob)" --identity "$PKI/bob.age"
kh olga status
status_json | json_flat | grep -q '"sealed" *: *false' || die "the daemon is still sealed after two keyholders"

step "seeding $ROWS records through the hook (keyring handed over in a pipe)"
kh db1 hook --wait 30s --exec -- "$APP" seed --db "$DB" --rows "$ROWS"
BEFORE="$(kh db1 hook --wait 30s --exec -- "$APP" check --db "$DB")"
note "$BEFORE"
DIGEST_BEFORE="$(grep -o 'digest=[^ ]*' <<<"$BEFORE")"

step "the application starts serving (reads + compare-and-swap writes, keyring refreshed every second)"
if [[ $QUICK -eq 1 ]]; then OPS=200; else OPS=500; fi
KEYHOLDER_CLIENT_CERT="$PKI/db1.pem" KEYHOLDER_CLIENT_KEY="$PKI/db1.key" \
    "$KEYHOLDER" hook --wait 30s --exec -- \
    "$APP" serve --db "$DB" --ops-per-sec "$OPS" --refresh-every 1s \
    -- "$KEYHOLDER" hook --wait 10s --format json \
    >"$RUN/serve.out" 2>"$RUN/serve.log" &
SERVE_PID=$!
remember demo-app "$SERVE_PID"
wait_for_log() { # wait_for_log PATTERN SECONDS WHAT
    local i
    for ((i = 0; i < $2 * 10; i++)); do
        grep -q "$1" "$RUN/serve.log" 2>/dev/null && return 0
        kill -0 "$SERVE_PID" 2>/dev/null || { cat "$RUN/serve.log" >&2; die "the application stopped while waiting for $3"; }
        sleep 0.1
    done
    die "the application did not report $3 within $2 s (see $RUN/serve.log)"
}
wait_for_log "keyring versions v9 write v9" 30 "its first keyring"
note "serving with keyring v9 (writes v9)"

step "rotate prepare: new key v10, split, one age-encrypted share per keyholder (olga)"
kh olga rotate prepare
ROTATION_START=$SECONDS

step "every keyholder fetches its v10 share (still age-encrypted) and proves they can open it"
for who in "${KEYHOLDERS[@]}"; do
    kh "$who" share fetch --version v10 --identity "$PKI/$who.age" --out "$RUN/shares/$who.v10.age"
    kh "$who" share verify --shares "$RUN/shares/$who.v10.age" --identity "$PKI/$who.age"
done
kh olga rotate status

step "rotate activate: consumers get v9 + v10, still writing v9 (olga)"
kh olga rotate activate
wait_for_log "to versions v9,v10 write v9" 30 "the dual-read keyring"
for ((i = 0; i < 100; i++)); do
    status_json | rotation_part | json_empty_list waiting_for && break
    sleep 0.2
done
status_json | rotation_part | json_empty_list waiting_for || die "db1 has not acknowledged the dual-read keyring"
note "db1 acknowledged v9,v10 (its hook fetch)"

step "rotate switch: v10 writes, the worker re-encrypts v9 -> v10 while the app keeps serving (olga)"
kh olga rotate switch
SWITCH_AT=$SECONDS
wait_for_log "to versions v9,v10 write v10" 30 "the new write version"
note "the application now writes v10"

if [[ $QUICK -eq 0 && -t 1 ]]; then
    KEYHOLDER_CLIENT_CERT="$PKI/olga.pem" KEYHOLDER_CLIENT_KEY="$PKI/olga.key" \
        "$KEYHOLDER" rotate status --watch &
    WATCH_PID=$!
fi
STATE=""
for ((i = 0; i < 1500; i++)); do
    ROT="$(status_json | rotation_part)"
    STATE="$(json_str state <<<"$ROT")"
    [[ "$STATE" == drained ]] && break
    ERROR="$(json_str last_error <<<"$ROT")"
    [[ -z "$ERROR" ]] || die "the re-encryption worker stopped: $ERROR"
    kill -0 "$DAEMON_PID" 2>/dev/null || die "keyholderd exited (see $RUN/keyholderd.log)"
    sleep 0.1
done
DRAIN_SECONDS=$((SECONDS - SWITCH_AT))
stop_pid "$WATCH_PID" "progress watcher"
WATCH_PID=""
[[ "$STATE" == drained ]] || die "the rotation did not drain within 150 s (state: ${STATE:-unknown})"
echo
kh olga rotate status
ROWS_MOVED="$(json_num rows_done <<<"$ROT")"
CONFLICTS="$(json_num conflicts <<<"$ROT")"

step "retire v9: the plan first, then --execute by two distinct operators"
kh olga rotate retire v9
kh olga rotate retire v9 --execute
kh oscar rotate retire v9 --execute
kh olga status
wait_for_log "to versions v10 write v10" 30 "the v10-only keyring"
note "the application now holds v10 only"
ROTATION_SECONDS=$((SECONDS - ROTATION_START))

step "stopping the application and checking every record"
stop_pid "$SERVE_PID" "demo application"
SERVE_PID=""
SERVE="$(grep '^serve:' "$RUN/serve.out" || true)"
[[ -n "$SERVE" ]] || die "the application printed no summary (see $RUN/serve.log)"
note "$SERVE"
set +e
AFTER="$(kh db1 hook --wait 30s --exec -- "$APP" check --db "$DB")"
CHECK_STATUS=$?
set -e
note "$AFTER"
DIGEST_AFTER="$(grep -o 'digest=[^ ]*' <<<"$AFTER")"

# ---------------------------------------------------------------- summary --
field() { grep -o "$1=[^ ]*" <<<"$2" | head -1 | cut -d= -f2; }
APP_FAILURES="$(field failures "$SERVE")"
APP_DB_ERRORS="$(field db_errors "$SERVE")"
RATE="$(awk -v r="${ROWS_MOVED:-0}" -v s="$DRAIN_SECONDS" 'BEGIN { printf "%.0f", r / (s > 0 ? s : 1) }')"
OK=1
DIGESTS="equal"
if [[ "$DIGEST_BEFORE" != "$DIGEST_AFTER" || -z "$DIGEST_AFTER" ]]; then DIGESTS="DIFFERENT"; OK=0; fi
[[ "$APP_FAILURES" == 0 && "$APP_DB_ERRORS" == 0 && $CHECK_STATUS -eq 0 ]] || OK=0
if ! grep -q 'versions=v10:' <<<"$AFTER" || grep -q 'v9:' <<<"$AFTER"; then OK=0; fi

step "summary"
note "records:              $ROWS (2 encrypted columns each)"
note "re-encrypted v9->v10: ${ROWS_MOVED:-?} in ${DRAIN_SECONDS}s (${RATE}/s), conflicts with the app: ${CONFLICTS:-?}"
note "rotation, end to end: ${ROTATION_SECONDS}s (prepare -> retired); whole demo: $((SECONDS - START))s"
note "application:          $(field rows_read "$SERVE") reads, $(field rows_written "$SERVE") writes, $(field conflicts "$SERVE") CAS conflicts, ${APP_FAILURES:-?} read failures, ${APP_DB_ERRORS:-?} db errors"
note "final check:          $(field versions "$AFTER"), failures $(field failures "$AFTER")"
note "digest before/after:  $DIGESTS (${DIGEST_AFTER#digest=})"
note "files:                $RUN"
FINISHED=1
if [[ $OK -eq 1 ]]; then
    printf '\n%sdemo: ok: v9 -> v10 with zero application errors and every record intact%s\n' "$G" "$N"
else
    printf '\n%sdemo: FAILED: see the summary above and %s%s\n' "$R" "$RUN" "$N" >&2
    exit 1
fi
