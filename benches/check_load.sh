#!/usr/bin/env bash
# Load harness for the forward-auth check (GET /api/v1/auth/check), the request nginx's
# auth_request sends for EVERY request of a protected site.
#
#   benches/check_load.sh
#
# 1. Throughput: wrk -t1 -c32 -d10s against pbxguard's check (valid Bearer token of a
#    supervisor) and against a bare nginx `location / { return 204; }`, alternating
#    pbxguard, nginx, pbxguard, nginx, pbxguard, nginx so that drift of the machine (thermal,
#    noisy neighbours) hits both alike. Prints each run, the medians and the ratio
#    pbxguard/nginx (target >= 0.8).
# 2. Latency under a login storm: wrk --latency -t1 -c16 -d10s against the check while 100
#    clients log in in parallel, over and over (argon2id each, right passwords, 100 users),
#    for the first 8 s of the window. Prints the check's p99 (target <= 5 ms).
#
# Everything runs on 127.0.0.1, plain HTTP (pbxguard allows it on loopback), with all state in
# a temporary folder that is removed at the end; every process started here is stopped on exit
# (also on Ctrl-C or an error). Needs: cargo, wrk, nginx, curl.
# Knobs (environment): NGINX (default /usr/sbin/nginx), RUNS (3), DURATION (10s),
# LOGIN_CLIENTS (100), LOGIN_SECONDS (8), WORKERS (pbxguard worker threads), KEEP=1 keeps the
# folder for inspection.
set -euo pipefail
cd "$(dirname "$0")/.."

NGINX=${NGINX:-/usr/sbin/nginx}
RUNS=${RUNS:-3}
DURATION=${DURATION:-10s}
LOGIN_CLIENTS=${LOGIN_CLIENTS:-100}
LOGIN_SECONDS=${LOGIN_SECONDS:-8}
# WORKERS=N sets pbxguard's [daemon] worker_threads (default: half the cores; nginx keeps its
# `worker_processes auto`, one per core).
WORKERS=${WORKERS:-}
WORKERS_LINE=
[ -n "$WORKERS" ] && WORKERS_LINE="worker_threads = $WORKERS"
PASSWORD="a long password for the bench"

for tool in wrk curl cargo; do
    command -v "$tool" >/dev/null || { echo "check_load: $tool is not installed" >&2; exit 1; }
done
[ -x "$NGINX" ] || { echo "check_load: no nginx at $NGINX (set NGINX=…)" >&2; exit 1; }

echo "== building the release binary"
cargo build --release --quiet
BIN=$PWD/target/release/pbxguard

WORK=$(mktemp -d "${TMPDIR:-/tmp}/pbxguard-bench.XXXXXX")
PB_PID=
NGINX_PID=
LOGIN_PIDS=()

stop() { # pid: TERM, up to 5 s to exit, then KILL
    local pid=$1 i
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
}

