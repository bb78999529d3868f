#!/usr/bin/env bash
# Builds and runs the fuzz targets (cargo-fuzz, libFuzzer).
#
#   fuzz/run.sh smoke [SECONDS]        every target for SECONDS (default 30), two at a time;
#                                      what CI runs (a quicker-to-build --dev build, about
#                                      half the speed). Fails on any crash.
#   fuzz/run.sh campaign [RUNS] [T..]  every target (or the named ones) until RUNS executions
#                                      (default 10000000), one at a time per core; prints the
#                                      figures table of docs/fuzzing.md.
#   fuzz/run.sh repro TARGET FILE      runs one input through a target (a crash's artifact).
#
# Corpora grow under target/fuzz/corpus/<target> (seeded from fuzz/seeds/<target>); crashes
# land in target/fuzz/artifacts/<target>/ and the run fails. A crash is kept for good by
# copying it to fuzz/regressions/<target>/, where `cargo test --test fuzz_corpus` replays it.
#
# libFuzzer needs unstable compiler flags: the nightly toolchain when rustup has one, else
# the stable one with RUSTC_BOOTSTRAP=1 (the same flags, allowed on a release compiler).
# Sanitizer: none by default (the crate forbids unsafe code; a panic or a broken property is
# what we look for, at full speed); FUZZ_SANITIZER=address for ASan over the dependencies.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
work="$root/target/fuzz"
mode="${1:-smoke}"
shift || true
sanitizer="${FUZZ_SANITIZER:-none}"
CARGO_FUZZ_VERSION=0.13.2

export PATH="$HOME/.cargo/bin:$PATH"
if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
    cargo install --locked --quiet cargo-fuzz --version "$CARGO_FUZZ_VERSION"
fi
toolchain=()
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    toolchain=(+nightly)
else
    export RUSTC_BOOTSTRAP=1
fi

targets=(ami_client sip_stream sip_websocket sdp_policy recording_token check_request realtime_body config_file asterisk_conf)
profile=release
[ "$mode" = smoke ] && profile=dev
bin_dir="$here/target/x86_64-unknown-linux-gnu/$( [ "$profile" = dev ] && echo debug || echo release )"

build() {
    local flags=()
    [ "$profile" = dev ] && flags=(--dev)
    (cd "$here" && cargo "${toolchain[@]}" fuzz build "${flags[@]}" -s "$sanitizer" "$@")
}

# Runs one target with libFuzzer options; a log per target; a crash fails.
run_one() {
    local t="$1"
    shift
    mkdir -p "$work/corpus/$t" "$work/artifacts/$t" "$work/logs" "$work/tmp/$t"
    cp -n "$here/seeds/$t/"* "$work/corpus/$t/" 2>/dev/null || true
    local log="$work/logs/$t.log"
    # Each target keeps its scratch files (the check target's SQLite state) in its own folder.
    if TMPDIR="$work/tmp/$t" "$bin_dir/$t" "$work/corpus/$t" \
        -artifact_prefix="$work/artifacts/$t/" -print_final_stats=1 \
        -rss_limit_mb=2048 -timeout=10 -max_len=16384 "$@" >"$log" 2>&1; then
        status=ok
    else
        status=FAILED
    fi
    rm -rf "$work/tmp/$t"
    local runs cov rate
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | tr -dc 0-9)
    local corpus
    corpus=$(find "$work/corpus/$t" -type f | wc -l)
    printf '| %-16s | %12s | %9s/s | %6s | %7s | %s |\n' "$t" "${runs:-?}" "${rate:-?}" "${cov:-?}" "$corpus" "$status"
    if [ "$status" != ok ]; then
        grep -E 'panicked at|ERROR: libFuzzer|Test unit written' "$log" | head -5 >&2 || true
        return 1
    fi
}

header() {
    printf '| %-16s | %12s | %11s | %6s | %7s | %s |\n' target executions rate edges corpus result
    printf '|%s|%s|%s|%s|%s|%s|\n' ------------------ -------------- ------------- -------- --------- --------
}

# Runs every target with the given libFuzzer options, JOBS at a time; fails if any failed.
pool() {
    local jobs="$1" running=0 failed=0
    shift
    for t in "${targets[@]}"; do
        if [ "$running" -ge "$jobs" ]; then
            wait -n || failed=1
            running=$((running - 1))
        fi
        run_one "$t" "$@" &
        running=$((running + 1))
    done
    while [ "$running" -gt 0 ]; do
        wait -n || failed=1
        running=$((running - 1))
    done
    return "$failed"
}

case "$mode" in
smoke)
    seconds="${1:-30}"
    build
    header
    # Two at a time: CI machines have two cores.
    pool 2 -max_total_time="$seconds"
    ;;
campaign)
    runs="${1:-10000000}"
    shift || true
    if [ "$#" -gt 0 ]; then
        targets=("$@")
    else
        # The slowest first, so that the cores stay busy to the end.
        targets=(asterisk_conf sip_stream ami_client check_request sip_websocket sdp_policy realtime_body config_file recording_token)
    fi
    build
    echo "campaign: $runs executions per target, sanitizer $sanitizer, $(nproc) at a time, $(date -u +%F)"
    header
    start=$SECONDS
    status=0
    pool "$(nproc)" -runs="$runs" || status=1
    echo "wall time: $(((SECONDS - start) / 60)) min"
    exit "$status"
    ;;
repro)
    build "$1"
    TMPDIR="$(mktemp -d)" "$bin_dir/$1" "$2"
    ;;
*)
    echo "usage: $0 smoke [SECONDS] | campaign [RUNS] [TARGET...] | repro TARGET FILE" >&2
    exit 2
    ;;
esac
