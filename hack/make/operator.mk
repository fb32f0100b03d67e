# The AgentDeployment operator: run it locally, benchmark it.
.PHONY: operator-run bench-operator

operator-run: sync ## run the operator on this machine against the current kubeconfig (all namespaces)
	$(UV) run --frozen agent-operator

bench-operator: sync cluster-up ## time apply→Ready for 1 and 50 AgentDeployments and the operator's RSS (bench-out/)
	$(UV) run --frozen python $(ROOT)/hack/bench/operator_bench.py --uv $(UV) --out $(ROOT)/bench-out/operator.json

.PHONY: crd-migrate
crd-migrate: ## after upgrading the CRD: store every AgentDeployment as v1beta1 and drop v1alpha1 from storedVersions (kubectl from PATH or KUBECTL)
	$(ROOT)/hack/crd/migrate-storage.sh
