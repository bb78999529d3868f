#!/usr/bin/env bash
# Load harness for signed recording downloads (GET /rec/<token>), compared with what an
# Asterisk box would otherwise use: nginx's secure_link serving the same folder.
#
#   benches/recordings_load.sh
#
# 1. Throughput: for a 64 KiB and a 1 MiB recording, wrk -t1 -c32 -d10s against a pbxguard
#    link and against an nginx secure_link URL of the same file, alternating pbxguard, nginx,
#    pbxguard, nginx, pbxguard, nginx so that drift of the machine (thermal, noisy neighbours)
#    hits both alike. Prints each run (req/s and transfer/s), the medians and the ratios
#    pbxguard/nginx for req/s and bytes/s (target >= 1.0).
# 2. Memory: a 100 MiB recording downloaded by 500 connections at once (wrk -t2 -c500). Prints
#    the idle RSS, the peak RSS (VmHWM) during the downloads and the downloads completed per
#    second, for pbxguard and for nginx (master + workers).
#
# Everything runs on 127.0.0.1 over TLS (both servers use the self-signed certificate that
# `pbxguard init` creates), with all state in a temporary folder that is removed at the end;
# every process started here is stopped on exit (also on Ctrl-C or an error).
# Needs: cargo, wrk, nginx (with secure_link, e.g. Debian's nginx-light), curl, openssl.
# Knobs (environment): NGINX (default /usr/sbin/nginx), RUNS (3), DURATION (10s),
# RSS_SECONDS (10), WORKERS (pbxguard worker threads = nginx worker processes), PLAIN=1 runs
# both over plain HTTP (where nginx can use sendfile), KEEP=1 keeps the folder for inspection.
set -euo pipefail
cd "$(dirname "$0")/.."

NGINX=${NGINX:-/usr/sbin/nginx}
RUNS=${RUNS:-3}
DURATION=${DURATION:-10s}
RSS_SECONDS=${RSS_SECONDS:-10}
PLAIN=${PLAIN:-0}
# WORKERS=N sets pbxguard's [daemon] worker_threads; nginx gets as many worker processes, so
# both have the same cores to work with and the rest are left to wrk.
WORKERS=${WORKERS:-}
WORKERS_LINE=
[ -n "$WORKERS" ] && WORKERS_LINE="worker_threads = $WORKERS"
# pbxguard's default: half the cores, at least one.
NG_WORKERS=${WORKERS:-$(( $(nproc) / 2 ))}
[ "$NG_WORKERS" -ge 1 ] || NG_WORKERS=1
if [ "$PLAIN" = 1 ]; then SCHEME=http; else SCHEME=https; fi

for tool in wrk curl cargo openssl; do
    command -v "$tool" >/dev/null || { echo "recordings_load: $tool is not installed" >&2; exit 1; }
done
[ -x "$NGINX" ] || { echo "recordings_load: no nginx at $NGINX (set NGINX=…)" >&2; exit 1; }

echo "== building the release binary"
cargo build --release --quiet
BIN=$PWD/target/release/pbxguard

WORK=$(mktemp -d "${TMPDIR:-/tmp}/pbxguard-bench.XXXXXX")
PB_PID=
NGINX_PID=

stop() { # pid: TERM, up to 5 s to exit, then KILL
    local pid=$1 i
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
}

cleanup() {
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
    echo "recordings_load: $2 never opened port $1" >&2
    exit 1
}

PB_PORT=$(free_port)
NGINX_PORT=$(free_port)
while [ "$NGINX_PORT" = "$PB_PORT" ]; do NGINX_PORT=$(free_port); done

# --- the recordings: random bytes (nothing compresses or caches them specially), named like
# Asterisk's MixMonitor files ---------------------------------------------------------------
REC_DIR=2026/11/29
mkdir -p "$WORK/rec/$REC_DIR"
SMALL=$REC_DIR/20261129-101500_5551234567_agent1-all.wav
LARGE=$REC_DIR/20261129-113042_5557654321_agent2-all.wav
HUGE=$REC_DIR/20261129-140715_5550001111_agent3-all.wav
head -c $((64 * 1024)) /dev/urandom >"$WORK/rec/$SMALL"
head -c $((1024 * 1024)) /dev/urandom >"$WORK/rec/$LARGE"
head -c $((100 * 1024 * 1024)) /dev/urandom >"$WORK/rec/$HUGE"

