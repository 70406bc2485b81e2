#!/bin/bash
# vent-bake node network, applied by vent-network.service at every boot (a reboot must not
# lose it), and safe to run again:
#  1. the host firewall table (first: the node never waits unprotected), which also keeps
#     pods away from the metadata service;
#  2. the resolvers kubelet hands to pods;
#  3. the private /31 moves from bond0 onto the macvlan fake0, with the 10.0.0.0/8 route, so
#     that flannel has an interface of its own to bind (as Vent did);
#  4. once the metadata service shows the node's reserved address assigned, it goes onto
#     bond0 and becomes the source of outgoing traffic (etcd checks a peer's certificate
#     against the connection's source address).
set -euo pipefail

# Paths and limits can be moved for tests: VENT_ETC, VENT_RUN, VENT_LOG, VENT_CONSOLE,
# VENT_ADDRESS_WAIT (seconds to wait for the reserved address).
ETC=${VENT_ETC:-/etc/vent}
# shellcheck source=/dev/null
. "$ETC/node.env"
RUN=${VENT_RUN:-/run/vent}
WAIT_SECONDS=${VENT_ADDRESS_WAIT:-1800}

# shellcheck source=/dev/null
. "$(dirname "$0")/lib.sh" vent-network

metadata() {
    curl -fsS --connect-timeout 5 --max-time 15 "$METADATA_URL"
}

# "ADDRESS CIDR GATEWAY" of the private IPv4 address, from the metadata JSON on stdin; fails
# when the metadata names none, so that the bond0 alias is asked instead.
private_from_metadata() {
    python3 -c '
import json, sys
for a in json.load(sys.stdin)["network"]["addresses"]:
    if a["address_family"] == 4 and not a["public"]:
        print(a["address"], a["cidr"], a["gateway"])
        break
else:
    sys.exit(1)'
}

# The same from the alias on bond0; on a /31 the gateway is the other address.
private_from_bond0() {
    local cidr
    cidr=$(ip -4 -o addr show dev bond0 | awk '$4 ~ /^10\./ {print $4; exit}')
    [ -n "$cidr" ] || return 1
    python3 -c '
import ipaddress, sys
i = ipaddress.ip_interface(sys.argv[1])
gw = next(a for a in i.network if a != i.ip) if i.network.prefixlen == 31 else next(i.network.hosts())
print(i.ip, i.network.prefixlen, gw)' "$cidr"
}

move_private_to_fake0() {
    local address cidr gateway
    if ip -4 -o addr show dev fake0 2>/dev/null | grep -q ' 10\.'; then
        log "fake0 already holds the private address"
    else
        read -r address cidr gateway < <(metadata | private_from_metadata || private_from_bond0) ||
            { log "no private address found (metadata service or bond0)"; return 1; }
        ip link show fake0 >/dev/null 2>&1 || ip link add fake0 link bond0 type macvlan mode bridge
        ip link set fake0 up
        ip addr del "$address/$cidr" dev bond0 2>/dev/null || true
        ip addr replace "$address/$cidr" dev fake0
        ip route replace 10.0.0.0/8 via "$gateway" dev fake0
        log "private $address/$cidr moved to fake0, 10.0.0.0/8 via $gateway"
    fi
}

reserved_assigned() {
    metadata | python3 -c '
import json, sys
sys.exit(0 if any(a["address"] == sys.argv[1] for a in json.load(sys.stdin)["network"]["addresses"]) else 1)' "$RESERVED_ADDRESS"
}

take_reserved_address() {
    local waited=0 route
    until reserved_assigned; do
        [ "$waited" -lt "$WAIT_SECONDS" ] || { log "$RESERVED_ADDRESS was never assigned to this device"; return 1; }
        [ $((waited % 60)) -eq 0 ] && log "waiting for $RESERVED_ADDRESS to be assigned to this device"
        sleep 5
        waited=$((waited + 5))
    done
    ip addr replace "$RESERVED_ADDRESS/32" dev bond0
    route=$(ip -4 route show default | head -n1)
    [ -n "$route" ] || { log "no default route to source from $RESERVED_ADDRESS"; return 1; }
    # shellcheck disable=SC2086 # the route's words are arguments
    ip route change ${route%% src *} src "$RESERVED_ADDRESS"
    log "$RESERVED_ADDRESS on bond0, source of outgoing traffic"
}

firewall() {
    local host ip
    nft -f "$ETC/firewall.nft"
    host=$(python3 -c 'import sys, urllib.parse; print(urllib.parse.urlsplit(sys.argv[1]).hostname)' "$METADATA_URL")
    for ip in $(getent ahostsv4 "$host" | awk '{print $1}' | sort -u); do
        nft add element inet vent metadata "{ $ip }"
    done
    log "firewall table inet vent loaded"
}

resolvers() {
    mkdir -p "$RUN"
    if [ -s /run/systemd/resolve/resolv.conf ]; then
        cp /run/systemd/resolve/resolv.conf "$RUN/resolv.conf"
    else
        grep -v '^nameserver 127\.' /etc/resolv.conf >"$RUN/resolv.conf" || true
    fi
}

firewall
resolvers
move_private_to_fake0
take_reserved_address
log "network ready"
