# Benchmarks: the service's shell against a bare floor app, side by side, driven by wrk against a
# local redis-server (see hack/bench/bench.py and docs/benchmarks.md).
APT_PACKAGES += wrk

# BENCH_QUICK=1: a smoke run of a few seconds per scenario that leaves docs/benchmarks.md alone.
BENCH_OUT ?= $(ROOT)/bench-out
# Bytecode of the benchmarked processes lives here, outside the virtualenv (see bench.py).
BENCH_PYCACHE ?= $(CACHE_DIR)/bench-pycache
export BENCH_OUT BENCH_PYCACHE

.PHONY: bench

bench: sync apt-deps ## service vs floor: throughput, p99, slow model, cold start, RSS, workers (~5 min)
	$(UV) run --frozen python $(ROOT)/hack/bench/bench.py
