#!/bin/sh
# `make deb`: build dist/whisperd_<version>_amd64.deb on Debian 12.
#
# Installs the build tools when missing (apt-get), copies the sources into build/deb/, runs
# dpkg-buildpackage there (debian/rules builds the venv with packaging/build-venv.sh) and moves
# the .deb to dist/. An unchanged source tree reuses the last .deb (FORCE=1 rebuilds).
#
# Environment: COMPRESS=gzip|zstd|xz (default gzip: quick and lintian-clean; xz for releases,
# slow but 25% smaller), LOCK=path (default packaging/requirements.lock), FORCE=1.
set -eu
cd "$(dirname "$0")/.."
COMPRESS=${COMPRESS:-gzip}
LOCK=$(realpath "${LOCK:-packaging/requirements.lock}")
FORCE=${FORCE:-0}
log() { echo "build-deb: $*"; }

sh scripts/apt-ensure.sh debhelper dpkg-dev python3.11-venv ffmpeg

upstream=$(sed -n 's/^__version__ = "\(.*\)"/\1/p' whisperd/__init__.py)
debver=$(dpkg-parsechangelog -l packaging/debian/changelog -S Version)
if [ "${debver%-*}" != "$upstream" ]; then
    debver="$upstream-1"
    log "packaging/debian/changelog is at ${debver%-*}, whisperd at $upstream: building $debver with a generated entry"
fi
deb="dist/whisperd_${debver}_amd64.deb"

# What goes into the package; README.md and docs/ are left out of the hash so doc edits do not cost a rebuild.
stamp=$( { echo "$COMPRESS"; sha256sum "$LOCK";
           find whisperd packaging etc setup.py pyproject.toml -type f ! -path '*/__pycache__/*' \
               ! -name '*.pyc' -print0 | sort -z | xargs -0 sha256sum; } | sha256sum | cut -d' ' -f1)
if [ "$FORCE" != 1 ] && [ -f "$deb" ] && [ "$(cat dist/.whisperd-deb.stamp 2>/dev/null)" = "$stamp" ]; then
    log "$deb is up to date (FORCE=1 rebuilds)"
    exit 0
fi

start=$(date +%s)
build="build/deb"
src="$build/whisperd-$upstream"
rm -rf "$build" && mkdir -p "$src/tests/data" dist
cp -a whisperd setup.py pyproject.toml README.md docs "$src/"
mkdir -p "$src/etc" && cp etc/whisperd.toml "$src/etc/"
cp -a packaging "$src/" && cp -a packaging/debian "$src/debian"
cp tests/data/fixture-model.pt tests/data/jfk.flac "$src/tests/data/"
find "$src" -depth -type d \( -name __pycache__ -o -name '*.egg-info' \) -exec rm -rf {} +
if [ "$(dpkg-parsechangelog -l "$src/debian/changelog" -S Version)" != "$debver" ]; then
    { printf 'whisperd (%s) bookworm; urgency=medium\n\n  * New upstream version %s.\n\n -- %s  %s\n\n' \
        "$debver" "$upstream" "$(dpkg-parsechangelog -l packaging/debian/changelog -S Maintainer)" "$(date -R)"
      cat packaging/debian/changelog; } > "$src/debian/changelog"
fi

log "building $deb (compression $COMPRESS)"
(cd "$src" && COMPRESS="$COMPRESS" LOCK="$LOCK" dpkg-buildpackage -b -us -uc --no-sign)
mv "$build/whisperd_${debver}_amd64.deb" "$deb"
echo "$stamp" > dist/.whisperd-deb.stamp
log "built $deb in $(( $(date +%s) - start )) s: $(du -h "$deb" | cut -f1), installed size $(dpkg-deb -f "$deb" Installed-Size) KiB"
