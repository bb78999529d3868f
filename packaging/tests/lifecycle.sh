#!/usr/bin/env bash
# The Debian package's whole life under a real systemd: Debian 12 (bookworm) booted with
# systemd-nspawn, driven through nsenter.
#
#   install -> start (READY=1) -> /healthz -> reload (RELOADING=1/READY=1) -> watchdog restart
#   of a frozen process -> CLI with only the encrypted key -> upgrade keeps config and state
#   -> remove -> purge leaves nothing (and deletes the configured nftables table, no other)
#   plus systemd-analyze security --offline (<= 1.5) and verify (no output) on the installed unit.
#
# Run as root from anywhere: packaging/tests/lifecycle.sh
#   PBXGUARD_CI_CACHE   where the debootstrap tree is kept between runs (/var/cache/pbxguard-ci)
#   PBXGUARD_DEBIAN_MIRROR  Debian mirror for debootstrap (default: the host's apt source)
#   CARGO_TARGET_DIR    honoured for the build and the .deb files
#   DEB_PROFILE         Cargo profile packaged (default release; CI uses dev, already built)
#   KEEP=1              leave the container running at the end (prints how to enter it)
# It installs the Debian packages it needs (debootstrap, systemd-container, lintian, ...).
# It skips (exit 0, loudly) only when this machine cannot create the namespaces a container
# needs; every other problem fails it.
set -euo pipefail
cd "$(dirname "$0")/../.."
export LC_ALL=C.UTF-8

SUITE=bookworm
CACHE=${PBXGUARD_CI_CACHE:-/var/cache/pbxguard-ci}
# The container's packages. Bump the cache key when the list changes.
INCLUDE=systemd,systemd-sysv,dbus,passwd,procps,init-system-helpers,curl,man-db,nftables
CACHE_KEY="$SUITE minbase $INCLUDE v1"
PATH_IN=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

passed=0
step_start=$SECONDS
say() { printf '== [%3ds] %s\n' "$SECONDS" "$*"; }
pass() {
    passed=$((passed + 1))
    printf 'PASS [%3ds, %2ds] %s\n' "$SECONDS" "$((SECONDS - step_start))" "$*"
    step_start=$SECONDS
}
fail() {
    printf 'FAIL [%3ds] %s\n' "$SECONDS" "$*" >&2
    if [ -n "${ct_pid:-}" ]; then
        echo "--- journal of pbxguard.service (last 40 lines)" >&2
        in_ct journalctl -u pbxguard --no-pager -n 40 >&2 || true
    fi
    echo "lifecycle: FAILED after $passed checks passed" >&2
    exit 1
}

if [ "$(id -u)" != 0 ]; then
    echo "lifecycle.sh: must run as root (debootstrap, systemd-nspawn, nsenter)" >&2
    exit 1
fi

# ---------------------------------------------------------------- host tools
need=()
for pair in debootstrap:debootstrap systemd-nspawn:systemd-container lintian:lintian \
    dpkg-shlibdeps:dpkg-dev objcopy:binutils man:man-db; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
    say "apt-get install ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# A container needs its own mount, PID, UTS, IPC and network namespaces. Where even that is
# refused (an unprivileged or seccomp-restricted sandbox), systemd cannot be booted here.
if ! unshare --mount --pid --uts --ipc --net --fork true 2>/dev/null; then
    cat >&2 <<'EOF'
############################################################################################
# SKIPPED packaging/tests/lifecycle.sh: this machine refuses to create mount/PID/UTS/IPC/
# network namespaces (unshare failed), so systemd-nspawn cannot boot a container here and
# the package lifecycle under systemd was NOT tested.
############################################################################################
EOF
    echo "lifecycle: SKIPPED, no check ran"
    exit 0
fi

