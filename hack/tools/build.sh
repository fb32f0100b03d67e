#!/usr/bin/env bash
# Build the Go tools pinned by a wrapper module in hack/tools/<tool>/ into a versioned cache dir.
#
# Usage: build.sh <tool>          build (a no-op when the stamp matches)
#        build.sh --dir <tool>    print the install directory only
# Reads hack/tools/<tool>/build.env for VERSION, PACKAGES (import paths, "pkg=name" to rename the
# binary), optional LDFLAGS, TAGS and CGO. Installs into $CACHE_DIR/bin/<tool>-<VERSION>/ and writes a
# stamp holding a hash of the wrapper files, so a later run is a no-op unless the pins changed.
set -euo pipefail

print_dir=false
if [[ ${1:-} == --dir ]]; then
  print_dir=true
  shift
fi
tool=${1:?usage: build.sh [--dir] <tool>}
here=$(cd "$(dirname "$0")" && pwd)
dir=$here/$tool
CACHE_DIR=${CACHE_DIR:-$HOME/.cache/moorage}

# shellcheck source=/dev/null
. "$dir/build.env"
: "${VERSION:?build.env must set VERSION}" "${PACKAGES:?build.env must set PACKAGES}"

out=$CACHE_DIR/bin/$tool-$VERSION
if $print_dir; then
  echo "$out"
  exit 0
fi
stamp=$out/.stamp
want=$(cat "$dir/go.mod" "$dir/go.sum" "$dir/build.env" "$here/build.sh" | sha256sum | cut -d' ' -f1)
if [[ -f $stamp && $(cat "$stamp") == "$want" ]]; then
  exit 0
fi

mkdir -p "$out" "$CACHE_DIR/logs"
start=$(date +%s)
# The wrapper's go.sum pins every dependency; -mod=mod would let the build rewrite it.
export GOFLAGS="-mod=readonly -buildvcs=false" CGO_ENABLED=${CGO:-0}
cd "$dir"
for spec in $PACKAGES; do
  pkg=${spec%%=*}
  name=${spec#*=}
  [[ $name == "$spec" ]] && name=${pkg##*/}
  echo "build.sh: $tool: go build $pkg -> $out/$name" >&2
  go build -trimpath -tags "${TAGS:-}" -ldflags "-s -w ${LDFLAGS:-}" -o "$out/$name.tmp" "$pkg"
  mv "$out/$name.tmp" "$out/$name"
done
echo "$want" >"$stamp"
secs=$(($(date +%s) - start))
echo "$(date -u +%FT%TZ) $tool $VERSION built in ${secs}s" | tee -a "$CACHE_DIR/logs/build-times.log" >&2
