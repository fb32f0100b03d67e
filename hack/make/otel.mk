# The OpenTelemetry Collector the tracing tests export to: built from its Go modules with only
# the OTLP receiver and the file exporter (hack/tools/otelcol), into
# $(CACHE_DIR)/bin/otelcol-<version>/otelcol. A cold build takes about 4-5 minutes on 2 cores.
.PHONY: otelcol

otelcol: ## build the OpenTelemetry Collector (OTLP receiver, file exporter) for the tracing tests (cached)
	@CACHE_DIR=$(CACHE_DIR) $(ROOT)/hack/tools/build.sh otelcol

TEST_PREREQS += otelcol
# make bench's scenario 9 exports traces to it.
bench: otelcol
