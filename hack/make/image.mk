# Container images: built with buildah (no Docker engine here) on a debootstrap base, because no
# container registry is reachable. Storage lives in the cache, outside the repository.
APT_PACKAGES += buildah debootstrap iproute2

IMAGE_TAG ?= dev
SERVICE_IMAGE ?= localhost/moorage/agent-service
OPERATOR_IMAGE ?= localhost/moorage/agent-operator
REDIS_IMAGE ?= localhost/moorage/redis:7-bookworm
BASE_IMAGE_LOCAL ?= localhost/moorage/python-base:3.11-bookworm
BUILDAH_DIR ?= $(CACHE_DIR)/buildah
# vfs: no overlay mounts needed, so it works unprivileged-in-a-sandbox; chroot isolation likewise.
BUILDAH_FLAGS ?= --storage-driver vfs --root $(BUILDAH_DIR)/storage --runroot $(BUILDAH_DIR)/run
BUILDAH := buildah $(BUILDAH_FLAGS)
# The host's CA bundle reaches the build as a secret (for TLS-intercepting proxies), never a layer.
CA_BUNDLE ?= $(firstword $(wildcard /etc/ssl/certs/ca-certificates.crt /etc/pki/tls/certs/ca-bundle.crt))
IMAGE_BUILD_FLAGS = --isolation chroot --format docker --layers --pull=never \
	--build-arg BASE_IMAGE=$(BASE_IMAGE_LOCAL) $(if $(CA_BUNDLE),--secret id=ca-bundle$(,)src=$(CA_BUNDLE))
, := ,
export BUILDAH_FLAGS CACHE_DIR

.PHONY: image image-base image-lint image-service image-operator image-redis image-load

image-base: apt-deps ## make the local Debian bookworm + Python 3.11 base image (debootstrap, cached)
	$(ROOT)/hack/image/base.sh $(BASE_IMAGE_LOCAL) $(CACHE_DIR)/image

image-lint: sync ## hadolint the Dockerfile
	$(UV) run --frozen hadolint $(ROOT)/Dockerfile

image-service: image-base
	$(ROOT)/hack/image/build.sh service $(SERVICE_IMAGE):$(IMAGE_TAG) -- $(IMAGE_BUILD_FLAGS)

image-operator: image-base
	$(ROOT)/hack/image/build.sh operator $(OPERATOR_IMAGE):$(IMAGE_TAG) -- $(IMAGE_BUILD_FLAGS)

# Debian's redis-server for the chart's development Redis on the real node (redis.image).
image-redis: image-base
	@if $(BUILDAH) inspect --type image $(REDIS_IMAGE) >/dev/null 2>&1; then echo "$(REDIS_IMAGE) present"; \
	else $(BUILDAH) bud $(IMAGE_BUILD_FLAGS) -t $(REDIS_IMAGE) -f $(ROOT)/hack/image/redis.Containerfile $(ROOT)/hack/image; fi

image-load: ## load the built images into the local cluster's real node (the e2e tier does it itself)
	@for i in $(SERVICE_IMAGE):$(IMAGE_TAG) $(OPERATOR_IMAGE):$(IMAGE_TAG) $(REDIS_IMAGE); do \
	  $(ROOT)/hack/cluster/cluster.sh node load $$i; done

image: image-lint image-service image-operator image-redis ## build the service, operator and development Redis images with buildah
	@# vfs keeps every intermediate image as a full copy: drop them (the input hash above, not
	@# the layer cache, is what makes an unchanged rebuild free).
	@$(BUILDAH) rmi --prune >/dev/null 2>&1 || true
	@$(BUILDAH) images --format '{{.Name}}:{{.Tag}} {{.Size}}' | grep -E '$(SERVICE_IMAGE)|$(OPERATOR_IMAGE)' || true

TEST_PREREQS += image

# Dev loop on the local cluster (skaffold.yaml profile `local`; see README "skaffold dev").
# podman only serves skaffold the Docker API it asks for image ids; buildah builds.
APT_PACKAGES += podman
SKAFFOLD_ARGS ?=
.PHONY: dev dev-run dev-delete dev-redis

# The profile runs the chart's development Redis: its image must be in the node too.
dev-redis: image-redis
	$(ROOT)/hack/cluster/cluster.sh node load $(REDIS_IMAGE)

dev: dev-redis ## skaffold dev against the local cluster: rebuild and redeploy on every edit
	$(ROOT)/hack/dev/skaffold.sh dev $(SKAFFOLD_ARGS)

dev-run: dev-redis ## skaffold run against the local cluster: build, load into the node, deploy once
	$(ROOT)/hack/dev/skaffold.sh run $(SKAFFOLD_ARGS)

dev-delete: ## skaffold delete: remove what dev-run deployed
	$(ROOT)/hack/dev/skaffold.sh delete $(SKAFFOLD_ARGS)
