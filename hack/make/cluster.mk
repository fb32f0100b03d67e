# Local Kubernetes control plane (kwokctl --runtime binary) and the Go-built tools around it.
# Binaries go to $(CACHE_DIR)/bin/<tool>-<version>/, pinned by the wrapper modules in hack/tools/.
CLUSTER_SH := $(ROOT)/hack/cluster/cluster.sh
CLUSTER_TOOLS := kubernetes etcd kwok coredns metrics-server crictl helm4 helm3 kind skaffold
export CACHE_DIR
# The real node's runtime and network pieces: Debian's, pinned by the release (see docs/real-node.md).
APT_PACKAGES += containerd runc containernetworking-plugins iptables nftables openssl

.PHONY: cluster-tools cluster-up cluster-down kubeconfig $(addprefix tool-,$(CLUSTER_TOOLS))

# Sequential on purpose: each go build already uses every core, and running two at once only
# doubles the peak memory.
cluster-tools: ## build kube-apiserver & co., kubelet, kube-proxy, etcd, kwok, CoreDNS, metrics-server, crictl, helm v4/v3, kind, skaffold (cached)
	@$(CLUSTER_SH) tools

$(addprefix tool-,$(CLUSTER_TOOLS)): tool-%:
	@$(ROOT)/hack/tools/build.sh $*

cluster-up: apt-deps ## start (or reuse) the local cluster: a real node, 2 kwok nodes, TLS, RBAC, PodSecurity
	@$(CLUSTER_SH) up

cluster-down: ## delete the local cluster and stop all of its processes
	@$(CLUSTER_SH) down

kubeconfig: ## print the local cluster's kubeconfig path (use `make -s kubeconfig`)
	@$(CLUSTER_SH) kubeconfig

TEST_PREREQS += cluster-tools