# ---------------------------------------------------------------- build
target=${CARGO_TARGET_DIR:-target}
case $target in /*) ;; *) target=$PWD/$target ;; esac
work=$(mktemp -d /var/tmp/pbxguard-lifecycle.XXXXXX)
debs=$work/debs
mkdir -p "$debs"
nspawn_pid=
ct_pid=
cleanup() {
    if [ -n "$nspawn_pid" ] && kill -0 "$nspawn_pid" 2>/dev/null; then
        if [ "${KEEP:-0}" = 1 ]; then
            echo "KEEP=1: container left running; enter it with: nsenter -t $ct_pid -a"
            echo "        stop it with: kill $nspawn_pid; then rm -rf $work"
            return
        fi
        # SIGTERM makes systemd-nspawn shut the container down cleanly.
        kill "$nspawn_pid" 2>/dev/null || true
        for _ in $(seq 1 30); do kill -0 "$nspawn_pid" 2>/dev/null || break; sleep 0.5; done
        kill -KILL "$nspawn_pid" 2>/dev/null || true
        wait "$nspawn_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

say "build: ${DEB_PROFILE:-release} profile, package 0.1.0-1 (lintian) and 0.1.0-2 (same build, for the upgrade)"
packaging/build-deb.sh --lintian --output "$debs/"
packaging/build-deb.sh --no-build --deb-revision 2 --output "$debs/"
deb1=$(ls "$debs"/pbxguard_*-1_*.deb)
deb2=$(ls "$debs"/pbxguard_*-2_*.deb)
pass "build: $(basename "$deb1") (lintian --fail-on error,warning clean), $(basename "$deb2")"

# ---------------------------------------------------------------- Debian 12 tree
mirror=${PBXGUARD_DEBIAN_MIRROR:-}
if [ -z "$mirror" ]; then
    # The host's own Debian source (deb822 or one-line format).
    mirror=$(sed -n 's/^URIs:[[:space:]]*\([^[:space:]]*\/debian\)\/*$/\1/p' \
        /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n 1)
    [ -n "$mirror" ] || mirror=$(awk '$1 == "deb" && $2 ~ /\/debian\/?$/ { print $2; exit }' \
        /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null)
fi
[ -n "$mirror" ] || fail "no Debian mirror found in /etc/apt; set PBXGUARD_DEBIAN_MIRROR"

tree=$CACHE/$SUITE
if [ ! -f "$tree/.pbxguard-ci" ] || [ "$(cat "$tree/.pbxguard-ci")" != "$CACHE_KEY" ]; then
    say "debootstrap $SUITE (cached in $tree for later runs)"
    rm -rf "$tree" "$tree.new"
    mkdir -p "$CACHE"
    debootstrap --variant=minbase --include="$INCLUDE" "$SUITE" "$tree.new" "$mirror" \
        > "$work/debootstrap.log" 2>&1 || { tail -n 30 "$work/debootstrap.log" >&2; fail "debootstrap"; }
    apt-get -o Dir="$tree.new" clean 2>/dev/null || true
    echo "$CACHE_KEY" > "$tree.new/.pbxguard-ci"
    mv "$tree.new" "$tree"
    pass "debootstrap $SUITE from the host's Debian mirror"
else
    pass "debootstrap tree reused from $tree"
fi
root=$work/root
cp -a "$tree" "$root"
# The machine's usual Asterisk group, so the install must add pbxguard to it.
chroot "$root" groupadd --system asterisk

# ---------------------------------------------------------------- boot
say "boot $SUITE with systemd-nspawn --boot"
mkdir -p /run/systemd/nspawn
# SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1: the container gets a cgroup v2 tree even on hosts that
# mount the hybrid v1/v2 layout, as the systemd of Debian 12 expects.
SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1 systemd-nspawn --quiet --boot --register=no --keep-unit \
    --directory="$root" --machine=pbxguard-ci --private-network \
    --bind-ro="$debs:/debs" > "$work/console.log" 2>&1 < /dev/null &
nspawn_pid=$!

# The container's PID 1 is the process below systemd-nspawn whose PID in its own namespace is 1.
descends_from_nspawn() {
    local p=$1
    while [ "$p" -gt 1 ]; do
        [ "$p" = "$nspawn_pid" ] && return 0
        p=$(awk '/^PPid:/ { print $2 }' "/proc/$p/status" 2>/dev/null) || return 1
        [ -n "$p" ] || return 1
    done
    return 1
}
for _ in $(seq 1 100); do
    kill -0 "$nspawn_pid" 2>/dev/null || { cat "$work/console.log" >&2; fail "systemd-nspawn exited"; }
    for status in /proc/[0-9]*/status; do
        if awk '/^NSpid:/ { exit !(NF > 2 && $NF == 1) }' "$status" 2>/dev/null; then
            p=${status#/proc/}
            p=${p%/status}
            if descends_from_nspawn "$p"; then ct_pid=$p; break 2; fi
        fi
    done
    sleep 0.2
done
[ -n "$ct_pid" ] || fail "no container PID 1 found under systemd-nspawn"

in_ct() {
    nsenter --target "$ct_pid" --mount --uts --ipc --net --pid --cgroup --root --wd \
        env -i PATH="$PATH_IN" LANG=C.UTF-8 TERM=dumb SYSTEMD_PAGER= "$@"
}
prop() { in_ct systemctl show -P "$1" pbxguard.service; }
absent() { ! "$@"; }
wait_for() { # seconds, description, command...
    local limit=$1 what=$2
    shift 2
    local end=$((SECONDS + limit))
    until "$@"; do
        [ $SECONDS -lt $end ] || fail "timed out after ${limit}s waiting for: $what"
        sleep 0.5
    done
}

# is-system-running fails at once while PID 1 does not yet answer; --wait then waits for the
# end of the boot.
state=
end=$((SECONDS + 120))
while [ $SECONDS -lt $end ]; do
    state=$(timeout 120 nsenter --target "$ct_pid" --mount --pid --root \
        env -i PATH="$PATH_IN" systemctl is-system-running --wait 2>/dev/null || true)
    case $state in running | degraded | maintenance | stopping) break ;; esac
    sleep 0.5
