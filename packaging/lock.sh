#!/bin/sh
# Regenerate the pinned dependency list of the Debian package from setup.py: resolve once in a
# throwaway venv with Debian's python3.11, freeze, and keep what the flavour needs.
#
#   packaging/lock.sh                  # CPU -> packaging/requirements.lock (no triton, no nvidia-*)
#   FLAVOUR=cuda packaging/lock.sh     # CUDA -> packaging/requirements-cuda.lock (torch's CUDA wheels)
#
# TORCH_VERSION (default 2.13.0) pins torch. On a machine without the local CPU wheel, point pip
# at PyTorch's index: TORCH_INDEX=https://download.pytorch.org/whl/cpu (or .../whl/cu128 for CUDA).
set -eu
cd "$(dirname "$0")/.."
FLAVOUR=${FLAVOUR:-cpu}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
TORCH_INDEX=${TORCH_INDEX:-}
case "$FLAVOUR" in
    cpu) out=packaging/requirements.lock; extras="metrics,api,diarize"; drop='^(triton|nvidia-[a-z0-9-]*)==' ;;
    cuda) out=packaging/requirements-cuda.lock; extras="metrics,api,gpu,diarize"; drop='^$' ;;
    *) echo "lock.sh: FLAVOUR is cpu or cuda" >&2; exit 2 ;;
esac
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
/usr/bin/python3.11 -m venv "$tmp/venv"
pip() { "$tmp/venv/bin/python" -m pip --disable-pip-version-check -q "$@"; }
index=""
[ -n "$TORCH_INDEX" ] && index="--extra-index-url $TORCH_INDEX"
# torch first, alone, so the resolver keeps the local/indexed build instead of fetching another.
pip install $index "torch==$TORCH_VERSION"
pip install $index ".[$extras]"
{
    sed -n '1,/^[^#]/p' "$out" 2>/dev/null | grep '^#' || echo "# Runtime dependencies of the whisperd Debian package ($FLAVOUR flavour); see packaging/lock.sh."
    pip freeze --all | grep -v -i -E '^(whisperd|pip|wheel) ?[=@]' | grep -v -i -E "$drop" | LC_ALL=C sort -f
} > "$tmp/lock"
mv "$tmp/lock" "$out"
echo "lock.sh: wrote $out ($(grep -c '^[A-Za-z]' "$out") distributions)"