# --- pbxguard: TLS with the certificate init creates, state in the temp folder ----------------
if [ "$PLAIN" = 1 ]; then
    TLS_LINES= # plain HTTP is allowed on loopback when no certificate is configured
else
    TLS_LINES="tls_cert = \"$WORK/tls/cert.pem\"
tls_key = \"$WORK/tls/key.pem\""
fi
cat >"$WORK/pbxguard.toml" <<EOF
[daemon]
state_dir = "$WORK/state"
shutdown_grace = "2s"
$WORKERS_LINE

[vault]
key_file = "$WORK/master.key"

[http]
listen = "127.0.0.1:$PB_PORT"
$TLS_LINES
public_url = "$SCHEME://127.0.0.1:$PB_PORT"
# The default (1024) would do for 500 downloads; room to spare so that a refused connection
# never shows up as a socket error in the 500-connection run.
max_connections = 2048

[recordings]
root = "$WORK/rec"
link_ttl = "8h"
EOF
pb() { env -u CREDENTIALS_DIRECTORY -u NOTIFY_SOCKET RUST_LOG=warn "$BIN" -c "$WORK/pbxguard.toml" "$@"; }
pb init >"$WORK/cli.log" 2>&1 || { cat "$WORK/cli.log" >&2; exit 1; }

env -u CREDENTIALS_DIRECTORY -u NOTIFY_SOCKET "$BIN" -c "$WORK/pbxguard.toml" serve \
    </dev/null >/dev/null 2>"$WORK/pbxguard.log" &
PB_PID=$!
wait_port "$PB_PORT" pbxguard

# One link per file, minted once: wrk downloads the same link over and over, as a supervisor's
# browser would re-fetch a link it was handed (links are valid for their whole lifetime).
pb_link() { pb recording link "$1" 2>>"$WORK/cli.log" || { tail -1 "$WORK/cli.log" >&2; exit 1; }; }
PB_SMALL=$(pb_link "$SMALL")
PB_LARGE=$(pb_link "$LARGE")
PB_HUGE=$(pb_link "$HUGE")

# --- nginx: the reference, secure_link the classic way (md5 of expiry, URI and a secret) -----
mkdir -p "$WORK/nginx/tmp"
SECRET=$(openssl rand -hex 16)
EXPIRES=$(( $(date +%s) + 8 * 3600 )) # the same 8 h as pbxguard's link_ttl
user_line=""
[ "$(id -u)" = 0 ] && user_line="user root;" # workers must reach the private temp folder
if [ "$PLAIN" = 1 ]; then
    listen_line="listen 127.0.0.1:$NGINX_PORT;"
    ssl_lines=""
else
    listen_line="listen 127.0.0.1:$NGINX_PORT ssl;"
    ssl_lines="ssl_certificate \"$WORK/tls/cert.pem\";
        ssl_certificate_key \"$WORK/tls/key.pem\";"
fi
cat >"$WORK/nginx/nginx.conf" <<EOF
$user_line
daemon off;
# As many workers as pbxguard has worker threads: same cores for both, the rest for wrk.
worker_processes $NG_WORKERS;
# 500 downloads hold a socket and a file each, per worker.
worker_rlimit_nofile 8192;
pid "$WORK/nginx/nginx.pid";
error_log "$WORK/nginx/error.log" warn;
events { worker_connections 4096; }
http {
    access_log off; # pbxguard's download journal is not an access log of every byte either
    # wrk keeps its connections open; so does pbxguard (hyper has no per-connection request
    # limit), while nginx's default closes one every 1000 requests.
    keepalive_requests 1000000;
    # nginx's compiled-in default is off, but every packaged nginx.conf turns it on, so this is
    # what a real install does. Over TLS it changes nothing: without kTLS (which needs
    # \`ssl_conf_command Options KTLS\` and the kernel's tls module, not set up here) nginx
    # reads the file and encrypts it in user space, exactly as pbxguard does. PLAIN=1 shows
    # the zero-copy case.
    sendfile on;
    client_body_temp_path "$WORK/nginx/tmp/body";
    proxy_temp_path "$WORK/nginx/tmp/proxy";
    fastcgi_temp_path "$WORK/nginx/tmp/fastcgi";
    uwsgi_temp_path "$WORK/nginx/tmp/uwsgi";
    scgi_temp_path "$WORK/nginx/tmp/scgi";
    types { audio/wav wav; }
    server {
        $listen_line
        $ssl_lines
        location /rec/ {
            secure_link \$arg_md5,\$arg_expires;
            secure_link_md5 "\$secure_link_expires\$uri $SECRET";
            if (\$secure_link = "") { return 403; }
            if (\$secure_link = "0") { return 410; }
            alias $WORK/rec/;
        }
    }
}
EOF
"$NGINX" -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" </dev/null >/dev/null 2>"$WORK/nginx/stderr.log" &
NGINX_PID=$!
wait_port "$NGINX_PORT" nginx

