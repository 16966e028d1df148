#!/bin/sh
# apt-ensure.sh PACKAGE...: apt-get install the Debian packages that are not installed yet.
# Shared by the set-up and the .deb build; uses sudo when not root.
set -eu
[ "$(id -u)" = 0 ] && SUDO="" || SUDO="sudo"
missing=""
for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    echo "apt-ensure: installing$missing"
    $SUDO apt-get update -qq
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
