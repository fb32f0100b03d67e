#!/usr/bin/env bash
# Custom metrics for `inflight` HPAs on the local cluster: Prometheus (Debian's package) scraping
# the agent pods of the real node, and prometheus-adapter (built from hack/tools/prometheus-adapter)
# serving custom.metrics.k8s.io from it with the chart's own rule
# (charts/agent/files/prometheus-adapter.yaml). Both run as host processes, like metrics-server
# in hack/cluster/node.sh; the adapter is registered as an APIService behind a selector-less
# Service whose endpoint is the node, with a serving certificate of its own CA (caBundle).
#
# Usage: autoscale.sh up       start both (reuses running ones) and wait until the API serves
#        autoscale.sh down     unregister the API, stop both by pid, delete their files
#        autoscale.sh status   print what runs and whether the APIServices are Available
#        autoscale.sh url      print the Prometheus URL (for queries while it runs)
#        autoscale.sh discover (run by `up`) keep Prometheus's target file in step with the pods
#
# Discovery: Debian's Prometheus is built without kubernetes_sd (it refuses that config key), so
# a third host process, `autoscale.sh discover`, lists the real node's Running pods labelled
# app.kubernetes.io/name=agent through the API every DISCOVERY_INTERVAL seconds and writes them,
# at their container port named `http` with `namespace` and `pod` labels (what the adapter rule
# maps to resources), to a file_sd file that Prometheus watches. kwok pods are left out: nothing
# answers at their addresses.
#
# The caller holds the cluster lock if several users share the cluster. Environment: CACHE_DIR,
# CLUSTER_DIR (default: the kwokctl cluster `moorage` in the cache), PROMETHEUS_PORT, ADAPTER_PORT.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
build=$root/hack/tools/build.sh
CACHE_DIR=${CACHE_DIR:-$HOME/.cache/moorage}
cluster_dir=${CLUSTER_DIR:-$CACHE_DIR/kwok/clusters/moorage}
kubeconfig=$cluster_dir/kubeconfig.yaml
state=$CACHE_DIR/autoscale
NODE_NAME=${NODE_NAME:-moorage-node}
PROMETHEUS_PORT=${PROMETHEUS_PORT:-11090}
ADAPTER_PORT=${ADAPTER_PORT:-11445}
# Short on purpose: the HPA reacts within one sync (15 s) of the load, not a minute later.
SCRAPE_INTERVAL=${SCRAPE_INTERVAL:-2s}
DISCOVERY_INTERVAL=${DISCOVERY_INTERVAL:-2}
# The adapter re-lists metric names this often; a metric first seen after its start is served
# from the next list on (its default, 10 minutes, would hide a new release's pods that long).
RELIST_INTERVAL=${RELIST_INTERVAL:-10s}
NAMESPACE=kube-system
SERVICE=moorage-prometheus-adapter
MANAGED_BY=moorage-autoscale-sh
VERSIONS=(v1beta1 v1beta2)
RULES=$root/charts/agent/files/prometheus-adapter.yaml

log() { echo "autoscale.sh: $*" >&2; }
kubectl() { "$("$build" --dir kubernetes)/kubectl" --kubeconfig "$kubeconfig" "$@"; }

node_ip() {
  local dev
  dev=$(ip -o -4 route show default | awk '{for (i = 1; i < NF; i++) if ($i == "dev") {print $(i + 1); exit}}')
  ip -o -4 addr show dev "$dev" | awk '{split($4, a, "/"); print a[1]; exit}'
}

pidfile() { echo "$state/pids/$1.pid"; }

running() {
  local f
  f=$(pidfile "$1")
  [[ -f $f ]] && kill -0 "$(<"$f")" 2>/dev/null
}

# start NAME COMMAND...: in the background with its own log and pid file. Every inherited
# descriptor above 2 is closed first: `flock FILE make ...` passes its lock down, and a daemon
# holding it would keep the lock taken long after the caller's command ended.
start() {
  local name=$1
  shift
  running "$name" && return 0
  mkdir -p "$state/pids" "$state/logs"
  (
    for fd in /proc/$BASHPID/fd/*; do
      fd=${fd##*/}
      if ((fd > 2)); then eval "exec $fd>&-"; fi
    done
    exec setsid "$@" >>"$state/logs/$name.log" 2>&1 </dev/null
  ) &
  echo $! >"$(pidfile "$name")"
}

stop() {
  local f pid
  f=$(pidfile "$1")
  [[ -f $f ]] || return 0
  pid=$(<"$f")
  # Each process leads a process group of its own (setsid): the group goes, so the discovery
  # loop's child (its kubectl or sleep) goes with it.
  if kill -0 "$pid" 2>/dev/null; then
    kill -- "-$pid" 2>/dev/null || kill "$pid" 2>/dev/null || true
    for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -9 -- "-$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}

wait_for() {
  local what=$1 timeout=$2 deadline
  shift 2
  deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS > deadline)); then
      log "timed out after ${timeout}s waiting for $what (logs: $state/logs/)"
      return 1
    fi
    sleep 0.5
  done
}

