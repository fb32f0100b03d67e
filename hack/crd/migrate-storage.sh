#!/usr/bin/env bash
# Finish an upgrade of the AgentDeployment CRD: rewrite every AgentDeployment so that etcd holds
# it in the CRD's storage version, then record in the CRD's status.storedVersions that no object
# is stored in an older version any more (a later release may then stop serving that version;
# the API server refuses to drop a version that storedVersions still lists).
#
# A rewrite is an update with the object unchanged: the API server encodes it in the storage
# version, and writes only when those bytes differ from what etcd holds, so objects already in
# the storage version are left as they are and the script is safe to re-run. An object changed
# between our read and write is a Conflict: the whole pass is retried. docs/upgrading.md.
set -euo pipefail

kubectl=${KUBECTL:-kubectl}
crd=agentdeployments.moorage.dev

storage=$("$kubectl" get crd "$crd" -o jsonpath='{.spec.versions[?(@.storage==true)].name}')
[[ -n "$storage" ]] || { echo "migrate-storage: CRD $crd has no storage version" >&2; exit 1; }
resource="agentdeployments.$storage.moorage.dev"

for attempt in 1 2 3 4 5; do
  # Objects created after this listing are stored in the storage version already.
  count=$("$kubectl" get "$resource" --all-namespaces -o name | wc -l)
  if [[ "$count" == 0 ]] ||
    "$kubectl" get "$resource" --all-namespaces -o json | "$kubectl" replace -f - >/dev/null; then
    echo "migrate-storage: $count AgentDeployment(s) stored as $storage"
    "$kubectl" patch crd "$crd" --subresource=status --type=merge \
      -p "{\"status\":{\"storedVersions\":[\"$storage\"]}}" >/dev/null
    echo "migrate-storage: $crd storedVersions: [$storage]"
    exit 0
  fi
  echo "migrate-storage: pass $attempt met a concurrent change; again" >&2
  sleep "$attempt"
done
echo "migrate-storage: objects kept changing; storedVersions left as they are (run again)" >&2
exit 1
