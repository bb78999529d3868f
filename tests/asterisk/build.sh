#!/usr/bin/env bash
# Builds Asterisk 22 (with its bundled pjproject) from unmodified source archives, once per
# machine, into a cache folder keyed by the archives' checksums and this script.
#
# Usage: PBXGUARD_ASTERISK_SOURCES=DIR tests/asterisk/build.sh
#   DIR holds asterisk-*.tar.gz and pjproject-*.tar.bz2.
# Prints the installed prefix (its sbin/asterisk is the binary) on the last line of stdout.
# Environment: PBXGUARD_CI_CACHE (default /var/cache/pbxguard-ci) is where builds are kept.
set -euo pipefail

src=${PBXGUARD_ASTERISK_SOURCES:?set PBXGUARD_ASTERISK_SOURCES to the folder with the Asterisk and pjproject archives}
src=$(cd "$src" && pwd)
cache_root=${PBXGUARD_CI_CACHE:-/var/cache/pbxguard-ci}

shopt -s nullglob
ast_archives=("$src"/asterisk-*.tar.gz)
pj_archives=("$src"/pjproject-*.tar.bz2)
if [ ${#ast_archives[@]} -ne 1 ] || [ ${#pj_archives[@]} -ne 1 ]; then
    echo "build.sh: $src must hold exactly one asterisk-*.tar.gz and one pjproject-*.tar.bz2" >&2
    exit 2
fi
ast_tar=${ast_archives[0]}
pj_tar=${pj_archives[0]}

# Everything that changes the installed tree: configure flags and the menuselect choices.
configure_flags=(--with-pjproject-bundled --with-srtp --with-libcurl --with-ssl --with-jansson
                 --disable-xmldoc)
menuselect_flags=(--disable CORE-SOUNDS-EN-GSM --disable MOH-OPSOUND-WAV --disable BUILD_NATIVE
                  --enable ENABLE_SRTP_AES_256 --enable ENABLE_SRTP_AES_192
                  --enable ENABLE_SRTP_AES_GCM)
# The cache key covers every input of the build: both archives and the recipe above.
key=$( (cat "$ast_tar" "$pj_tar"; echo "${configure_flags[*]}"; echo "${menuselect_flags[*]}") \
    | sha256sum | cut -c1-16)
prefix="$cache_root/asterisk-$key"

# Asterisk's own configuration trees (configs/samples, configs/basic-pbx), for the audit tests;
# taken from the archive, so a cached build gets them too.
configs() {
    if [ ! -d "$prefix/share/configs/samples" ]; then
        local tmp
        tmp=$(mktemp -d "$cache_root/.configs-XXXXXX")
        tar -xzf "$ast_tar" -C "$tmp" --wildcards '*/configs/*'
        rm -rf "$prefix/share/configs"
        mkdir -p "$prefix/share"
        mv "$tmp"/asterisk-*/configs "$prefix/share/configs"
        rm -rf "$tmp"
    fi
}

if [ -x "$prefix/sbin/asterisk" ] && [ -f "$prefix/.complete" ]; then
    configs
    echo "$prefix"
    exit 0
fi

deps=(build-essential libedit-dev libjansson-dev libxml2-dev libsqlite3-dev uuid-dev
      libsrtp2-dev libcurl4-openssl-dev libssl-dev pkg-config bzip2 patch wget)
missing=()
for d in "${deps[@]}"; do
    dpkg-query -W -f='${Status}' "$d" 2>/dev/null | grep -q "install ok installed" || missing+=("$d")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "build.sh: installing build dependencies: ${missing[*]}" >&2
    sudo_cmd=()
    [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
    "${sudo_cmd[@]}" apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

mkdir -p "$cache_root"
# One build at a time per machine; a second caller waits and then finds the finished tree.
exec 9>"$cache_root/.asterisk-build.lock"
flock 9
if [ -x "$prefix/sbin/asterisk" ] && [ -f "$prefix/.complete" ]; then
    configs
    echo "$prefix"
    exit 0
fi

work=$(mktemp -d "$cache_root/.build-XXXXXX")
trap 'rm -rf "$work"' EXIT
echo "build.sh: building Asterisk from $(basename "$ast_tar") into $prefix (about 7 minutes on 2 cores)" >&2
externals="$work/externals"
mkdir -p "$externals"
cp "$pj_tar" "$externals/"
tar -xzf "$ast_tar" -C "$work"
tree=("$work"/asterisk-*/)
cd "${tree[0]}"
rm -rf "$prefix"
{
    ./configure --prefix="$prefix" --with-externals-cache="$externals" "${configure_flags[@]}"
    make menuselect.makeopts
    menuselect/menuselect "${menuselect_flags[@]}" menuselect.makeopts
    make -j"$(nproc)"
    make install
} >"$work/build.log" 2>&1 || {
    echo "build.sh: Asterisk build failed; the last lines of its log:" >&2
    tail -n 60 "$work/build.log" >&2
    rm -rf "$prefix"
    exit 1
}
"$prefix/sbin/asterisk" -V >&2
configs
touch "$prefix/.complete"
echo "$prefix"
