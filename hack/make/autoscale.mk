# Autoscaling on turns in flight, on the local cluster: Prometheus (Debian's package) scraping the
# real node's agent pods and prometheus-adapter (built from hack/tools/prometheus-adapter) serving
# custom.metrics.k8s.io with the chart's rule, as host processes (hack/autoscale/autoscale.sh).
# Opt-in: `make cluster-up` does not start them; the e2e test and the benchmark do, and stop them.
APT_PACKAGES += prometheus

.PHONY: prometheus-adapter autoscale-up autoscale-down bench-autoscale

# A cold build (empty Go caches) took 7 minutes on 2 busy cores: 4.5 min of CPU, 340 MB of
# modules, 1.2 GB of build cache.
prometheus-adapter: ## build prometheus-adapter for the inflight autoscaling tests (cached)
	@CACHE_DIR=$(CACHE_DIR) $(ROOT)/hack/tools/build.sh prometheus-adapter

autoscale-up: apt-deps prometheus-adapter ## start Prometheus + prometheus-adapter (custom metrics API) for the local cluster
	@CACHE_DIR=$(CACHE_DIR) $(ROOT)/hack/autoscale/autoscale.sh up

autoscale-down: ## unregister the custom metrics API, stop Prometheus and prometheus-adapter
	@CACHE_DIR=$(CACHE_DIR) $(ROOT)/hack/autoscale/autoscale.sh down

# tests/e2e/test_autoscale_inflight.py starts and stops them itself; the build must exist.
TEST_PREREQS += prometheus-adapter

bench-autoscale: sync apt-deps prometheus-adapter ## inflight vs cpu HPA on the real node: reaction times, p99 during the ramp (~5 min)
	$(UV) run --frozen python $(ROOT)/hack/autoscale/bench.py
