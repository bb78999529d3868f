#!/usr/bin/env bash
# The whole test suite: installs the real peers the end-to-end tests talk to (when missing),
# then runs every unit and end-to-end test. Usage: tests/run.sh [extra cargo test args]
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

# Node client libraries (AMI: asterisk-manager; SIP: JsSIP with ws), pinned in
# tests/clients/package-lock.json.
if [ ! -d tests/clients/node_modules/asterisk-manager ] || [ ! -d tests/clients/node_modules/jssip ]; then
    (cd tests/clients && npm ci --no-audit --no-fund --silent)
fi

exec cargo test --locked "$@"
