#!/usr/bin/env bash
# The local Kubernetes cluster for tests and demos: `kwokctl --runtime binary` running etcd,
# kube-apiserver, kube-controller-manager, kube-scheduler and the kwok controller (two fake nodes,
# tainted), plus one real node (node.sh: containerd, kubelet, kube-proxy, CoreDNS, metrics-server)
# on which the project's images really run. Every binary is built from its Go module by
# hack/tools/build.sh; containerd, runc and the CNI plugins are Debian's.
#
# Usage: cluster.sh tools        build every pinned tool (a no-op when cached) and link bin/
#        cluster.sh up           create or restart the cluster and wait until it is usable
#        cluster.sh down         delete the cluster and make sure none of its processes survive
#        cluster.sh kubeconfig   print the kubeconfig path (fails if there is no cluster)
#        cluster.sh paths        print bin_dir=... and kubeconfig=... (for the pytest fixture)
#        cluster.sh node ARGS    run node.sh for this cluster (host-state, load IMAGE)
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
  for t in kubernetes etcd kwok coredns metrics-server crictl kind skaffold; do
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

node_sh() { CLUSTER_DIR=$cluster_dir "$here/node.sh" "$@"; }

# The address of the interface of the default route: the real node's InternalIP.
node_ip() {
  local dev
  dev=$(ip -o -4 route show default | awk '{for (i = 1; i < NF; i++) if ($i == "dev") {print $(i + 1); exit}}')
  ip -o -4 addr show dev "$dev" | awk '{split($4, a, "/"); print a[1]; exit}'
}

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
    # The real node: pods reach the API server at the node's address (the kubernetes Service's
    # endpoint), and the API server reaches the kubelet with a client certificate the kubelet's
    # webhook authentication accepts. Same CA and admin certificate kwokctl made for the rest.
    local ip pki=$cluster_dir/pki
    ip=$(node_ip)
    cat <<EOF
componentsPatches:
  - name: kube-apiserver
    extraArgs:
      - {key: bind-address, value: 0.0.0.0, override: true}
      - {key: advertise-address, value: "$ip"}
      - {key: service-cluster-ip-range, value: 10.96.0.0/16}
      - {key: kubelet-client-certificate, value: "$pki/admin.crt"}
      - {key: kubelet-client-key, value: "$pki/admin.key"}
      - {key: kubelet-preferred-address-types, value: InternalIP}
      - {key: enable-aggregator-routing, value: "true"}
      # Namespaces of kwok-tier tests place their pods on the (tainted) kwok nodes by annotation.
      - {key: enable-admission-plugins, value: "PodNodeSelector,PodTolerationRestriction"}
  - name: kube-controller-manager
    extraArgs:
      # Each controller with its own ServiceAccount: with the shared identity the Deployment
      # controller's writes were forbidden on a real node.
      - {key: use-service-account-credentials, value: "true"}
      - {key: service-cluster-ip-range, value: 10.96.0.0/16}
      # Its FlexVolume prober makes (and, when removed, remakes) this directory; the default is
      # /usr/libexec/kubernetes on the host, which cluster-down must leave as it found it.
      - {key: flex-volume-plugin-dir, value: "$cluster_dir/flex-volume-plugins"}
      # The client's default 20 requests/s made 200 plain Deployments take 48 s each to become
      # available (~10 requests per Deployment); every e2e install waited on it too.
      - {key: kube-api-qps, value: "100"}
      - {key: kube-api-burst, value: "200"}
  - name: kube-scheduler
    extraArgs:
      # One binding per pod: at the default 50 requests/s a 200-pod burst needs 4 s of bindings.
      - {key: kube-api-qps, value: "100"}
      - {key: kube-api-burst, value: "200"}
  - name: kwok-controller
    extraArgs:
      # Only the fake nodes: by default kwok also fakes the real node's pods (IPs, Ready).
      - {key: manage-all-nodes, value: "false", override: true}
      - {key: manage-nodes-with-annotation-selector, value: kwok.x-k8s.io/node=fake}
EOF
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
  build_tools kubernetes etcd kwok coredns metrics-server
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
  node_sh up
  wait_for "3 Ready nodes" kubectl wait --for=condition=Ready node --all --timeout=5s
  # Pods need the namespace's default ServiceAccount, made by kube-controller-manager.
  wait_for "the default ServiceAccount" kubectl get serviceaccount default -n default
  log "cluster $CLUSTER_NAME is up; KUBECONFIG=$kubeconfig"
}

cmd_down() {
  [[ -d $cluster_dir ]] || return 0
  local pids pid
  pids=$(pids_of_cluster)
  # The node first, while the API server still answers; it puts the host back as it found it.
  local node_ok=0
  node_sh down || node_ok=$?
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
  if ((node_ok != 0)); then
    log "the real node's clean-up left the host changed (see above)"
    return 1
  fi
}

main() {
  case ${1:-} in
  tools) build_tools kubernetes etcd kwok coredns metrics-server crictl helm4 helm3 kind skaffold ;;
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
  node)
    shift
    node_sh "$@"
    ;;
  paths) printf 'bin_dir=%s\nkubeconfig=%s\n' "$bin_dir" "$kubeconfig" ;;
  *)
    sed -n '9,14p' "$0" >&2
    exit 2
    ;;
  esac
}

# main parses whole before it runs and exit stops bash reading on, so edits cannot hit a run.
main "$@"; exit
