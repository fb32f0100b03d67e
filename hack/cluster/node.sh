#!/usr/bin/env bash
# The local cluster's one real node: containerd + runc (Debian), the bridge CNI (Debian's plugins),
# a kubelet and kube-proxy (v1.36.3, from the wrapper module), CoreDNS and metrics-server as node
# processes. Every container of the project's own images really runs here; the kwok nodes stay
# for tests that need many nodes or objects. What this machine needs and why:
# ../../docs/real-node.md.
#
# Usage (called by cluster.sh, which holds the cluster lock):
#   node.sh up           start (or reuse) the node's processes and wait until the node is Ready
#   node.sh down         stop them by pid and put the host back as `host-state` found it
#   node.sh host-state   print the host facts the node changes (sysctls, iptables, mounts, ...)
#   node.sh load IMAGE [ALIAS...]   load an image from buildah's storage into the node's containerd
#                                   (and name it ALIAS... there too)
#
# Environment: CACHE_DIR, CLUSTER_DIR (the kwokctl cluster's directory: pki/, kubeconfig.yaml).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
build=$root/hack/tools/build.sh
CACHE_DIR=${CACHE_DIR:-$HOME/.cache/moorage}
cluster_dir=${CLUSTER_DIR:?CLUSTER_DIR must name the cluster directory}
node=$cluster_dir/node
NODE_NAME=${NODE_NAME:-moorage-node}
POD_CIDR=10.244.0.0/24
POD_GATEWAY=10.244.0.1
SERVICE_CIDR=10.96.0.0/16
KUBELET_PORT=11250
KUBELET_HEALTHZ_PORT=11248
PROXY_HEALTHZ_PORT=11256
PROXY_METRICS_PORT=11249
METRICS_SERVER_PORT=11443
DNS_HEALTH_PORT=11280
DNS_READY_PORT=11281
PAUSE_IMAGE=localhost/moorage/pause:3.10
BRIDGE=moorage0
# The host state is recorded once, before the first `up`; `down` restores it and deletes it.
host_before=$CACHE_DIR/kwok/host-before.txt
saved=$CACHE_DIR/kwok/host-saved
# Sysctls that the kubelet, kube-proxy or the bridge plugin set (see docs/real-node.md).
SYSCTLS=(vm.overcommit_memory kernel.panic kernel.panic_on_oops net.ipv4.ip_forward
  net.ipv4.conf.all.route_localnet net.bridge.bridge-nf-call-iptables
  net.bridge.bridge-nf-call-ip6tables)
# Paths the kubelet, containerd and CNI use whatever their configuration says.
FIXED_PATHS=(/run/containerd /var/lib/cni /var/lib/kubelet /var/log/pods /var/log/containers
  /usr/libexec/kubernetes /etc/cni /opt/cni /run/netns /etc/kubernetes)
CGROUP_PARENTS=(kubepods k8s.io)
# The image storage `make image` writes to (hack/make/image.mk).
BUILDAH_FLAGS=${BUILDAH_FLAGS:-"--storage-driver vfs --root $CACHE_DIR/buildah/storage --runroot $CACHE_DIR/buildah/run"}

log() { echo "node.sh: $*" >&2; }
tool_dir() { "$build" --dir "$1"; }
kubectl() { "$(tool_dir kubernetes)/kubectl" --kubeconfig "$cluster_dir/kubeconfig.yaml" "$@"; }
ctr() { command ctr --address "$node/containerd/containerd.sock" -n k8s.io "$@"; }

node_ip() {
  local dev
  dev=$(ip -o -4 route show default | awk '{for (i = 1; i < NF; i++) if ($i == "dev") {print $(i + 1); exit}}')
  ip -o -4 addr show dev "$dev" | awk '{split($4, a, "/"); print a[1]; exit}'
}

