#!/usr/bin/env bash
# The whole test suite: installs the real peers the end-to-end tests talk to (when missing),
# then runs every unit and end-to-end test. Usage: tests/run.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages -> a command each provides.
declare -A peers=([curl]=curl [openssl]=openssl [sqlite3]=sqlite3 [nginx-light]=nginx)
missing=()
for pkg in "${!peers[@]}"; do
    cmd=${peers[$pkg]}
    command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing test peers: ${missing[*]}"
    sudo_cmd=()
    [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
    "${sudo_cmd[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

exec cargo test --locked "$@"