ng_link() { # path relative to the recordings root
    local md5
    md5=$(printf '%s' "$EXPIRES/rec/$1 $SECRET" | openssl md5 -binary | openssl base64 | tr +/ -_ | tr -d =)
    echo "$SCHEME://127.0.0.1:$NGINX_PORT/rec/$1?md5=$md5&expires=$EXPIRES"
}
NG_SMALL=$(ng_link "$SMALL")
NG_LARGE=$(ng_link "$LARGE")
NG_HUGE=$(ng_link "$HUGE")

# Both must really serve the file, whole, before their speed means anything.
expect() { # url code size what
    local got
    got=$(curl -sk --max-time 30 -o /dev/null -w '%{http_code} %{size_download}' "$1") || true
    if [ "${got%% *}" != "$2" ] || { [ -n "$3" ] && [ "${got#* }" != "$3" ]; }; then
        echo "recordings_load: $4 answered '$got', expected $2${3:+ with $3 bytes}" >&2
        exit 1
    fi
}
for f in SMALL LARGE HUGE; do
    path=${!f}
    size=$(stat -c %s "$WORK/rec/$path")
    pb_var=PB_$f
    ng_var=NG_$f
    expect "${!pb_var}" 200 "$size" "pbxguard's link to $path"
    expect "${!ng_var}" 200 "$size" "nginx's link to $path"
done
bad=$(ng_link "$SMALL" | sed 's/md5=[^&]*/md5=AAAAAAAAAAAAAAAAAAAAAA/')
expect "$bad" 403 "" "nginx with a wrong md5"

# --- helpers ----------------------------------------------------------------------------------
# Runs wrk (bounded by `timeout`), keeps its output in $WORK/wrk.N, prints nothing.
WRK_N=0
run_wrk() {
    WRK_N=$((WRK_N + 1))
    WRK_OUT="$WORK/wrk.$WRK_N"
    timeout 120 wrk "$@" >"$WRK_OUT" 2>&1 || { cat "$WRK_OUT" >&2; echo "recordings_load: wrk failed" >&2; exit 1; }
    # A run with errors or non-2xx answers measured something else: say so.
    if grep -qE 'Non-2xx|Socket errors' "$WRK_OUT"; then
        echo "   warning: $(grep -E 'Non-2xx|Socket errors' "$WRK_OUT" | tr -s ' ' | paste -sd';')" >&2
    fi
}
rps() { awk '/^Requests\/sec:/ {print $2}' "$WRK_OUT"; }
# wrk prints Transfer/sec as 812.00KB, 95.31MB or 1.20GB (powers of 1024); as MB/s.
mbps() { awk '/^Transfer\/sec:/ { v = $2
    if (v ~ /GB$/) m = v * 1024; else if (v ~ /MB$/) m = v + 0;
    else if (v ~ /KB$/) m = v / 1024; else m = v / 1048576;
    printf "%.2f", m }' "$WRK_OUT"; }
median() { printf '%s\n' "$@" | sort -g | awk '{v[NR]=$1} END {print (NR%2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.3f", a / b}'; }
verdict() { awk -v r="$1" 'BEGIN {print (r >= 1.0) ? "met" : "NOT met"}'; }

echo "== machine: $(nproc) cores, $(uname -sr); pbxguard $("$BIN" --version 2>/dev/null | awk '{print $2}'), $("$NGINX" -v 2>&1 | sed 's/.*: //'); $NG_WORKERS worker(s) each, $SCHEME"