# ---------------------------------------------------------------------------------------------
# Host state: everything the node may change, printed canonically so two prints can be diffed.
cmd_host_state() {
  local s p c
  echo "# sysctls"
  for s in "${SYSCTLS[@]}"; do echo "$s=$(sysctl -n "$s" 2>/dev/null || echo absent)"; done
  echo "# iptables (rules and chains, without counters)"
  for c in iptables-save ip6tables-save; do
    if command -v "$c" >/dev/null; then
      "$c" 2>/dev/null | { grep -v '^#' || true; } | sed 's/\[[0-9]*:[0-9]*\]//'
    fi
  done
  echo "# mounts under the node's and the fixed paths"
  awk -v node="$node" '{print $2}' /proc/self/mounts |
    grep -E "^($node|/run/containerd|/var/lib/kubelet|/run/netns|/var/lib/cni)" | sort || true
  echo "# paths"
  for p in "${FIXED_PATHS[@]}"; do if [[ -e $p ]]; then echo "exists $p"; fi; done
  echo "# cgroups"
  for c in /sys/fs/cgroup/*/; do
    for p in "${CGROUP_PARENTS[@]}"; do if [[ -d $c$p ]]; then echo "cgroup $c$p"; fi; done
  done
  echo "# links"
  ip -o link show | awk -F': ' '{print $2}' | sed 's/@.*//' | grep -E "^($BRIDGE|veth|cni)" || true
  echo "# processes"
  for p in kubelet containerd kube-proxy coredns metrics-server containerd-shim; do
    if pgrep -x "$p" >/dev/null; then echo "running $p"; fi
  done
  return 0
}

record_host() {
  [[ -f $host_before ]] && return 0
  mkdir -p "$saved"
  cmd_host_state >"$host_before.partial"
  local s
  for s in "${SYSCTLS[@]}"; do sysctl -n "$s" 2>/dev/null >"$saved/$s" || rm -f "$saved/$s"; done
  iptables-save >"$saved/iptables"
  ip6tables-save >"$saved/ip6tables"
  mv "$host_before.partial" "$host_before"
}

# ---------------------------------------------------------------------------------------------
pidfile() { echo "$node/pids/$1.pid"; }

running() {
  local f
  f=$(pidfile "$1")
  [[ -f $f ]] && kill -0 "$(<"$f")" 2>/dev/null
}

# start NAME COMMAND...: run in the background with its own log, pid recorded; no cluster lock.
start() {
  local name=$1
  shift
  running "$name" && return 0
  mkdir -p "$node/pids" "$node/logs"
  setsid "$@" >>"$node/logs/$name.log" 2>&1 8>&- </dev/null &
  echo $! >"$(pidfile "$name")"
}

stop() {
  local f pid
  f=$(pidfile "$1")
  [[ -f $f ]] || return 0
  pid=$(<"$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}

wait_for() {
  local what=$1 timeout=$2 deadline
  shift 2
  deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS > deadline)); then
      log "timed out after ${timeout}s waiting for $what (logs: $node/logs/)"
      return 1
    fi
    sleep 0.5
  done
}

# A client certificate signed by the cluster's CA, and a kubeconfig using it.
client_kubeconfig() {
  local name=$1 cn=$2 org=$3 server=$4 pki=$cluster_dir/pki dir=$node/pki
  mkdir -p "$dir"
  if [[ ! -f $dir/$name.crt ]]; then
    openssl req -new -newkey rsa:2048 -nodes -keyout "$dir/$name.key" -subj "/O=$org/CN=$cn" \
      -out "$dir/$name.csr" 2>/dev/null
    openssl x509 -req -in "$dir/$name.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" \
      -CAcreateserial -days 365 -out "$dir/$name.crt" 2>/dev/null
  fi
  put "$node/$name.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
  - name: local
    cluster: {server: "$server", certificate-authority: "$pki/ca.crt"}
users:
  - name: $name
    user: {client-certificate: "$dir/$name.crt", client-key: "$dir/$name.key"}
contexts:
  - name: local
    context: {cluster: local, user: $name}
current-context: local
EOF
}

