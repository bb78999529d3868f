#!/usr/bin/env bash
# Load harness for several nodes on one PostgreSQL database (issue 19), against the same
# daemon on its embedded SQLite store as the reference:
#
#   benches/cluster_load.sh
#
# 1. Forward-auth check throughput on the cache path: wrk -t1 -c32 -d10s on GET
#    /api/v1/auth/check (a supervisor's Bearer token) of a node on PostgreSQL and of a node on
#    SQLite, alternating, RUNS times each. Prints the medians and the ratio PostgreSQL/SQLite
#    (target >= 0.9: within 10 %).
# 2. Logins per second: wrk -t1 -cLOGIN_CLIENTS -d10s of right-password logins (argon2id each,
#    round-robin over LOGIN_CLIENTS users), alternating the two stores. Prints logins/s and
#    the ratio.
# 3. Revocation propagation: two nodes on the PostgreSQL database; 200 sessions logged in on
#    A and checked there (cached), each revoked through B's admin API while A is polled until
#    it answers 401 (tests/clients/revocations.py, a kept-alive client). Prints p50/p99.
#
# Everything runs on 127.0.0.1 (plain HTTP, which pbxguard allows on loopback) with all state,
# the PostgreSQL cluster included (initdb/pg_ctl, never the system service), in a temporary
# folder removed at the end; every process started here is stopped on exit.
# Needs: cargo, wrk, curl, python3, PostgreSQL's server programs (Debian's postgresql).
# Knobs: RUNS (3), DURATION (10s), LOGIN_CLIENTS (16), REVOCATIONS (200), KEEP=1.
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-3}
DURATION=${DURATION:-10s}
LOGIN_CLIENTS=${LOGIN_CLIENTS:-16}
REVOCATIONS=${REVOCATIONS:-200}
PASSWORD="a long password for the bench"

for tool in wrk curl cargo python3; do
    command -v "$tool" >/dev/null || { echo "cluster_load: $tool is not installed" >&2; exit 1; }
done
PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
[ -x "$PGBIN/pg_ctl" ] || { echo "cluster_load: PostgreSQL is not installed (apt install postgresql)" >&2; exit 1; }

echo "== building the release binary"
cargo build --release --quiet
BIN=$PWD/target/release/pbxguard

WORK=$(mktemp -d "${TMPDIR:-/tmp}/pbxguard-cluster.XXXXXX")
chmod 755 "$WORK"
PIDS=()
PG_STARTED=

# initdb refuses root: PostgreSQL's programs run as the package's account then.
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

