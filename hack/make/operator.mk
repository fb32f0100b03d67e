# The AgentDeployment operator: run it locally, benchmark it.
.PHONY: operator-run bench-operator

operator-run: sync ## run the operator on this machine against the current kubeconfig (all namespaces)
	$(UV) run --frozen agent-operator

bench-operator: sync cluster-up ## 1 and 200 AgentDeployments at once → Ready (p50/p95/p99), a spec change's rollout, RSS; issue-14 targets (bench-out/operator.json)
	$(UV) run --frozen python $(ROOT)/hack/bench/operator_bench.py --uv $(UV) --out $(ROOT)/bench-out/operator.json

.PHONY: crd-migrate
crd-migrate: ## after upgrading the CRD: store every AgentDeployment as v1beta1 and drop v1alpha1 from storedVersions (kubectl from PATH or KUBECTL)
	$(ROOT)/hack/crd/migrate-storage.sh
