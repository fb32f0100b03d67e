# Bounds the CRD, the chart's values schema and the operator copy from the service's settings.
.PHONY: schemas

schemas: $(UV) ## regenerate the service-derived bounds in the CRD, values.schema.json and the operator (hack/schema/generate.py)
	$(UV) run --frozen python $(ROOT)/hack/schema/generate.py