cleanup() {
    local pid
    for pid in "${LOGIN_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    stop "$NGINX_PID" # the master stops its workers on TERM
    stop "$PB_PID"
    wait 2>/dev/null || true
    if [ "${KEEP:-0}" = 1 ]; then echo "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A loopback port nobody listens on (bash's /dev/tcp: the connect fails when it is free).
free_port() {
    local p
    while :; do
        p=$((20000 + RANDOM % 40000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "$p"
            return
        fi
    done
}

wait_port() { # port what
    local i
    for i in $(seq 200); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.05
    done
    echo "check_load: $2 never opened port $1" >&2
    exit 1
}

PB_PORT=$(free_port)
NGINX_PORT=$(free_port)
while [ "$NGINX_PORT" = "$PB_PORT" ]; do NGINX_PORT=$(free_port); done

# --- pbxguard: plain HTTP on loopback, state in the temp folder -------------------------------
cat >"$WORK/pbxguard.toml" <<EOF
[daemon]
state_dir = "$WORK/state"
shutdown_grace = "2s"
$WORKERS_LINE

[vault]
key_file = "$WORK/master.key"

[http]
listen = "127.0.0.1:$PB_PORT"
public_url = "http://127.0.0.1:$PB_PORT"
EOF
pb() { env -u CREDENTIALS_DIRECTORY -u NOTIFY_SOCKET RUST_LOG=warn "$BIN" -c "$WORK/pbxguard.toml" "$@"; }
pb init >"$WORK/cli.log" 2>&1 || { cat "$WORK/cli.log" >&2; exit 1; }
printf '%s\n' "$PASSWORD" | pb user add sup --level 5 --password-stdin >>"$WORK/cli.log" 2>&1 ||
    { tail -1 "$WORK/cli.log" >&2; exit 1; }
# One agent per login client: the storm looks like a shift starting, not one account hammered.
# (Right passwords only: the lockout counts failures, so none of this is throttled.)
echo "== creating $LOGIN_CLIENTS login users"
for i in $(seq "$LOGIN_CLIENTS"); do
    printf '%s\n' "$PASSWORD" | pb user add "agent$i" --level 2 --password-stdin >>"$WORK/cli.log" 2>&1 ||
        { tail -1 "$WORK/cli.log" >&2; exit 1; }
done

env -u CREDENTIALS_DIRECTORY -u NOTIFY_SOCKET "$BIN" -c "$WORK/pbxguard.toml" serve \
    </dev/null >/dev/null 2>"$WORK/pbxguard.log" &
PB_PID=$!
wait_port "$PB_PORT" pbxguard

login_json() { printf '{"username":"%s","password":"%s"}' "$1" "$PASSWORD"; }
TOKEN=$(curl -sS --max-time 10 -H 'Content-Type: application/json' -d "$(login_json sup)" \
    "http://127.0.0.1:$PB_PORT/api/v1/auth/login" | sed -n 's/.*"token":"\([^"]*\)".*/\1/p')
[ -n "$TOKEN" ] || { echo "check_load: login failed" >&2; exit 1; }
CHECK_URL="http://127.0.0.1:$PB_PORT/api/v1/auth/check"
code=$(curl -sS --max-time 5 -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $TOKEN" "$CHECK_URL")
[ "$code" = 200 ] || { echo "check_load: the check answered $code, not 200" >&2; exit 1; }

# --- nginx: the reference, as cheap an answer as nginx can give -------------------------------
mkdir -p "$WORK/nginx/tmp"
user_line=""
[ "$(id -u)" = 0 ] && user_line="user root;" # workers must reach the private temp folder
cat >"$WORK/nginx/nginx.conf" <<EOF
$user_line
daemon off;
# One worker per core, like pbxguard's runtime (one worker thread per core).
worker_processes auto;
pid "$WORK/nginx/nginx.pid";
error_log "$WORK/nginx/error.log" warn;
events { worker_connections 1024; }
http {
    access_log off; # pbxguard does not log each request either
    # wrk keeps its connections open; so does pbxguard (hyper has no per-connection request
    # limit), while nginx's default closes one every 1000 requests.
    keepalive_requests 1000000;
    client_body_temp_path "$WORK/nginx/tmp/body";
    proxy_temp_path "$WORK/nginx/tmp/proxy";
    fastcgi_temp_path "$WORK/nginx/tmp/fastcgi";
    uwsgi_temp_path "$WORK/nginx/tmp/uwsgi";
    scgi_temp_path "$WORK/nginx/tmp/scgi";
    server {
        listen 127.0.0.1:$NGINX_PORT;
        location / { return 204; }
    }
}
EOF
"$NGINX" -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" </dev/null >/dev/null 2>"$WORK/nginx/stderr.log" &
NGINX_PID=$!
wait_port "$NGINX_PORT" nginx

# --- helpers ----------------------------------------------------------------------------------
# Runs wrk (bounded by `timeout`), keeps its output in $WORK/wrk.N, prints nothing.
WRK_N=0
run_wrk() {
    WRK_N=$((WRK_N + 1))
    WRK_OUT="$WORK/wrk.$WRK_N"
    timeout 60 wrk "$@" >"$WRK_OUT" 2>&1 || { cat "$WRK_OUT" >&2; echo "check_load: wrk failed" >&2; exit 1; }
    # A run with errors or non-2xx answers measured something else: say so.
    if grep -qE 'Non-2xx|Socket errors' "$WRK_OUT"; then
        echo "   warning: $(grep -E 'Non-2xx|Socket errors' "$WRK_OUT" | tr -s ' ' | paste -sd';')" >&2
    fi
}
rps() { awk '/^Requests\/sec:/ {print $2}' "$WRK_OUT"; }
median() { printf '%s\n' "$@" | sort -g | awk '{v[NR]=$1} END {print (NR%2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2}'; }
# wrk prints latencies as 812.00us, 1.23ms or 1.05s.
to_ms() { awk -v v="$1" 'BEGIN {
    if (v ~ /us$/) printf "%.3f", v / 1000; else if (v ~ /ms$/) printf "%.3f", v + 0;
    else if (v ~ /m$/) printf "%.3f", v * 60000; else if (v ~ /s$/) printf "%.3f", v * 1000;
    else printf "%s", v }'; }

echo "== machine: $(nproc) cores, $(uname -sr); pbxguard $("$BIN" --version 2>/dev/null | awk '{print $2}'), $("$NGINX" -v 2>&1 | sed 's/.*: //')"
echo "== throughput: wrk -t1 -c32 -d$DURATION, alternating (pbxguard check with a Bearer token vs nginx return 204)"
PB_RPS=()
NG_RPS=()
for run in $(seq "$RUNS"); do
    run_wrk -t1 -c32 -d"$DURATION" -H "Authorization: Bearer $TOKEN" "$CHECK_URL"
    PB_RPS+=("$(rps)")
    printf '   run %d  pbxguard  %12s req/s\n' "$run" "${PB_RPS[-1]}"
    run_wrk -t1 -c32 -d"$DURATION" "http://127.0.0.1:$NGINX_PORT/"
    NG_RPS+=("$(rps)")
    printf '   run %d  nginx     %12s req/s\n' "$run" "${NG_RPS[-1]}"
done
PB_MED=$(median "${PB_RPS[@]}")
NG_MED=$(median "${NG_RPS[@]}")
RATIO=$(awk -v a="$PB_MED" -v b="$NG_MED" 'BEGIN {printf "%.3f", a / b}')
printf '   median   pbxguard  %12s req/s\n' "$PB_MED"
printf '   median   nginx     %12s req/s\n' "$NG_MED"
echo "   ratio pbxguard/nginx = $RATIO (target >= 0.8: $(awk -v r="$RATIO" 'BEGIN {print (r >= 0.8) ? "met" : "NOT met"}'))"

# --- latency under a login storm -------------------------------------------------------------
# The logins come from a second wrk (100 connections, each logging in again as soon as its
# previous login is answered, round-robin over agent1..agentN) rather than from 100 curl loops:
# on a small machine, forking curl hundreds of times per second competes for the same cores and
# measures the load generator instead of pbxguard. wrk stops sending after LOGIN_SECONDS; the
# logins still queued for argon2 then finish well inside the check's window.
echo "== latency: wrk --latency -t1 -c16 -d$DURATION on the check while $LOGIN_CLIENTS clients log in for ${LOGIN_SECONDS}s"
cat >"$WORK/login.lua" <<'LUA'
local users = tonumber(os.getenv("BENCH_USERS"))
local password = os.getenv("BENCH_PASSWORD")
local n = 0
request = function()
    n = n % users + 1
    local body = string.format('{"username":"agent%d","password":"%s"}', n, password)
    return wrk.format("POST", nil, { ["Content-Type"] = "application/json" }, body)
end
LUA
BENCH_USERS=$LOGIN_CLIENTS BENCH_PASSWORD=$PASSWORD timeout 60 \
    wrk -t1 -c"$LOGIN_CLIENTS" -d"${LOGIN_SECONDS}s" --timeout 30s -s "$WORK/login.lua" \
    "http://127.0.0.1:$PB_PORT/api/v1/auth/login" >"$WORK/logins.out" 2>&1 &
LOGIN_PIDS+=($!)
run_wrk --latency -t1 -c16 -d"$DURATION" -H "Authorization: Bearer $TOKEN" "$CHECK_URL"
for pid in "${LOGIN_PIDS[@]}"; do wait "$pid" || { cat "$WORK/logins.out" >&2; exit 1; }; done
LOGIN_PIDS=()
P50=$(awk '$1 == "50%" {print $2}' "$WRK_OUT")
P99=$(awk '$1 == "99%" {print $2}' "$WRK_OUT")
P99_MS=$(to_ms "$P99")
LOGINS=$(awk '/requests in/ {print $1}' "$WORK/logins.out")
LOGINS_BAD=$(awk '/Non-2xx/ {print $NF}' "$WORK/logins.out")
LOGIN_ERRS=$(grep -E 'Socket errors' "$WORK/logins.out" | tr -s ' ' || true)
echo "   check: $(rps) req/s, p50 $P50, p99 $P99"
echo "   logins answered in the window: $LOGINS ($(awk '/^Requests\/sec:/ {print $2}' "$WORK/logins.out")/s), not 200: ${LOGINS_BAD:-0}${LOGIN_ERRS:+;$LOGIN_ERRS}"
echo "   p99 = $P99_MS ms (target <= 5 ms: $(awk -v p="$P99_MS" 'BEGIN {print (p <= 5) ? "met" : "NOT met"}'))"
if grep -qiE 'error|panic' "$WORK/pbxguard.log"; then
    echo "   pbxguard logged errors:"; grep -iE 'error|panic' "$WORK/pbxguard.log" | head -5 | sed 's/^/     /'
fi
