#!/usr/bin/env bash
# The whole test suite: installs the real peers the end-to-end tests talk to (when missing),
# then runs every unit and end-to-end test, and the auth, MFA, recordings and AMI end-to-end
# tests again on PostgreSQL. Usage: tests/run.sh [extra cargo test args] (given to both runs)
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian package -> how to tell it is there.
declare -A peers=(
    [curl]="command -v curl"
    [openssl]="command -v openssl"
    [sqlite3]="command -v sqlite3"
    [nginx-light]="command -v nginx || test -x /usr/sbin/nginx"
    [oathtool]="command -v oathtool"
    [python3-aiosmtpd]="/usr/bin/python3 -c 'import aiosmtpd'"
    [python3-selenium]="/usr/bin/python3 -c 'import selenium'"
    [chromium]="test -x /usr/bin/chromium"
    [chromium-driver]="test -x /usr/bin/chromedriver"
    [python3-panoramisk]="/usr/bin/python3 -c 'import panoramisk'"
    [nodejs]="command -v node"
    [npm]="command -v npm"
    [baresip]="test -x /usr/bin/baresip"
    [sipvicious]="command -v svmap"
    [sipsak]="command -v sipsak"
    [socat]="command -v socat"
    [iproute2]="command -v ip"
    [nftables]="command -v nft || test -x /usr/sbin/nft"
    [gcc]="command -v gcc"
    [postgresql]="ls /usr/lib/postgresql/*/bin/pg_ctl"
)
missing=()
for pkg in "${!peers[@]}"; do
    bash -c "${peers[$pkg]}" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing test peers: ${missing[*]}"
    sudo_cmd=()
    [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
    "${sudo_cmd[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# Node client libraries (AMI: asterisk-manager; SIP: JsSIP with ws; esbuild, which bundles JsSIP
# for the browser tests), pinned in tests/clients/package-lock.json.
if [ ! -d tests/clients/node_modules/asterisk-manager ] || [ ! -d tests/clients/node_modules/jssip ] \
    || [ ! -d tests/clients/node_modules/asterisk-ami-client ] \
    || [ ! -x tests/clients/node_modules/.bin/esbuild ]; then
    (cd tests/clients && npm ci --no-audit --no-fund --silent)
fi

# A real Asterisk 22 for the tests that prove the AMI gateway, realtime and the SIP edge against
# it (tests/asterisk_*.rs): named by PBXGUARD_ASTERISK (an install prefix), or built once per
# machine from the source archives in PBXGUARD_ASTERISK_SOURCES (tests/asterisk/build.sh caches
# it). Without either the tests are skipped after one loud line; under CI=true that fails.
if [ -z "${PBXGUARD_ASTERISK:-}" ]; then
    if [ -n "${PBXGUARD_ASTERISK_SOURCES:-}" ]; then
        PBXGUARD_ASTERISK=$(tests/asterisk/build.sh | tail -n 1)
        export PBXGUARD_ASTERISK
    elif [ "${CI:-}" = true ]; then
        echo "tests/run.sh: CI=true but neither PBXGUARD_ASTERISK nor PBXGUARD_ASTERISK_SOURCES is set: the real-Asterisk tests cannot run" >&2
        exit 1
    else
        echo "######## SKIPPING the real-Asterisk tests: no Asterisk 22 (set PBXGUARD_ASTERISK_SOURCES to the folder with asterisk-22.*.tar.gz and pjproject-*.tar.bz2; see tests/asterisk/README.md) ########" >&2
    fi
fi

cargo test --locked "$@"

# The end-to-end tests of logins, MFA, recording links and AMI clients once more with their
# daemons on PostgreSQL (a throwaway cluster, see tests/common/mod.rs) instead of SQLite.
PBXGUARD_TEST_STORE=postgres cargo test --locked --test auth --test mfa --test recordings --test ami --test settings --test passkeys "$@"
