#!/usr/bin/env bash
# The local Kubernetes control plane for tests and demos: `kwokctl --runtime binary` running
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler and the kwok controller (two fake
# nodes), every binary built from its Go module by hack/tools/build.sh.
#
# Usage: cluster.sh tools        build every pinned tool (a no-op when cached) and link bin/
#        cluster.sh up           create or restart the cluster and wait until it is usable
#        cluster.sh down         delete the cluster and make sure none of its processes survive
#        cluster.sh kubeconfig   print the kubeconfig path (fails if there is no cluster)
#        cluster.sh paths        print bin_dir=... and kubeconfig=... (for the pytest fixture)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
build=$root/hack/tools/build.sh
export CACHE_DIR=${CACHE_DIR:-$HOME/.cache/moorage}
CLUSTER_NAME=${CLUSTER_NAME:-moorage}
# kwokctl keeps clusters under $KWOK_WORKDIR; keep ours in the cache, away from ~/.kwok.
export KWOK_WORKDIR=${KWOK_WORKDIR:-$CACHE_DIR/kwok}
cluster_dir=$KWOK_WORKDIR/clusters/$CLUSTER_NAME
kubeconfig=$cluster_dir/kubeconfig.yaml
# One directory with every tool under its usual name (helm is v4, helm3 is v3), for PATH.
bin_dir=$CACHE_DIR/bin/current
READY_TIMEOUT=${READY_TIMEOUT:-180}

log() { echo "cluster.sh: $*" >&2; }

tool_dir() { "$build" --dir "$1"; }

link_tools() {
  mkdir -p "$bin_dir"
  local t d f
  for t in kubernetes etcd kwok kind skaffold; do
    d=$(tool_dir "$t")
    for f in "$d"/*; do
      [[ -x $f && ! -d $f ]] && ln -sfn "$f" "$bin_dir/$(basename "$f")"
    done
  done
  d=$(tool_dir helm4)
  [[ -x $d/helm ]] && ln -sfn "$d/helm" "$bin_dir/helm"
  d=$(tool_dir helm3)
  [[ -x $d/helm ]] && ln -sfn "$d/helm" "$bin_dir/helm3"
  return 0
}

build_tools() {
  local t
  for t in "$@"; do
    "$build" "$t"
  done
  link_tools
}

# 8>&-: the components kwokctl starts outlive it and must not inherit the cluster lock.
kwokctl() { "$(tool_dir kwok)/kwokctl" --name "$CLUSTER_NAME" "$@" 8>&-; }

kubectl() { "$(tool_dir kubernetes)/kubectl" --kubeconfig "$kubeconfig" "$@"; }

# The static options plus the absolute paths of our builds: with every binary given, kwokctl
# copies local files and never downloads anything.
write_config() {
  local k8s etcd kwok config=$KWOK_WORKDIR/$CLUSTER_NAME-kwokctl.yaml
  k8s=$(tool_dir kubernetes)
  etcd=$(tool_dir etcd)
  kwok=$(tool_dir kwok)
  mkdir -p "$KWOK_WORKDIR"
  {
    cat "$here/kwokctl.yaml"
    echo "  kubeApiserverBinary: $k8s/kube-apiserver"
    echo "  kubeControllerManagerBinary: $k8s/kube-controller-manager"
    echo "  kubeSchedulerBinary: $k8s/kube-scheduler"
    echo "  kubectlBinary: $k8s/kubectl"
    echo "  etcdBinary: $etcd/etcd"
    echo "  kwokControllerBinary: $kwok/kwok"
  } >"$config"
  echo "$config"
}

api_ready() {
  [[ -f $kubeconfig ]] && kubectl get --raw /readyz --request-timeout=5s >/dev/null 2>&1
}

wait_for() {
  local what=$1 deadline=$((SECONDS + READY_TIMEOUT))
  shift
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS > deadline)); then
      log "timed out after ${READY_TIMEOUT}s waiting for $what"
      return 1
    fi
    sleep 1
  done
}

# One pid per file, without a trailing newline.
pids_of_cluster() {
  local f
  for f in "$cluster_dir"/pids/*.pid; do
    [[ -f $f ]] && echo "$(<"$f")"
  done
  return 0
}

cmd_up() {
  build_tools kubernetes etcd kwok
  local config
  config=$(write_config)
  if api_ready; then
    log "cluster $CLUSTER_NAME already running"
  elif [[ -d $cluster_dir ]] && kwokctl start cluster >&2 && wait_for "the API server" api_ready; then
    log "cluster $CLUSTER_NAME restarted"
  else
    [[ -d $cluster_dir ]] && cmd_down
    log "creating cluster $CLUSTER_NAME"
    # --kubeconfig "": leave ~/.kube/config alone; the cluster has its own kubeconfig.
    if ! kwokctl --config "$config" create cluster --kubeconfig "" --wait "${READY_TIMEOUT}s" >&2; then
      log "create failed; removing the half-made cluster"
      cmd_down
      return 1
    fi
    wait_for "the API server" api_ready
  fi
  kubectl apply -f "$here/nodes.yaml" >&2
  wait_for "2 Ready nodes" kubectl wait --for=condition=Ready node --all --timeout=5s
  # Pods need the namespace's default ServiceAccount, made by kube-controller-manager.
  wait_for "the default ServiceAccount" kubectl get serviceaccount default -n default
  log "cluster $CLUSTER_NAME is up; KUBECONFIG=$kubeconfig"
}

cmd_down() {
  [[ -d $cluster_dir ]] || return 0
  local pids pid
  pids=$(pids_of_cluster)
  kwokctl delete cluster >&2 || log "kwokctl delete failed; stopping processes directly"
  # kwokctl detaches the components; make sure none outlived the delete.
  for pid in $pids; do
    if kill -0 "$pid" 2>/dev/null; then
      kill "$pid" 2>/dev/null || true
      for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
      kill -9 "$pid" 2>/dev/null || true
    fi
  done
  rm -rf "$cluster_dir"
}

main() {
  case ${1:-} in
  tools) build_tools kubernetes etcd kwok helm4 helm3 kind skaffold ;;
  up | down)
    # Two pytest sessions (or make and a session) must not create or delete at the same time.
    mkdir -p "$KWOK_WORKDIR"
    exec 8>"$KWOK_WORKDIR/$CLUSTER_NAME.lock"
    flock -w 600 8 || { log "another cluster.sh up/down holds $KWOK_WORKDIR/$CLUSTER_NAME.lock"; exit 1; }
    "cmd_$1"
    ;;
  kubeconfig)
    if [[ ! -f $kubeconfig ]]; then
      log "no cluster $CLUSTER_NAME (run make cluster-up)"
      exit 1
    fi
    echo "$kubeconfig"
    ;;
  paths) printf 'bin_dir=%s\nkubeconfig=%s\n' "$bin_dir" "$kubeconfig" ;;
  *)
    sed -n '7,11p' "$0" >&2
    exit 2
    ;;
  esac
}

# main parses whole before it runs and exit stops bash reading on, so edits cannot hit a run.
main "$@"; exit
