#!/usr/bin/env bash
# skaffold's custom build command for the local cluster (profile `local` in skaffold.yaml).
# skaffold passes the reference to produce in $IMAGE ($IMAGE_REPO:$IMAGE_TAG); this builds that
# Dockerfile target with buildah exactly as `make image` does, then imports it into the real
# node's containerd under both names skaffold may deploy: $IMAGE and $IMAGE_REPO:<image id>
# (with push: false skaffold re-tags a local image by its id and deploys that tag).
#
# usage (from skaffold): build.sh service|operator
set -euo pipefail

target=${1:?usage: build.sh service|operator}
root=$(cd "$(dirname "$0")/../.." && pwd)
: "${IMAGE:?skaffold sets IMAGE}" "${IMAGE_REPO:?}" "${IMAGE_TAG:?}"

case $target in
  service) make -C "$root" --no-print-directory image-service SERVICE_IMAGE="$IMAGE_REPO" IMAGE_TAG="$IMAGE_TAG" ;;
  operator) make -C "$root" --no-print-directory image-operator OPERATOR_IMAGE="$IMAGE_REPO" IMAGE_TAG="$IMAGE_TAG" ;;
  *) echo "build.sh: unknown target '$target' (service or operator)" >&2; exit 2 ;;
esac

read -r -a bflags <<<"${BUILDAH_FLAGS:?make exports BUILDAH_FLAGS; run skaffold through hack/dev/skaffold.sh}"
id=$(buildah "${bflags[@]}" inspect --type image --format '{{.FromImageID}}' "$IMAGE")
"$root/hack/cluster/cluster.sh" node load "$IMAGE" "$IMAGE_REPO:${id#sha256:}"
