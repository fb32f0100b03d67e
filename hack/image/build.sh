#!/usr/bin/env bash
# Build one Dockerfile target with buildah, unless the image already holds exactly these inputs.
# vfs storage copies whole layers, so even a fully cached build costs minutes; a hash of the
# build context (what .dockerignore lets in) plus the Dockerfile and flags decides instead.
#
# usage: build.sh TARGET IMAGE -- BUILD_FLAGS...   ($BUILDAH_FLAGS: buildah's global flags)
set -euo pipefail

target=$1 image=$2
shift 3
root=$(cd "$(dirname "$0")/../.." && pwd)
read -r -a buildah_flags <<<"${BUILDAH_FLAGS:-}"
buildah=(buildah "${buildah_flags[@]}")
cache=${CACHE_DIR:-$HOME/.cache/moorage}
stamp=$cache/image/$(echo "$image" | tr '/:' '__').inputs

inputs=$(
  cd "$root"
  {
    printf '%s\n' "$target" "$@"
    find Dockerfile .dockerignore pyproject.toml uv.lock service/pyproject.toml service/src \
      operator/pyproject.toml operator/src -type f ! -path '*/__pycache__/*' ! -name '*.pyc' \
      -print0 | sort -z | xargs -0 sha256sum
  } | sha256sum | cut -d' ' -f1
)

if [[ -f $stamp && $(cat "$stamp") == "$inputs" ]] \
  && "${buildah[@]}" inspect --type image "$image" >/dev/null 2>&1; then
  echo "$image is up to date (inputs $inputs)"
  exit 0
fi

mkdir -p "$(dirname "$stamp")"
"$root/hack/image/timed.sh" "$cache/logs/image-build-times.log" "$target" \
  "${buildah[@]}" bud "$@" --target "$target" -t "$image" -f "$root/Dockerfile" "$root"
echo "$inputs" >"$stamp"
