#!/usr/bin/env bash
# Build the Go tools pinned by a wrapper module in hack/tools/<tool>/ into a versioned cache dir.
#
# Usage: build.sh <tool>          build (a no-op when the stamp matches)
#        build.sh --dir <tool>    print the install directory only
# Reads hack/tools/<tool>/build.env for VERSION, PACKAGES (main packages; each binary is named
# after the last element of its import path), optional LDFLAGS, TAGS and CGO. Installs into $CACHE_DIR/bin/<tool>-<VERSION>/ and writes a
# stamp holding a hash of the wrapper files, so a later run is a no-op unless the pins changed.
# Concurrent runs for one tool (make test and a fixture, two helpers) serialise on a lock.
set -euo pipefail

# Everything runs inside main, and exit follows it on the same line, so that editing this file
# cannot disturb a build in progress.
main() {
  local print_dir=false
  if [[ ${1:-} == --dir ]]; then
    print_dir=true
    shift
  fi
  local tool=${1:?usage: build.sh [--dir] <tool>}
  local here dir
  here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
  dir=$here/$tool
  CACHE_DIR=${CACHE_DIR:-$HOME/.cache/moorage}

  # shellcheck source=/dev/null
  . "$dir/build.env"
  : "${VERSION:?build.env must set VERSION}" "${PACKAGES:?build.env must set PACKAGES}"

  local out=$CACHE_DIR/bin/$tool-$VERSION
  if $print_dir; then
    echo "$out"
    return 0
  fi
  local stamp=$out/.stamp want
  want=$(cat "$dir/go.mod" "$dir/go.sum" "$dir/build.env" | sha256sum | cut -d' ' -f1)
  [[ -f $stamp && $(cat "$stamp") == "$want" ]] && return 0

  if ! command -v go >/dev/null; then
    echo "build.sh: the Go toolchain (1.26 or newer) is needed to build $tool" >&2
    return 1
  fi
  mkdir -p "$out" "$CACHE_DIR/logs"
  exec 9>"$out.lock"
  flock 9
  # Another run may have finished the build while this one waited for the lock.
  [[ -f $stamp && $(cat "$stamp") == "$want" ]] && return 0

  local start tmp
  start=$(date +%s)
  tmp=$(mktemp -d "$out.tmp.XXXXXX")
  # The wrapper's go.sum pins every dependency; -mod=mod would let the build rewrite it.
  export GOFLAGS="-mod=readonly -buildvcs=false" CGO_ENABLED=${CGO:-0}
  cd "$dir"
  echo "build.sh: $tool $VERSION: go build $PACKAGES -> $out/" >&2
  # One invocation for all of a tool's commands: shared packages compile once and the links
  # (the slow part for kube-*) run in parallel. Each binary is named after its package.
  # shellcheck disable=SC2086
  go build -trimpath -tags "${TAGS:-}" -ldflags "-s -w ${LDFLAGS:-}" -o "$tmp/" $PACKAGES
  mv -f "$tmp"/* "$out/"
  rmdir "$tmp"
  echo "$want" >"$stamp"
  echo "$(date -u +%FT%TZ) $tool $VERSION built in $(($(date +%s) - start))s" |
    tee -a "$CACHE_DIR/logs/build-times.log" >&2
}

main "$@"; exit