done
if [ "$state" != running ]; then
    in_ct systemctl --failed --no-pager || true
    fail "container booted to state '$state'"
fi
pass "boot: systemd $(in_ct systemctl --version | awk 'NR == 1 { print $2 }') is '$state'"

# Paths that exist before the package: after purge, anything new must be explained.
snapshot() {
    in_ct find / -xdev \( -path /proc -o -path /sys -o -path /run -o -path /tmp \
        -o -path /var/tmp -o -path /var/log -o -path /var/cache -o -path /var/lib/apt \
        -o -path /var/lib/dpkg -o -path /debs \) -prune -o -print | sort
}
snapshot > "$work/before.txt"

# ---------------------------------------------------------------- install
say "apt-get install ./$(basename "$deb1")"
in_ct apt-get install -y --no-install-recommends "/debs/$(basename "$deb1")" > "$work/install.log" 2>&1 \
    || { cat "$work/install.log" >&2; fail "install"; }
grep '^pbxguard:' "$work/install.log" || true
check() { # description, command... (fails the test when the command fails)
    local what=$1
    shift
    "$@" || fail "$what"
}
perm() { in_ct stat -c '%U:%G %a' "$1"; }
check "user pbxguard in group asterisk" in_ct sh -c 'id -nG pbxguard | grep -qw asterisk'
check "/etc/pbxguard is root:pbxguard 750 (got $(perm /etc/pbxguard))" \
    test "$(perm /etc/pbxguard)" = "root:pbxguard 750"
check "pbxguard.toml is root:pbxguard 640 (got $(perm /etc/pbxguard/pbxguard.toml))" \
    test "$(perm /etc/pbxguard/pbxguard.toml)" = "root:pbxguard 640"
check "state dir is pbxguard 700" test "$(perm /var/lib/pbxguard)" = "pbxguard:pbxguard 700"
check "master key stored as an encrypted credential" in_ct test -f /etc/pbxguard/master.key.cred
check "plaintext master key removed" in_ct test ! -e /etc/pbxguard/master.key
check "no key-file drop-in on a host that can encrypt" \
    in_ct test ! -e /etc/systemd/system/pbxguard.service.d/50-master-key-file.conf