throughput() { # label pbxguard-url nginx-url
    local run pb_rps=() ng_rps=() pb_mb=() ng_mb=()
    echo "== throughput, $1: wrk -t1 -c32 -d$DURATION, alternating (pbxguard signed link vs nginx secure_link)"
    for run in $(seq "$RUNS"); do
        run_wrk -t1 -c32 -d"$DURATION" "$2"
        pb_rps+=("$(rps)")
        pb_mb+=("$(mbps)")
        printf '   run %d  pbxguard  %12s req/s  %10s MB/s\n' "$run" "${pb_rps[-1]}" "${pb_mb[-1]}"
        run_wrk -t1 -c32 -d"$DURATION" "$3"
        ng_rps+=("$(rps)")
        ng_mb+=("$(mbps)")
        printf '   run %d  nginx     %12s req/s  %10s MB/s\n' "$run" "${ng_rps[-1]}" "${ng_mb[-1]}"
    done
    local pb_med ng_med pb_mbm ng_mbm r_req r_bytes
    pb_med=$(median "${pb_rps[@]}")
    ng_med=$(median "${ng_rps[@]}")
    pb_mbm=$(median "${pb_mb[@]}")
    ng_mbm=$(median "${ng_mb[@]}")
    printf '   median   pbxguard  %12s req/s  %10s MB/s\n' "$pb_med" "$pb_mbm"
    printf '   median   nginx     %12s req/s  %10s MB/s\n' "$ng_med" "$ng_mbm"
    r_req=$(ratio "$pb_med" "$ng_med")
    r_bytes=$(ratio "$pb_mbm" "$ng_mbm")
    echo "   ratio pbxguard/nginx req/s   = $r_req (target >= 1.0: $(verdict "$r_req"))"
    echo "   ratio pbxguard/nginx bytes/s = $r_bytes (target >= 1.0: $(verdict "$r_bytes"))"
}
throughput "64 KiB" "$PB_SMALL" "$NG_SMALL"
throughput "1 MiB" "$PB_LARGE" "$NG_LARGE"

# --- memory under 500 concurrent downloads ----------------------------------------------------
# VmHWM is the peak since the process started, which would include the throughput runs; writing
# 5 to clear_refs resets it to the current RSS (Linux >= 4.0), so the peak read afterwards
# belongs to this run alone. Where that is refused, the figure is the peak since start.
status_kb() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
sum_kb() { # field pid…
    local field=$1 pid total=0
    shift
    for pid in "$@"; do total=$((total + $(status_kb "$pid" "$field"))); done
    echo "$total"
}
reset_hwm() {
    local pid ok=1
    for pid in "$@"; do echo 5 2>/dev/null >"/proc/$pid/clear_refs" || ok=0; done
    [ "$ok" = 1 ] && echo "this run" || echo "since start"
}
mib() { awk -v k="$1" 'BEGIN {printf "%.1f MiB", k / 1024}'; }

rss_run() { # label url pid…
    local label=$1 url=$2 idle peak scope
    shift 2
    idle=$(sum_kb VmRSS "$@")
    scope=$(reset_hwm "$@")
    run_wrk -t2 -c500 -d"${RSS_SECONDS}s" --timeout 60s "$url"
    peak=$(sum_kb VmHWM "$@")
    printf '   %-8s idle RSS %12s, peak RSS (VmHWM, %s) %12s, %s downloads/s (%s MB/s)\n' \
        "$label" "$(mib "$idle")" "$scope" "$(mib "$peak")" "$(rps)" "$(mbps)"
}
# 500 × 100 MiB is ~50 GB: shared fairly, no download finishes in a 10 s window, so a server
# that serves its connections in turn shows 0 downloads/s while one that favours a few shows
# some. MB/s is the comparable figure; RSS_SECONDS=60 lets fair downloads complete.
echo "== memory: 100 MiB recording, wrk -t2 -c500 -d${RSS_SECONDS}s --timeout 60s"
rss_run pbxguard "$PB_HUGE" "$PB_PID"
# nginx's memory is the master's plus its workers'.
mapfile -t NG_PIDS < <(echo "$NGINX_PID"; pgrep -P "$NGINX_PID")
rss_run nginx "$NG_HUGE" "${NG_PIDS[@]}"

if grep -qiE 'error|panic' "$WORK/pbxguard.log"; then
    echo "   pbxguard logged errors:"; grep -iE 'error|panic' "$WORK/pbxguard.log" | head -5 | sed 's/^/     /'
fi