port_free() { ! ss -Hltn "sport = :$1" | grep -q .; }

# A CA of our own and a serving certificate for the name the API server dials
# (<service>.<namespace>.svc) and the node's address; the CA goes into the APIService's caBundle.
certificates() {
  local ip=$1 dir=$state/pki
  [[ -f $dir/serving.crt ]] && return 0
  mkdir -p "$dir"
  openssl req -x509 -newkey rsa:2048 -nodes -days 7 -subj "/CN=moorage-prometheus-adapter-ca" \
    -keyout "$dir/ca.key" -out "$dir/ca.crt" 2>/dev/null
  openssl req -new -newkey rsa:2048 -nodes -subj "/CN=$SERVICE.$NAMESPACE.svc" \
    -keyout "$dir/serving.key" -out "$dir/serving.csr" 2>/dev/null
  printf 'subjectAltName=DNS:%s,DNS:%s.%s.svc,IP:%s\nextendedKeyUsage=serverAuth\n' \
    "$SERVICE.$NAMESPACE" "$SERVICE" "$NAMESPACE" "$ip" >"$dir/serving.ext"
  openssl x509 -req -in "$dir/serving.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" \
    -CAcreateserial -days 7 -extfile "$dir/serving.ext" -out "$dir/serving.crt" 2>/dev/null
}

prometheus_config() {
  cat >"$state/prometheus.yml" <<EOF
# Written by hack/autoscale/autoscale.sh.
global:
  scrape_interval: $SCRAPE_INTERVAL
  scrape_timeout: $SCRAPE_INTERVAL
scrape_configs:
  - job_name: agent-pods
    file_sd_configs:
      - files: [$state/targets.json]
        refresh_interval: 5s
EOF
}

# One pass of discovery: the pods as file_sd target groups, replaced atomically.
discover_once() {
  kubectl get pods -A -l app.kubernetes.io/name=agent \
    --field-selector "spec.nodeName=$NODE_NAME,status.phase=Running" -o json |
    python3 -c '
import json, sys
groups = []
for pod in json.load(sys.stdin)["items"]:
    ip = pod.get("status", {}).get("podIP")
    ports = [p["containerPort"] for c in pod["spec"]["containers"]
             for p in c.get("ports", []) if p.get("name") == "http"]
    if ip and ports and not pod["metadata"].get("deletionTimestamp"):
        labels = {"namespace": pod["metadata"]["namespace"], "pod": pod["metadata"]["name"]}
        groups.append({"targets": [f"{ip}:{ports[0]}"], "labels": labels})
json.dump(groups, sys.stdout)
' >"$state/targets.json.tmp" || return 1
  mv -f "$state/targets.json.tmp" "$state/targets.json"
}

cmd_discover() {
  while true; do
    discover_once || log "a discovery pass failed; the last targets stay"
    sleep "$DISCOVERY_INTERVAL"
  done
}

api_objects() {
  local ip=$1 ca version
  ca=$(base64 -w0 "$state/pki/ca.crt")
  cat <<EOF
apiVersion: v1
kind: List
items:
  - apiVersion: v1
    kind: Service
    metadata:
      name: $SERVICE
      namespace: $NAMESPACE
      labels: {app.kubernetes.io/managed-by: $MANAGED_BY}
    spec:
      ports: [{name: https, port: 443, targetPort: $ADAPTER_PORT, protocol: TCP}]
  - apiVersion: discovery.k8s.io/v1
    kind: EndpointSlice
    metadata:
      name: $SERVICE-node
      namespace: $NAMESPACE
      labels:
        kubernetes.io/service-name: $SERVICE
        endpointslice.kubernetes.io/managed-by: $MANAGED_BY
        app.kubernetes.io/managed-by: $MANAGED_BY
    addressType: IPv4
    ports: [{name: https, port: $ADAPTER_PORT, protocol: TCP}]
    endpoints: [{addresses: ["$ip"], conditions: {ready: true}}]
EOF
  for version in "${VERSIONS[@]}"; do
    cat <<EOF
  - apiVersion: apiregistration.k8s.io/v1
    kind: APIService
    metadata:
      name: $version.custom.metrics.k8s.io
      labels: {app.kubernetes.io/managed-by: $MANAGED_BY}
    spec:
      group: custom.metrics.k8s.io
      version: $version
      service: {name: $SERVICE, namespace: $NAMESPACE, port: 443}
      caBundle: $ca
      groupPriorityMinimum: 100
      versionPriority: 100
EOF
  done
}

available() {
  local version
  for version in "${VERSIONS[@]}"; do
    kubectl get apiservice "$version.custom.metrics.k8s.io" \
      -o jsonpath='{.status.conditions[?(@.type=="Available")].status}' | grep -qx True || return 1
  done
}