check "unit enabled" test "$(in_ct systemctl is-enabled pbxguard || true)" = enabled
check "unit not started by the install" test "$(in_ct systemctl is-active pbxguard || true)" = inactive
check "man page pbxguard(8) installed" in_ct man -w pbxguard-secret-set
check "unit bounding set is CAP_NET_ADMIN alone (got '$(prop CapabilityBoundingSet)')" \
    test "$(prop CapabilityBoundingSet)" = cap_net_admin
check "unit ambient capability CAP_NET_ADMIN (got '$(prop AmbientCapabilities)')" \
    test "$(prop AmbientCapabilities)" = cap_net_admin
cred_sum=$(in_ct sha256sum /etc/pbxguard/master.key.cred)
pass "install: user+asterisk group, 0750/0640 overrides, encrypted key, enabled, not started"

# ---------------------------------------------------------------- the unit, as installed
unit=/usr/lib/systemd/system/pbxguard.service
security=$(in_ct systemd-analyze security --offline=true --no-pager "$unit" 2>&1) \
    || { echo "$security" >&2; fail "systemd-analyze security"; }
score=$(echo "$security" | sed -n 's/.*Overall exposure level for pbxguard.service: \([0-9.]*\).*/\1/p')
check "exposure $score <= 1.5" awk -v s="$score" 'BEGIN { exit !(s != "" && s <= 1.5) }'
verify=$(in_ct systemd-analyze verify "$unit" 2>&1) || { echo "$verify" >&2; fail "systemd-analyze verify"; }
[ -z "$verify" ] || { echo "$verify" >&2; fail "systemd-analyze verify printed warnings"; }
pass "systemd-analyze security --offline=true: $score (<= 1.5); verify: no output"

# ---------------------------------------------------------------- invalid config
# serve refuses an invalid file with exit 64; RestartPreventExitStatus=64 keeps the unit failed
# instead of retrying every RestartSec=5s.
in_ct sed -i 's|^shutdown_grace = .*|shutdown_grace = "forever"|' /etc/pbxguard/pbxguard.toml
absent in_ct systemctl start pbxguard 2>/dev/null || fail "started with an invalid config"
sleep 6
check "failed with exit 64 (got $(prop ExecMainStatus))" test "$(prop ExecMainStatus)" = 64
check "no restart loop (SubState $(prop SubState), NRestarts $(prop NRestarts))" \
    test "$(prop SubState)/$(prop NRestarts)" = failed/0
in_ct sed -i 's|^shutdown_grace = .*|shutdown_grace = "10s"|' /etc/pbxguard/pbxguard.toml
in_ct systemctl reset-failed pbxguard
pass "invalid config: start refused (exit 64), no restart after RestartSec, unit stays failed"

# ---------------------------------------------------------------- the admin's first steps
say "admin: edit the config, store a secret (as root, with only the encrypted key), check-config"
in_ct sed -i 's|^public_url = .*|public_url = "https://pbx.lifecycle.test:8443"|' /etc/pbxguard/pbxguard.toml
printf 'lifecycle-secret\n' | in_ct pbxguard secret set ami/upstream \
    || fail "pbxguard secret set as root with only master.key.cred"
check "secret readable back" test "$(in_ct pbxguard secret get ami/upstream)" = lifecycle-secret
in_ct pbxguard check-config || fail "check-config"
pass "admin: config edited, secret stored via systemd-creds decrypt, check-config OK"