# Write stdin to the file $1 only when its content differs: kube-proxy exits when its config
# file changes, so a second `up` on a running node must leave the files as they are.
put() {
  local tmp
  tmp=$(mktemp "$1.XXXXXX")
  cat >"$tmp"
  if cmp -s "$tmp" "$1"; then rm -f "$tmp"; else mv -f "$tmp" "$1"; fi
}

write_configs() {
  local ip=$1 server=$2 k8s
  k8s=$(tool_dir kubernetes)
  mkdir -p "$node"/{containerd/root,containerd/state,cni/net.d,cni/ipam,kubelet,pod-logs,volume-plugins}
  sed -e "s|@NODE@|$node|g" -e "s|@PAUSE_IMAGE@|$PAUSE_IMAGE|g" \
    "$here/node/containerd.toml" | put "$node/containerd/config.toml"
  sed -e "s|@BRIDGE@|$BRIDGE|g" -e "s|@POD_CIDR@|$POD_CIDR|g" -e "s|@POD_GATEWAY@|$POD_GATEWAY|g" \
    -e "s|@NODE@|$node|g" "$here/node/cni.conflist" | put "$node/cni/net.d/10-moorage.conflist"
  sed -e "s|@NODE@|$node|g" -e "s|@NODE_IP@|$ip|g" -e "s|@CA@|$cluster_dir/pki/ca.crt|g" \
    -e "s|@KUBELET_PORT@|$KUBELET_PORT|g" -e "s|@KUBELET_HEALTHZ_PORT@|$KUBELET_HEALTHZ_PORT|g" \
    "$here/node/kubelet.yaml" | put "$node/kubelet.yaml"
  sed -e "s|@NODE@|$node|g" -e "s|@POD_CIDR@|$POD_CIDR|g" -e "s|@NODE_NAME@|$NODE_NAME|g" \
    -e "s|@PROXY_HEALTHZ_PORT@|$PROXY_HEALTHZ_PORT|g" -e "s|@PROXY_METRICS_PORT@|$PROXY_METRICS_PORT|g" \
    "$here/node/kube-proxy.yaml" | put "$node/kube-proxy.yaml"
  sed -e "s|@NODE_IP@|$ip|g" -e "s|@DNS_HEALTH_PORT@|$DNS_HEALTH_PORT|g" \
    -e "s|@DNS_READY_PORT@|$DNS_READY_PORT|g" -e "s|@SERVICE_CIDR@|$SERVICE_CIDR|g" \
    -e "s|@POD_CIDR@|$POD_CIDR|g" -e "s|@KUBECONFIG@|$node/coredns.kubeconfig|g" \
    "$here/node/Corefile" | put "$node/Corefile"
  client_kubeconfig kubelet "system:node:$NODE_NAME" system:nodes "$server"
  client_kubeconfig kube-proxy system:kube-proxy system:node-proxier "$server"
  # CoreDNS and metrics-server read with the cluster's admin identity (RBAC for them as pods is
  # not needed: they run on the node like the kubelet).
  put "$node/coredns.kubeconfig" <"$cluster_dir/kubeconfig.yaml"
  : "$k8s"
}

# The sandbox image: our own pause program, static, in an image FROM scratch.
pause_image() {
  ctr images check "name==$PAUSE_IMAGE" 2>/dev/null | grep -q "$PAUSE_IMAGE" && return 0
  local work
  work=$(mktemp -d "$node/pause.XXXXXX")
  gcc -static -O2 -s -o "$work/pause" "$here/node/pause.c"
  read -r -a bflags <<<"${BUILDAH_FLAGS:-}"
  local c
  c=$(buildah "${bflags[@]}" from scratch)
  buildah "${bflags[@]}" copy "$c" "$work/pause" /pause >/dev/null
  buildah "${bflags[@]}" config --entrypoint '["/pause"]' --user 65535:65535 "$c"
  buildah "${bflags[@]}" commit --rm -q "$c" "$PAUSE_IMAGE" >/dev/null
  cmd_load "$PAUSE_IMAGE"
  rm -rf "$work"
}