stop() { # pid: TERM, up to 5 s to exit, then KILL
    local pid=$1 i
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
}
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do stop "$pid"; done
    [ -n "$PG_STARTED" ] && as_pg "$PGBIN/pg_ctl" stop -m immediate -D "$WORK/pg/data" >/dev/null 2>&1 || true
    wait 2>/dev/null || true
    if [ "${KEEP:-0}" = 1 ]; then echo "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
    local p
    while :; do
        p=$((20000 + RANDOM % 40000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return; fi
    done
}
wait_port() {
    local i
    for i in $(seq 200); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.05
    done
    echo "cluster_load: $2 never opened port $1" >&2
    exit 1
}

# --- PostgreSQL: a throwaway cluster with its default durability (fsync on) ------------------
PG_PORT=$(free_port)
mkdir -p "$WORK/pg"
[ "$(id -u)" = 0 ] && chown postgres: "$WORK/pg"
as_pg "$PGBIN/initdb" -D "$WORK/pg/data" -U pbxguard --auth=trust --no-locale -E UTF8 >/dev/null
as_pg "$PGBIN/pg_ctl" start -w -D "$WORK/pg/data" -l "$WORK/pg/log" \
    -o "-p $PG_PORT -k $WORK/pg -c listen_addresses=127.0.0.1" >/dev/null
PG_STARTED=1
as_pg "$PGBIN/psql" -X -q -h 127.0.0.1 -p "$PG_PORT" -U pbxguard -d postgres -c 'CREATE DATABASE pbxguard'
PG_URL="postgres://pbxguard@127.0.0.1:$PG_PORT/pbxguard"

# --- the nodes: S on SQLite; A and B on PostgreSQL; one master key --------------------------
head -c 32 /dev/urandom >"$WORK/master.key"
chmod 600 "$WORK/master.key"
declare -A PORT
node_config() { # name database-line
    PORT[$1]=$(free_port)
    mkdir -p "$WORK/$1"
    cat >"$WORK/$1/pbxguard.toml" <<EOF
[daemon]
state_dir = "$WORK/$1/state"
shutdown_grace = "2s"
node_name = "$1"
$2

[vault]
key_file = "$WORK/master.key"

[http]
listen = "127.0.0.1:${PORT[$1]}"
public_url = "http://127.0.0.1:${PORT[$1]}"
EOF
}
node_config s ""
node_config a "database = \"$PG_URL\""
node_config b "database = \"$PG_URL\""
pb() { local n=$1; shift; env -u CREDENTIALS_DIRECTORY -u NOTIFY_SOCKET RUST_LOG=warn "$BIN" -c "$WORK/$n/pbxguard.toml" "$@"; }
for n in s a; do
    pb "$n" init >>"$WORK/cli.log" 2>&1 || { cat "$WORK/cli.log" >&2; exit 1; }
    printf '%s\n' "$PASSWORD" | pb "$n" user add sup --level 5 --password-stdin >>"$WORK/cli.log" 2>&1
    printf '%s\n' "$PASSWORD" | pb "$n" user add admin --level 9 --password-stdin >>"$WORK/cli.log" 2>&1
    for i in $(seq "$LOGIN_CLIENTS"); do
        printf '%s\n' "$PASSWORD" | pb "$n" user add "agent$i" --level 2 --password-stdin >>"$WORK/cli.log" 2>&1
    done
done
pb b init >>"$WORK/cli.log" 2>&1 || { cat "$WORK/cli.log" >&2; exit 1; }
for n in s a b; do
    env -u CREDENTIALS_DIRECTORY -u NOTIFY_SOCKET RUST_LOG=info "$BIN" -c "$WORK/$n/pbxguard.toml" serve \
        </dev/null >/dev/null 2>"$WORK/$n/log" &
    PIDS+=($!)
    wait_port "${PORT[$n]}" "node $n"
done
for n in a b; do
    for i in $(seq 100); do grep -q "following the database's change notifications" "$WORK/$n/log" && break; sleep 0.1; done
done

login_json() { printf '{"username":"%s","password":"%s"}' "$1" "$PASSWORD"; }
token() {
    curl -sS --max-time 10 -H 'Content-Type: application/json' -d "$(login_json "$2")" \
        "http://127.0.0.1:${PORT[$1]}/api/v1/auth/login" | sed -n 's/.*"token":"\([^"]*\)".*/\1/p'
}
declare -A TOKEN
for n in s a; do
    TOKEN[$n]=$(token "$n" sup)
    [ -n "${TOKEN[$n]}" ] || { echo "cluster_load: login on $n failed" >&2; exit 1; }
done

WRK_N=0
run_wrk() {
    WRK_N=$((WRK_N + 1))
    WRK_OUT="$WORK/wrk.$WRK_N"
    timeout 60 wrk "$@" >"$WRK_OUT" 2>&1 || { cat "$WRK_OUT" >&2; echo "cluster_load: wrk failed" >&2; exit 1; }
    if grep -qE 'Non-2xx|Socket errors' "$WRK_OUT"; then
        echo "   warning: $(grep -E 'Non-2xx|Socket errors' "$WRK_OUT" | tr -s ' ' | paste -sd';')" >&2
    fi
}
rps() { awk '/^Requests\/sec:/ {print $2}' "$WRK_OUT"; }
median() { printf '%s\n' "$@" | sort -g | awk '{v[NR]=$1} END {print (NR%2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.3f", a / b}'; }

echo "== machine: $(nproc) cores, $(uname -sr); pbxguard $("$BIN" --version 2>/dev/null | awk '{print $2}'), PostgreSQL $("$PGBIN/postgres" --version | awk '{print $3}')"
echo "== forward-auth check (cache path): wrk -t1 -c32 -d$DURATION, alternating"
S_RPS=(); A_RPS=()
for run in $(seq "$RUNS"); do
    run_wrk -t1 -c32 -d"$DURATION" -H "Authorization: Bearer ${TOKEN[s]}" "http://127.0.0.1:${PORT[s]}/api/v1/auth/check"
    S_RPS+=("$(rps)"); printf '   run %d  SQLite      %12s req/s\n' "$run" "${S_RPS[-1]}"
    run_wrk -t1 -c32 -d"$DURATION" -H "Authorization: Bearer ${TOKEN[a]}" "http://127.0.0.1:${PORT[a]}/api/v1/auth/check"
    A_RPS+=("$(rps)"); printf '   run %d  PostgreSQL  %12s req/s\n' "$run" "${A_RPS[-1]}"
done
S_MED=$(median "${S_RPS[@]}"); A_MED=$(median "${A_RPS[@]}")
R=$(ratio "$A_MED" "$S_MED")
echo "   medians: SQLite $S_MED, PostgreSQL $A_MED req/s; ratio PostgreSQL/SQLite = $R (target >= 0.9: $(awk -v r="$R" 'BEGIN {print (r >= 0.9) ? "met" : "NOT met"}'))"

echo "== logins: wrk -t1 -c$LOGIN_CLIENTS -d$DURATION, right passwords over $LOGIN_CLIENTS users, alternating"
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
SL=(); AL=()
for run in $(seq "$RUNS"); do
    for n in s a; do
        BENCH_USERS=$LOGIN_CLIENTS BENCH_PASSWORD=$PASSWORD run_wrk -t1 -c"$LOGIN_CLIENTS" -d"$DURATION" --timeout 30s \
            -s "$WORK/login.lua" "http://127.0.0.1:${PORT[$n]}/api/v1/auth/login"
        if [ "$n" = s ]; then SL+=("$(rps)"); else AL+=("$(rps)"); fi
        printf '   run %d  %-10s  %8s logins/s\n' "$run" "$([ "$n" = s ] && echo SQLite || echo PostgreSQL)" "$(rps)"
    done
done
SL_MED=$(median "${SL[@]}"); AL_MED=$(median "${AL[@]}")
echo "   medians: SQLite $SL_MED, PostgreSQL $AL_MED logins/s; ratio PostgreSQL/SQLite = $(ratio "$AL_MED" "$SL_MED")"

echo "== revocation propagation: $REVOCATIONS sessions logged in and checked on A, each revoked through B"
python3 tests/clients/revocations.py "http://127.0.0.1:${PORT[a]}" - "http://127.0.0.1:${PORT[b]}" - \
    agent1 "$PASSWORD" admin "$PASSWORD" "$REVOCATIONS" | tee "$WORK/revocations.json"
for n in s a b; do
    if grep -qiE '\berror\b|panic' "$WORK/$n/log"; then
        echo "   node $n logged errors:"; grep -iE '\berror\b|panic' "$WORK/$n/log" | head -5 | sed 's/^/     /'
    fi
done
