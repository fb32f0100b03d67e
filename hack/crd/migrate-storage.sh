#!/usr/bin/env bash
# Finish an upgrade of the AgentDeployment CRD: rewrite every AgentDeployment so that etcd holds
# it in the CRD's storage version, then record in the CRD's status.storedVersions that no object
# is stored in an older version any more (a later release may then stop serving that version;
# the API server refuses to drop a version that storedVersions still lists).
#
# The rewrite is an empty merge patch: the API server encodes the unchanged object in the
# storage version and writes it only when those bytes differ from what etcd holds, so an object
# already stored as such is left alone (its resourceVersion stays) and the script is safe to
# re-run. A patch carries no resourceVersion, so a concurrent change cannot make it fail.
# docs/upgrading.md.
set -euo pipefail

kubectl=${KUBECTL:-kubectl}
crd=agentdeployments.moorage.dev

storage=$("$kubectl" get crd "$crd" -o jsonpath='{.spec.versions[?(@.storage==true)].name}')
[[ -n "$storage" ]] || { echo "migrate-storage: CRD $crd has no storage version" >&2; exit 1; }
resource="agentdeployments.$storage.moorage.dev"

count=0
while read -r namespace name; do
  [[ -n "$name" ]] || continue
  if ! out=$("$kubectl" patch "$resource" "$name" -n "$namespace" --type=merge -p '{}' 2>&1); then
    # An object deleted since the listing needs no migration; anything else is an error.
    [[ $out == *NotFound* ]] || { echo "migrate-storage: $namespace/$name: $out" >&2; exit 1; }
    continue
  fi
  count=$((count + 1))
done < <("$kubectl" get "$resource" --all-namespaces --no-headers \
  -o custom-columns=NAMESPACE:.metadata.namespace,NAME:.metadata.name)
echo "migrate-storage: $count AgentDeployment(s) stored as $storage"

# Objects created after the listing are stored in the storage version already.
"$kubectl" patch crd "$crd" --subresource=status --type=merge \
  -p "{\"status\":{\"storedVersions\":[\"$storage\"]}}" >/dev/null
echo "migrate-storage: $crd storedVersions: [$storage]"
