#!/usr/bin/env bash
# Build the hushgate image with Debian's podman, with no image registry:
#   1. a Debian trixie base (Python 3.13, tini) made by mmdebstrap, `podman import`ed;
#   2. the wheels of hushgate and its dependencies, made here with a Python 3.13 pip;
#   3. `podman build` of the Dockerfile on a clean copy of the sources plus those wheels.
#
#   deploy/container/build-image.sh [TAG]     (default localhost/hushgate:dev)
#
# Environment: HUSHGATE_BASE_IMAGE (default localhost/hushgate-base:trixie), DEBIAN_MIRROR,
# PYTHON313 (a Python 3.13 to make the wheels with), PODMAN_ARGS (extra `podman` options).
# On hosts where podman's defaults don't run (see podman-env.sh), source podman-env.sh first.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
tag=${1:-localhost/hushgate:dev}
base=${HUSHGATE_BASE_IMAGE:-localhost/hushgate-base:trixie}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
# shellcheck source=deploy/container/podman-env.sh
. "$here/podman-env.sh"

work=$(mktemp -d "${TMPDIR:-/var/tmp}/hushgate-image.XXXXXX")
trap 'rm -rf "$work"' EXIT

if ! podman image exists "$base"; then
  echo "building the base image $base with mmdebstrap (Debian trixie)" >&2
  mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,ca-certificates,tini \
    --format=tar trixie "$work/base.tar" "$mirror"
  podman import --quiet "$work/base.tar" "$base" >/dev/null
  rm -f "$work/base.tar"
fi

py=${PYTHON313:-}
if [ -z "$py" ]; then
  for cand in python3.13 "env PYENV_VERSION=$(pyenv versions --bare 2>/dev/null | grep -E '^3\.13\.[0-9]+$' | sort -V | tail -1) python3"; do
    if $cand -c 'import sys; sys.exit(sys.version_info[:2] != (3, 13))' 2>/dev/null; then py=$cand; break; fi
  done
fi
[ -n "$py" ] || { echo "build-image.sh: needs a Python 3.13 (set PYTHON313) to make the wheels" >&2; exit 1; }

ctx="$work/context"
mkdir -p "$ctx/deploy"
cp -r "$repo/setup.cfg" "$repo/pyproject.toml" "$repo/README.md" "$repo/control" \
  "$repo/proxy_addons" "$repo/schemas" "$repo/Dockerfile" "$repo/.dockerignore" "$ctx/"
cp -r "$repo/deploy/container" "$ctx/deploy/"
find "$ctx" -name __pycache__ -prune -exec rm -rf {} +
echo "making wheels with $($py --version)" >&2
$py -m pip wheel --quiet --disable-pip-version-check -w "$ctx/deploy/container/wheels" "$ctx" \
  2> >(grep -v "^WARNING: Location" >&2)

echo "building $tag" >&2
podman build --quiet --format docker --network host --build-arg "BASE=$base" -t "$tag" "$ctx" >/dev/null
echo "$tag"
