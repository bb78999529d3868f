#!/usr/bin/env bash
# Builds the Debian package: TARGET/debian/pbxguard_VERSION-REVISION_ARCH.deb
# (TARGET is $CARGO_TARGET_DIR, default ./target).
#
#   packaging/build-deb.sh                      release build + man pages + completions + .deb
#   packaging/build-deb.sh --no-build           reuse the existing release binary
#   packaging/build-deb.sh --no-build --deb-revision 2   (other arguments go to cargo-deb)
#   packaging/build-deb.sh --lintian            also run lintian --fail-on error,warning
#
# Needs cargo-deb (installed here at the pinned version if missing) and, for --lintian, the
# Debian packages lintian and man-db.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_DEB_VERSION=3.8.0

build=1
lint=0
args=()
for arg in "$@"; do
    case $arg in
        --no-build) build=0 ;;
        --lintian) lint=1 ;;
        *) args+=("$arg") ;;
    esac
done

target=${CARGO_TARGET_DIR:-target}
case $target in /*) ;; *) target=$PWD/$target ;; esac

if ! cargo deb --version 2>/dev/null | grep -qF "$CARGO_DEB_VERSION"; then
    echo "== cargo install cargo-deb $CARGO_DEB_VERSION"
    # Its own target folder under ours, so the project's build cache is left alone.
    CARGO_TARGET_DIR=$target/cargo-deb-build \
        cargo install --quiet --locked cargo-deb --version "=$CARGO_DEB_VERSION"
fi

# DEB_PROFILE=dev packages the debug build instead (the CI lifecycle test does, to stay
# within its time budget: the dependencies are already built for the tests).
profile=${DEB_PROFILE:-release}
case $profile in dev) dir=debug ;; *) dir=$profile ;; esac
if [ "$build" = 1 ]; then
    echo "== cargo build --profile $profile"
    cargo build --profile "$profile" --locked
fi
bin=$target/$dir/pbxguard
[ -x "$bin" ] || { echo "build-deb: $bin is missing (build first, or drop --no-build)" >&2; exit 1; }

# Man pages and completions come from the binary's own clap definitions. The asset paths in Cargo.toml say target/release/...; cargo-deb maps them to
# $CARGO_TARGET_DIR.
assets=$target/$dir/pbxguard-assets
rm -rf "$assets"
mkdir -p "$assets/completions"
"$bin" man --dir "$assets/man"
gzip -9n "$assets"/man/*.8
"$bin" completions bash > "$assets/completions/pbxguard"
"$bin" completions zsh > "$assets/completions/_pbxguard"
"$bin" completions fish > "$assets/completions/pbxguard.fish"

echo "== cargo deb"
deb=$(cargo deb --no-build --locked --profile "$profile" "${args[@]}" | tail -n 1)
echo "$deb"

if [ "$lint" = 1 ]; then
    echo "== lintian"
    lintian --fail-on error,warning --info "$deb"
fi
