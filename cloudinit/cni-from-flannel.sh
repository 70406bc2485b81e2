#!/bin/bash
# Writes the node's CNI config from flannel's subnet file: the standard bridge and host-local
# plugins do what the flannel CNI plugin would (it has no published digest to pin).
set -euo pipefail

# Paths and the wait (seconds) can be moved for tests: FLANNEL_SUBNET_ENV, CNI_CONF, VENT_FLANNEL_WAIT.
SUBNET_ENV=${FLANNEL_SUBNET_ENV:-/run/flannel/subnet.env}
CONF=${CNI_CONF:-/etc/cni/net.d/10-flannel.conflist}

# shellcheck source=/dev/null
. "$(dirname "$0")/lib.sh" cni-from-flannel

for _ in $(seq 1 "${VENT_FLANNEL_WAIT:-60}"); do
    [ -s "$SUBNET_ENV" ] && break
    sleep 1
done
[ -s "$SUBNET_ENV" ] || fail "$SUBNET_ENV never appeared"
# shellcheck source=/dev/null
. "$SUBNET_ENV"

mkdir -p "$(dirname "$CONF")"
python3 - "$FLANNEL_NETWORK" "$FLANNEL_SUBNET" "$FLANNEL_MTU" "${FLANNEL_IPMASQ:-false}" >"$CONF.tmp" <<'PY'
import ipaddress, json, sys
network, subnet, mtu, ipmasq = sys.argv[1:]
gateway = ipaddress.ip_interface(subnet)
print(json.dumps({
    "cniVersion": "1.0.0",
    "name": "cbr0",
    "plugins": [
        {
            "type": "bridge",
            "bridge": "cni0",
            # The bridge is the pod's default gateway: service IPs and the world are reached through it.
            "isDefaultGateway": True,
            "hairpinMode": True,
            # flanneld masquerades itself when it runs with --ip-masq
            "ipMasq": ipmasq != "true",
            "mtu": int(mtu),
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": str(gateway.network), "gateway": str(gateway.ip)}]],
                "routes": [{"dst": network}],
            },
        },
        {"type": "portmap", "capabilities": {"portMappings": True}},
    ],
}, indent=2))
PY
mv "$CONF.tmp" "$CONF"
log "wrote $CONF for $FLANNEL_SUBNET"
