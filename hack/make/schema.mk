# Bounds the CRD, the chart's values schema and the operator copy from the service's settings.
.PHONY: schemas

schemas: $(UV) ## regenerate what the CRD, the chart (values.schema.json, session URL check) and the operator copy from the service settings
	$(UV) run --frozen python $(ROOT)/hack/schema/generate.py
