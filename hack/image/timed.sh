#!/usr/bin/env bash
# Run a build command and append how long it took to a log, so build times are on record.
# usage: timed.sh LOG LABEL COMMAND...
set -euo pipefail
log=$1 label=$2
shift 2
mkdir -p "$(dirname "$log")"
start=$(date +%s)
"$@"
echo "$(date -u +%FT%TZ) $label built in $(($(date +%s) - start))s" | tee -a "$log"