# Another custom metrics adapter owns the group: leave it alone rather than replace it.
foreign_apiservice() {
  local version owner
  for version in "${VERSIONS[@]}"; do
    owner=$(kubectl get apiservice "$version.custom.metrics.k8s.io" --ignore-not-found \
      -o jsonpath='{.metadata.labels.app\.kubernetes\.io/managed-by}')
    if [[ -n $(kubectl get apiservice "$version.custom.metrics.k8s.io" --ignore-not-found -o name) &&
      $owner != "$MANAGED_BY" ]]; then
      echo "$version.custom.metrics.k8s.io"
      return 0
    fi
  done
  return 1
}

cmd_up() {
  local ip prometheus adapter other
  command -v prometheus >/dev/null || { log "prometheus is missing (make apt-deps)"; return 1; }
  "$build" prometheus-adapter
  adapter=$("$build" --dir prometheus-adapter)/adapter
  prometheus=$(command -v prometheus)
  [[ -f $kubeconfig ]] || { log "no cluster at $cluster_dir (make cluster-up)"; return 1; }
  if other=$(foreign_apiservice); then
    log "APIService $other belongs to another adapter; not replacing it"
    return 1
  fi
  ip=$(node_ip)
  [[ -n $ip ]] || { log "no address on the default route's interface"; return 1; }
  mkdir -p "$state/tsdb"
  discover_once
  start discovery "$0" discover
  if ! running prometheus; then
    port_free "$PROMETHEUS_PORT" || { log "port $PROMETHEUS_PORT is taken (PROMETHEUS_PORT)"; return 1; }
    prometheus_config
    start prometheus "$prometheus" --config.file "$state/prometheus.yml" \
      --storage.tsdb.path "$state/tsdb" --storage.tsdb.retention.time 2h \
      --web.listen-address "127.0.0.1:$PROMETHEUS_PORT" --log.level warn
  fi
  wait_for "Prometheus to be ready" 60 curl -fsS "http://127.0.0.1:$PROMETHEUS_PORT/-/ready"
  if ! running adapter; then
    port_free "$ADAPTER_PORT" || { log "port $ADAPTER_PORT is taken (ADAPTER_PORT)"; return 1; }
    certificates "$ip"
    start adapter "$adapter" --prometheus-url "http://127.0.0.1:$PROMETHEUS_PORT/" \
      --config "$RULES" --metrics-relist-interval "$RELIST_INTERVAL" \
      --lister-kubeconfig "$kubeconfig" --authentication-kubeconfig "$kubeconfig" \
      --authorization-kubeconfig "$kubeconfig" \
      --bind-address "$ip" --secure-port "$ADAPTER_PORT" \
      --tls-cert-file "$state/pki/serving.crt" --tls-private-key-file "$state/pki/serving.key" \
      --v=1
  fi
  wait_for "prometheus-adapter to serve" 60 \
    curl -fsS --cacert "$state/pki/ca.crt" --resolve "$SERVICE.$NAMESPACE.svc:$ADAPTER_PORT:$ip" \
    "https://$SERVICE.$NAMESPACE.svc:$ADAPTER_PORT/readyz"
  api_objects "$ip" | kubectl apply -f - >&2
  wait_for "the custom.metrics.k8s.io APIServices to be Available" 60 available
  log "custom.metrics.k8s.io served by prometheus-adapter at $ip:$ADAPTER_PORT; Prometheus at $(cmd_url)"
}

cmd_down() {
  local version
  # The API goes first: an APIService whose backend is gone makes discovery fail cluster-wide
  # (and holds up namespace deletion) until it is removed.
  for version in "${VERSIONS[@]}"; do
    if [[ $(kubectl get apiservice "$version.custom.metrics.k8s.io" --ignore-not-found \
      -o jsonpath='{.metadata.labels.app\.kubernetes\.io/managed-by}') == "$MANAGED_BY" ]]; then
      kubectl delete apiservice "$version.custom.metrics.k8s.io" --wait=true >&2 || true
    fi
  done
  kubectl delete -n "$NAMESPACE" service,endpointslice -l "app.kubernetes.io/managed-by=$MANAGED_BY" \
    --ignore-not-found >&2 || true
  stop adapter || true
  stop prometheus || true
  stop discovery || true
  # Logs stay for a look after a failure; everything else (data, certificates, targets) goes.
  rm -rf "$state/tsdb" "$state/pki" "$state/pids" "$state/prometheus.yml" "$state"/targets.json*
  if running adapter || running prometheus || running discovery; then
    log "a process is still running"
    return 1
  fi
}

cmd_status() {
  local name
  for name in discovery prometheus adapter; do
    if running "$name"; then echo "$name running (pid $(<"$(pidfile "$name")"))"; else echo "$name stopped"; fi
  done
  if available 2>/dev/null; then echo "custom.metrics.k8s.io Available"; else echo "custom.metrics.k8s.io not Available"; fi
}

cmd_url() { echo "http://127.0.0.1:$PROMETHEUS_PORT"; }

main() {
  case ${1:-} in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  url) cmd_url ;;
  discover) cmd_discover ;;
  *)
    sed -n '9,13p' "$0" >&2
    exit 2
    ;;
  esac
}

main "$@"; exit
