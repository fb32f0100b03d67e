# Moorage: one entry point for running, testing, linting and shipping.
# Every tool is installed from the package registries into a cache outside the repository
# ($(CACHE_DIR)), so a fresh machine needs only Python, pip and make.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

ROOT := $(abspath $(dir $(lastword $(MAKEFILE_LIST))))
CACHE_DIR ?= $(HOME)/.cache/moorage
UV_VERSION := 0.13.8
UV_HOME := $(CACHE_DIR)/uv-$(UV_VERSION)
UV := $(UV_HOME)/bin/uv
export UV_SYSTEM_CERTS ?= 1
export UV_PYTHON_DOWNLOADS ?= never

# Debian packages the test tiers need; area makefiles append to these lists.
APT_PACKAGES := redis-server haproxy
# Targets `make test` needs before pytest starts; area makefiles append to it.
TEST_PREREQS :=
PYTEST_ARGS ?=

# Area makefiles (cluster, image, chart, operator, bench) add targets and extend the lists above.
include $(sort $(wildcard $(ROOT)/hack/make/*.mk))

.PHONY: help run test lint format sync apt-deps clean-cache

help: ## list the targets
	@grep -hE '^[a-z][a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | sort | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

$(UV):
	python3 -m venv $(UV_HOME)
	$(UV_HOME)/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

sync: $(UV) ## install the locked Python environment (service, operator, dev tools)
	$(UV) sync --frozen --all-packages

apt-deps: ## install the Debian packages the tests need (only those missing)
	@missing=(); for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing+=($$p); done; \
	if [ $${#missing[@]} -gt 0 ]; then \
	  echo "installing: $${missing[*]}"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$${missing[@]}" >/dev/null; \
	fi

run: $(UV) ## serve the agent on 127.0.0.1:8080 (echo model, in-memory sessions)
	$(UV) run --frozen --no-dev --package moorage-service agent-service

test: sync apt-deps $(TEST_PREREQS) ## run every test tier (unit, integration, chart, image, e2e)
	$(UV) run --frozen pytest $(PYTEST_ARGS)

lint: sync ## ruff, ruff format --check, mypy --strict
	$(UV) run --frozen ruff check .
	$(UV) run --frozen ruff format --check .
	$(UV) run --frozen mypy

format: sync ## apply ruff's fixes and formatting
	$(UV) run --frozen ruff check --fix .
	$(UV) run --frozen ruff format .
