#!/bin/bash
# Applies the cluster add-ons (RBAC, CoreDNS, RuntimeClass, flannel's role) once the API
# answers. Run by vent-addons.service on the first controller; `kubectl apply` is idempotent.
set -euo pipefail

KUBECTL=(/usr/local/bin/kubectl --kubeconfig=/var/lib/kubernetes/admin.kubeconfig)
ADDONS=${VENT_ADDONS:-/etc/vent/addons}

# shellcheck source=/dev/null
. "$(dirname "$0")/lib.sh" vent-addons

for attempt in $(seq 1 180); do
    if "${KUBECTL[@]}" get --raw /readyz >/dev/null 2>&1; then
        "${KUBECTL[@]}" apply -f "$ADDONS"
        log "applied $ADDONS"
        exit 0
    fi
    [ $((attempt % 6)) -eq 0 ] && log "waiting for the API (attempt $attempt)"
    sleep 10
done
fail "the API never answered in 30 minutes"