# ---------------------------------------------------------------- start
in_ct systemctl start pbxguard || fail "systemctl start"
check "active (running)" test "$(prop ActiveState)/$(prop SubState)" = active/running
check "Type=notify" test "$(prop Type)" = notify
check "READY=1 with STATUS=serving (got '$(prop StatusText)')" test "$(prop StatusText)" = serving
check "key came from the credential" in_ct test ! -e /etc/pbxguard/master.key
pid1=$(prop MainPID)
# CAP_NET_ADMIN (bit 12) and nothing else: effective, and ambient so that nft inherits it.
caps() { in_ct awk -v f="$1:" '$1 == f { print $2 }' "/proc/$pid1/status"; }
check "daemon has CapEff CAP_NET_ADMIN only (got $(caps CapEff))" test "$(caps CapEff)" = 0000000000001000
check "daemon has CapAmb CAP_NET_ADMIN only (got $(caps CapAmb))" test "$(caps CapAmb)" = 0000000000001000
pass "start: active (running) through READY=1 (StatusText=serving), main PID $pid1"
if in_ct grep -Eq '^[[:space:]]*firewall[[:space:]]*=[[:space:]]*"nftables"' /etc/pbxguard/pbxguard.toml; then
    # The packaged config enforces bans in nftables: the daemon, under the unit's sandbox,
    # must have made its table with nft.
    wait_for 10 "table inet pbxguard made by the daemon" \
        in_ct sh -c 'nft list table inet pbxguard | grep -q "ip saddr @v4 counter"'
    pass "nftables: the daemon made table inet pbxguard (CAP_NET_ADMIN and AF_NETLINK suffice)"
fi

