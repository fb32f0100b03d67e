# Copies the CRD, the chart and the operator take from the service's settings and the pod contract.
.PHONY: schemas

schemas: $(UV) ## regenerate what the CRD, the chart and the operator copy from the service settings (bounds) and charts/agent/files/pod-contract.yaml (pod contract, defaults)
	$(UV) run --frozen python $(ROOT)/hack/schema/generate.py