cmd_load() {
  local image=$1 archive id stamp
  shift
  read -r -a bflags <<<"${BUILDAH_FLAGS:-}"
  id=$(buildah "${bflags[@]}" inspect --type image --format '{{.FromImageID}}' "$image")
  stamp=$node/images/$(echo "$image" | tr '/:' '__')
  if [[ -f $stamp && $(<"$stamp") == "$id" ]] && ctr images ls -q "name==$image" | grep -qx "$image"; then
    load_aliases "$image" "$@"
    return 0
  fi
  mkdir -p "$node/images"
  archive=$(mktemp "$node/image.XXXXXX.tar")
  rm -f "$archive"
  buildah "${bflags[@]}" push -q "$image" "oci-archive:$archive:$image" >/dev/null
  # --no-unpack would leave the snapshot to the first pod; unpack now so pods start at once.
  ctr images import --base-name "${image%:*}" "$archive" >/dev/null
  rm -f "$archive"
  echo "$id" >"$stamp"
  log "loaded $image into the node"
  load_aliases "$image" "$@"
}

# More names for an image already in the node (skaffold deploys a tag made of the image id).
load_aliases() {
  local image=$1 alias
  shift
  for alias in "$@"; do
    ctr images tag --force "$image" "$alias" >/dev/null
    log "tagged $image as $alias in the node"
  done
}

node_ready() {
  kubectl get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' |
    grep -qx True
}

cmd_up() {
  local ip server k8s
  ip=$(node_ip)
  [[ -n $ip ]] || { log "no address on the default route's interface"; return 1; }
  server=$(awk '/server:/ {print $2; exit}' "$cluster_dir/kubeconfig.yaml" | sed "s|127.0.0.1|$ip|")
  k8s=$(tool_dir kubernetes)
  record_host
  write_configs "$ip" "$server"

  start containerd containerd --config "$node/containerd/config.toml"
  wait_for containerd 30 ctr version
  pause_image

  start kubelet "$k8s/kubelet" --config "$node/kubelet.yaml" --kubeconfig "$node/kubelet.kubeconfig" \
    --root-dir "$node/kubelet" --cert-dir "$node/kubelet-pki" --hostname-override "$NODE_NAME" \
    --node-ip "$ip" --node-labels "type=real,moorage.dev/node=real" --v=1
  start kube-proxy "$k8s/kube-proxy" --config "$node/kube-proxy.yaml" --v=1
  start coredns "$(tool_dir coredns)/coredns" -conf "$node/Corefile"
  start metrics-server "$(tool_dir metrics-server)/metrics-server" \
    --kubeconfig "$cluster_dir/kubeconfig.yaml" \
    --authentication-kubeconfig "$cluster_dir/kubeconfig.yaml" \
    --authorization-kubeconfig "$cluster_dir/kubeconfig.yaml" \
    --bind-address "$ip" --secure-port "$METRICS_SERVER_PORT" --cert-dir "$node/metrics-server" \
    --kubelet-preferred-address-types InternalIP --kubelet-port "$KUBELET_PORT" \
    --kubelet-insecure-tls --metric-resolution 15s
  sed -e "s|@NODE_IP@|$ip|g" -e "s|@METRICS_SERVER_PORT@|$METRICS_SERVER_PORT|g" \
    "$here/node/cluster-addons.yaml" | kubectl apply -f - >&2

  wait_for "the node $NODE_NAME to be Ready" 120 node_ready
  log "real node $NODE_NAME is Ready at $ip"
}