health() { in_ct curl -fsS --max-time 5 -k https://127.0.0.1:8443/healthz; }
body=$(health) || fail "/healthz"
echo "$body" | grep -q '"status":"ok"' || fail "/healthz said: $body"
pass "/healthz: $body"

# ---------------------------------------------------------------- reload
reloads() {
    in_ct curl -fsS --max-time 5 -k https://127.0.0.1:8443/metrics |
        awk '/^pbxguard_config_reloads_total\{result="ok"\}/ { print $2 }'
}
before=$(reloads)
since=$(in_ct date '+%Y-%m-%d %H:%M:%S')
in_ct sed -i 's|^lockout_threshold = .*|lockout_threshold = 9|' /etc/pbxguard/pbxguard.toml
in_ct systemctl reload pbxguard || fail "systemctl reload"
# systemd logs "Reloaded" only after the daemon's READY=1 that follows its RELOADING=1.
wait_for 10 "configuration reloaded in the journal" \
    in_ct sh -c "journalctl -u pbxguard --since '$since' -o cat | grep -q 'configuration reloaded'"
wait_for 10 "systemd's Reloaded line" \
    in_ct sh -c "journalctl -u pbxguard --since '$since' -o cat | grep -q '^Reloaded pbxguard.service'"
check "still active after reload" test "$(prop ActiveState)" = active
check "same main PID after reload" test "$(prop MainPID)" = "$pid1"
check "back to READY (StatusText=serving)" test "$(prop StatusText)" = serving
after=$(reloads)
check "reload counter ${before:-0} -> $after" test "${after:-0}" = "$(( ${before:-0} + 1 ))"
pass "reload: SIGHUP, RELOADING=1 then READY=1, same PID, config_reloads_total ${before:-0} -> $after"

# ---------------------------------------------------------------- watchdog
# Test-only runtime drop-in (/run, gone at reboot): WatchdogSec=30s would make this step take
# a minute, so the frozen process is detected after 4 s. TimeoutAbortSec keeps the kill quick.
in_ct mkdir -p /run/systemd/system/pbxguard.service.d
in_ct sh -c 'printf "[Service]\nWatchdogSec=4s\nTimeoutAbortSec=5s\n" > /run/systemd/system/pbxguard.service.d/90-lifecycle-watchdog.conf'
in_ct systemctl daemon-reload
in_ct systemctl restart pbxguard || fail "restart with the short watchdog"
check "watchdog 4s in force" test "$(prop WatchdogUSec)" = 4s
restarts=$(prop NRestarts)
frozen=$(prop MainPID)
in_ct systemctl kill --kill-whom=main --signal=SIGSTOP pbxguard
restarted() { [ "$(prop NRestarts)" -gt "$restarts" ] && [ "$(prop SubState)" = running ]; }
wait_for 40 "watchdog restart of the frozen process" restarted
check "new main PID" test "$(prop MainPID)" != "$frozen"
in_ct sh -c 'journalctl -u pbxguard -o cat | grep -qi "watchdog timeout"' || fail "no watchdog timeout logged"
health > /dev/null || fail "/healthz after the watchdog restart"
in_ct rm -f /run/systemd/system/pbxguard.service.d/90-lifecycle-watchdog.conf
in_ct systemctl daemon-reload
in_ct systemctl restart pbxguard || fail "restart without the test drop-in"
pass "watchdog: SIGSTOPped PID $frozen hit 'Watchdog timeout', restarted as PID $(prop MainPID) (NRestarts $restarts -> $((restarts + 1)))"

# ---------------------------------------------------------------- upgrade
pid2=$(prop MainPID)
say "apt-get install ./$(basename "$deb2") (upgrade)"
in_ct apt-get install -y --no-install-recommends "/debs/$(basename "$deb2")" > "$work/upgrade.log" 2>&1 \
    || { cat "$work/upgrade.log" >&2; fail "upgrade"; }
# shellcheck disable=SC2016 # ${Version} is dpkg-query's, not the shell's
check "version $(basename "$deb2" | cut -d_ -f2) installed" \
    test "$(in_ct dpkg-query -W -f '${Version}' pbxguard)" = "$(basename "$deb2" | cut -d_ -f2)"
check "service restarted by the upgrade" test "$(prop MainPID)" != "$pid2"
check "service active after upgrade" test "$(prop ActiveState)" = active
check "edited config kept" in_ct grep -q 'pbx.lifecycle.test' /etc/pbxguard/pbxguard.toml
check "config mode kept" test "$(perm /etc/pbxguard/pbxguard.toml)" = "root:pbxguard 640"
check "encrypted key unchanged" test "$(in_ct sha256sum /etc/pbxguard/master.key.cred)" = "$cred_sum"
check "vault kept its secret" test "$(in_ct pbxguard secret get ami/upstream)" = lifecycle-secret
health > /dev/null || fail "/healthz after upgrade"
pass "upgrade: restarted (PID $pid2 -> $(prop MainPID)), config, key and vault kept, /healthz OK"

# ---------------------------------------------------------------- remove
# The table the purge must delete has a configured name; "pbxguard" and "keep" are someone
# else's tables then, which it must leave alone. Made by hand if the daemon made none.
in_ct awk '
    /^[[:space:]]*\[/ { in_bans = ($0 ~ /^[[:space:]]*\[bans\][[:space:]]*$/) }
    in_bans && /^[[:space:]]*table[[:space:]]*=/ { next }
    { print }
    in_bans && /^[[:space:]]*\[bans\]/ { print "table = \"lifecycle_fw\""; done = 1 }
    END { if (!done) print "\n[bans]\ntable = \"lifecycle_fw\"" }
' /etc/pbxguard/pbxguard.toml > "$work/edited.toml"
in_ct sh -c 'cat > /etc/pbxguard/pbxguard.toml' < "$work/edited.toml"
for t in lifecycle_fw pbxguard keep; do in_ct nft add table inet "$t" || fail "nft add table $t"; done
in_ct apt-get remove -y pbxguard > "$work/remove.log" 2>&1 || { cat "$work/remove.log" >&2; fail "remove"; }
check "service stopped by remove" test "$(in_ct systemctl is-active pbxguard || true)" = inactive
check "binary gone" in_ct test ! -e /usr/bin/pbxguard
check "config kept on remove" in_ct test -f /etc/pbxguard/pbxguard.toml
check "state kept on remove" in_ct test -d /var/lib/pbxguard
check "user kept on remove" in_ct sh -c 'getent passwd pbxguard >/dev/null'
pass "remove: stopped, binary gone, config/key/state/user kept"

# ---------------------------------------------------------------- purge
in_ct apt-get purge -y pbxguard > "$work/purge.log" 2>&1 || { cat "$work/purge.log" >&2; fail "purge"; }
# shellcheck disable=SC2016
check "package forgotten" test -z "$(in_ct dpkg-query -W -f '${Status}' pbxguard 2>/dev/null || true)"
check "no user" absent in_ct getent passwd pbxguard
check "no group" absent in_ct getent group pbxguard
check "no mention in the account files" \
    absent in_ct grep -w pbxguard /etc/passwd /etc/group /etc/shadow /etc/gshadow
check "no statoverride left" absent in_ct sh -c 'dpkg-statoverride --list | grep pbxguard'
check "systemd forgot the unit" in_ct sh -c 'systemctl list-unit-files pbxguard.service | grep -q "^0 unit files"'
check "configured table inet lifecycle_fw deleted" absent in_ct nft list table inet lifecycle_fw
check "other tables kept" in_ct sh -c 'nft list table inet pbxguard && nft list table inet keep' >/dev/null
in_ct nft delete table inet pbxguard
in_ct nft delete table inet keep
# Left on purpose: the host's credential key, which systemd-creds created and which every
# encrypted credential on the machine shares.
leftovers() {
    snapshot > "$work/after.txt"
    local extra missing
    extra=$(comm -13 "$work/before.txt" "$work/after.txt" |
        grep -vxF /var/lib/systemd/credential.secret || true)
    missing=$(comm -23 "$work/before.txt" "$work/after.txt" || true)
    [ -z "$extra" ] || { echo "$extra" >&2; fail "purge left files behind"; }
    [ -z "$missing" ] || { echo "$missing" >&2; fail "purge removed files it did not install"; }
}
leftovers
pass "purge: no files, user, group, statoverride, unit or configured nftables table left; other tables kept"

# ---------------------------------------------------------------- host that cannot encrypt
# systemd-creds is diverted to a stub that fails, as on a host whose /var/lib/systemd cannot
# hold a host key. The package must keep the 0600 key file and write the drop-in that clears
# LoadCredentialEncrypted=. This round uses dpkg -i, the other way admins install.
say "dpkg -i on a host where systemd-creds cannot encrypt"
in_ct dpkg-divert --quiet --local --rename --add /usr/bin/systemd-creds
in_ct sh -c 'printf "#!/bin/sh\necho \"stub: no host key\" >&2\nexit 1\n" > /usr/bin/systemd-creds && chmod 755 /usr/bin/systemd-creds'
in_ct dpkg -i "/debs/$(basename "$deb2")" > "$work/fallback.log" 2>&1 || { cat "$work/fallback.log" >&2; fail "dpkg -i"; }
grep '^pbxguard: this host' "$work/fallback.log" || fail "postinst did not say it kept the key file"
check "key file kept, pbxguard 600 (got $(perm /etc/pbxguard/master.key))" \
    test "$(perm /etc/pbxguard/master.key)" = "pbxguard:pbxguard 600"
check "no credential file" in_ct test ! -e /etc/pbxguard/master.key.cred
check "drop-in written" in_ct grep -qx 'LoadCredentialEncrypted=' \
    /etc/systemd/system/pbxguard.service.d/50-master-key-file.conf
# Without the drop-in, the missing .cred file would fail the start (systemd 252).
in_ct systemctl start pbxguard || fail "start with the key file"
health > /dev/null || fail "/healthz with the key file"
# The vault reads a key file only as its owner, so here the CLI runs as the service account.
check "secret CLI as pbxguard with the key file" \
    in_ct sh -c 'echo x | runuser -u pbxguard -- pbxguard secret set smtp/password >/dev/null'
# The purge must not fail without the table (or without nft at all).
in_ct sh -c 'nft delete table inet pbxguard 2>/dev/null || true'
in_ct dpkg --purge pbxguard > "$work/purge2.log" 2>&1 || { cat "$work/purge2.log" >&2; fail "purge (fallback)"; }
in_ct rm -f /usr/bin/systemd-creds
in_ct dpkg-divert --quiet --local --rename --remove /usr/bin/systemd-creds
leftovers
pass "no-encryption host: key file 0600 + drop-in, started, /healthz OK; purge left nothing"

echo "lifecycle took ${SECONDS}s"
echo "lifecycle: all $passed checks passed"
