#!/usr/bin/env bash
# Run the pinned skaffold against the local cluster (make cluster-up): `make dev`, `make dev-run`
# and `make dev-delete` call this. skaffold's local builder asks a Docker API for the image it
# built; there is no Docker engine here, so Debian's podman serves that API over a socket in the
# cache, on the same storage buildah builds into. The build itself is buildah's (hack/dev/build.sh,
# profile `local`), which also loads the image into the real node. podman is stopped by pid when
# skaffold ends; SIGINT/SIGTERM are forwarded to skaffold, so `skaffold dev` cleans up its deployment.
#
# usage: skaffold.sh dev|run|delete|diagnose|build [skaffold flags...]
# Environment: CACHE_DIR, BUILDAH_FLAGS (both exported by the Makefile).
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
CACHE_DIR=${CACHE_DIR:-$HOME/.cache/moorage}
read -r -a bflags <<<"${BUILDAH_FLAGS:?run through make (make dev / dev-run / dev-delete)}"
bin_dir=$("$root/hack/cluster/cluster.sh" paths | sed -n 's/^bin_dir=//p')
kubeconfig=$("$root/hack/cluster/cluster.sh" kubeconfig)
run=$(mktemp -d "${TMPDIR:-/tmp}/moorage-skaffold.XXXXXX")
podman_pid= skaffold_pid=

stop() {
  [[ -n $podman_pid ]] && kill "$podman_pid" 2>/dev/null && wait "$podman_pid" 2>/dev/null
  rm -rf "$run"
}
trap stop EXIT
forward() { [[ -n $skaffold_pid ]] && kill -s "$1" "$skaffold_pid" 2>/dev/null; }
trap 'forward INT' INT
trap 'forward TERM' TERM

# podman reads the same containers/storage flags buildah uses (--root, --runroot, --storage-driver).
podman "${bflags[@]}" --events-backend file --cgroup-manager cgroupfs \
  system service --time 0 "unix://$run/docker.sock" >"$run/podman.log" 2>&1 &
podman_pid=$!
for _ in $(seq 100); do [[ -S $run/docker.sock ]] && break; sleep 0.1; done
[[ -S $run/docker.sock ]] || { cat "$run/podman.log" >&2; echo "skaffold.sh: podman's API did not start" >&2; exit 1; }
echo "skaffold.sh: Docker API for skaffold: unix://$run/docker.sock (podman pid $podman_pid)"

export DOCKER_HOST=unix://$run/docker.sock KUBECONFIG=$kubeconfig
export SKAFFOLD_UPDATE_CHECK=false SKAFFOLD_INTERACTIVE=false SKAFFOLD_COLLECT_METRICS=false
# skaffold v2.16 asks `helm version --client`, which only helm v3 answers: v3 first on PATH.
helm3_dir=$(mktemp -d "$run/helm3.XXXXXX")
ln -s "$bin_dir/helm3" "$helm3_dir/helm"
export PATH=$helm3_dir:$bin_dir:$PATH

cd "$root"
# --no-prune: the images stay in buildah's storage for the next build's layer cache.
args=("$@" --profile local)
# --cache-artifacts=false: a hit in skaffold's artifact cache (~/.skaffold/cache) skips the
# build command, and with it build.sh's load into the node; a new cluster's node then lacks
# the image and the deploy waits for a pod that cannot start. buildah's layer cache keeps the
# rebuild short.
case ${1:-} in dev | run) args+=(--no-prune=true --cache-artifacts=false) ;; esac
# skaffold in its own session, so a Ctrl-C reaches it exactly once (forwarded by the trap above)
# and it removes what it deployed before it exits.
setsid "$bin_dir/skaffold" "${args[@]}" &
skaffold_pid=$!
status=0
# wait returns early when a trapped signal arrives; keep waiting until skaffold itself exits.
while kill -0 "$skaffold_pid" 2>/dev/null; do wait "$skaffold_pid" && status=0 || status=$?; done
# skaffold deletes the operator's namespace (dev on exit, delete) without waiting for it to go;
# a deploy right after (`make dev` after `make dev-delete`) met it terminating and was refused.
case ${1:-} in dev | delete)
  "$bin_dir/kubectl" wait --for=delete namespace/moorage-system --timeout=180s >/dev/null 2>&1 ||
    echo "skaffold.sh: namespace moorage-system is still terminating" >&2 ;;
esac
exit "$status"