# ---------------------------------------------------------------------------------------------
kill_containers() {
  local c p pid
  # Every process of every pod, then the shims that ran them (they hold the rootfs mounts).
  for c in /sys/fs/cgroup/*/; do
    for p in "${CGROUP_PARENTS[@]}"; do
      [[ -d $c$p ]] || continue
      for pid in $(find "$c$p" -name cgroup.procs -exec cat {} + 2>/dev/null || true); do
        kill -9 "$pid" 2>/dev/null || true
      done
    done
  done
  pkill -9 -f "containerd-shim-runc-v2 .*-address $node/containerd/containerd.sock" 2>/dev/null || true
  for _ in $(seq 40); do
    pgrep -f "containerd-shim-runc-v2 .*-address $node/containerd/" >/dev/null || break
    sleep 0.25
  done
}

unmount_all() {
  local m
  # Deepest first; lazy, so a mount still busy for a moment cannot stop the clean-up.
  for m in $(awk '{print $2}' /proc/self/mounts |
    grep -E "^($node|/run/containerd|/var/lib/kubelet|/run/netns)" | sort -r || true); do
    umount -l "$m" 2>/dev/null || true
  done
}

remove_cgroups() {
  local c p
  for c in /sys/fs/cgroup/*/; do
    for p in "${CGROUP_PARENTS[@]}"; do
      [[ -d $c$p ]] || continue
      # rmdir only works on empty cgroups: children first.
      find "$c$p" -depth -type d -exec rmdir {} + 2>/dev/null || true
    done
  done
}

restore_host() {
  [[ -f $host_before ]] || return 0
  local s p
  for s in "${SYSCTLS[@]}"; do
    [[ -f $saved/$s ]] && sysctl -qw "$s=$(<"$saved/$s")" 2>/dev/null || true
  done
  ip link del "$BRIDGE" 2>/dev/null || true
  # kube-proxy's own clean-up first; then the iptables tables (nf_tables backend) go, chains the
  # kubelet made included, and the rules found before are put back exactly.
  "$(tool_dir kubernetes)/kube-proxy" --cleanup >/dev/null 2>&1 || true
  local family table
  for family in ip ip6; do
    for table in filter nat mangle raw security; do
      nft delete table "$family" "$table" 2>/dev/null || true
    done
  done
  iptables-restore <"$saved/iptables"
  ip6tables-restore <"$saved/ip6tables"
  for p in "${FIXED_PATHS[@]}"; do
    if [[ -e $p ]] && ! grep -qx "exists $p" "$host_before"; then rm -rf "$p"; fi
  done
  local now
  now=$(cmd_host_state)
  if [[ $now != "$(<"$host_before")" ]]; then
    log "the host differs from before the node started:"
    diff <(cat "$host_before") <(echo "$now") >&2 || true
    return 1
  fi
  rm -rf "$host_before" "$saved"
}

cmd_down() {
  local name link links
  # The pods' host-side veths: a pod network namespace can outlive its unmount for a while, and
  # its veth pair with it, so they are deleted by name (deleting one end deletes the pair).
  links=$(ip -o link show master "$BRIDGE" 2>/dev/null | awk -F': ' '{print $2}' | sed 's/@.*//' || true)
  # Every step runs even if one before it failed; the final comparison says what is left.
  for name in metrics-server coredns kube-proxy kubelet; do stop "$name" || true; done
  kill_containers || true
  for link in $links; do ip link del "$link" 2>/dev/null || true; done
  stop containerd || true
  # A containerd whose pid file was lost (an interrupted run) is found by its own config path.
  pkill -9 -f "containerd --config $node/containerd/config.toml" 2>/dev/null || true
  unmount_all || true
  remove_cgroups || true
  restore_host
}

main() {
  case ${1:-} in
  up) cmd_up ;;
  down) cmd_down ;;
  host-state) cmd_host_state ;;
  load) shift; cmd_load "${1:?usage: node.sh load IMAGE [ALIAS...]}" "${@:2}" ;;
  *)
    sed -n '8,12p' "$0" >&2
    exit 2
    ;;
  esac
}

main "$@"; exit
