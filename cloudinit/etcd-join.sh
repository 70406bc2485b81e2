#!/bin/bash
# etcd-join prepare|promote: lets a controller that lost its etcd data (a spot device replaced
# by a new one with the same userdata and address) rejoin the running cluster by itself.
#
# prepare (ExecStartPre): with an empty data dir and peers that answer, the cluster exists:
#   - our member started before (it has a name): it lost its data; remove it and add it back
#     as a learner;
#   - our member is listed but never started (no name): join as the cluster expects;
#   - no such member: add it as a learner.
#   Either way etcd starts with --initial-cluster-state=existing. With no peer answering,
#   this is the first bootstrap and etcd starts as configured.
# promote (ExecStartPost): a learner asks to become a voting member once it has caught up.
set -euo pipefail

# Paths can be moved for tests: VENT_ETC, VENT_ETCD_DIR, VENT_ETCD_DATA, VENT_ETCD_JOIN_ENV, VENT_LOG.
ETC=${VENT_ETC:-/etc/vent}
# shellcheck source=/dev/null
. "$ETC/node.env"
ETCD_DIR=${VENT_ETCD_DIR:-/etc/etcd}
DATA=${VENT_ETCD_DATA:-/var/lib/etcd}
JOIN_ENV=${VENT_ETCD_JOIN_ENV:-/run/vent/etcd-join.env}
PEER_URL="https://$RESERVED_ADDRESS:2380"
export ETCDCTL_API=3 ETCDCTL_CACERT=$ETCD_DIR/ca.crt ETCDCTL_CERT=$ETCD_DIR/server.crt ETCDCTL_KEY=$ETCD_DIR/server.key

# shellcheck source=/dev/null
. "$(dirname "$0")/lib.sh" etcd-join

peers() {
    local entry out=()
    for entry in $CONTROLLERS; do
        [ "${entry%%=*}" = "$NODE_NAME" ] || out+=("https://${entry#*=}:2379")
    done
    local IFS=,
    echo "${out[*]}"
}

# Our member in the list on stdin: "ID-in-hex NAME ROLE", NAME "-" if it never started (an
# empty field would vanish when bash splits the line).
find_member() {
    python3 -c '
import json, sys
for m in json.load(sys.stdin).get("members", []):
    if sys.argv[1] in m.get("peerURLs", []):
        print(format(m["ID"], "x"), m.get("name") or "-", "learner" if m.get("isLearner") else "voter")' "$PEER_URL"
}

prepare() {
    mkdir -p "$(dirname "$JOIN_ENV")"
    rm -f "$JOIN_ENV"
    if [ -d "$DATA/member" ]; then
        log "data dir present: starting as before"
        return 0
    fi
    install -d -m 0700 "$DATA"
    local endpoints members id name
    endpoints=$(peers)
    if [ -z "$endpoints" ] || ! members=$(etcdctl --endpoints="$endpoints" --command-timeout=10s member list -w json 2>/dev/null); then
        log "no peer answers: bootstrapping with the initial cluster"
        return 0
    fi
    read -r id name _ < <(echo "$members" | find_member) || true
    if [ -n "${id:-}" ] && [ "${name:-}" = "-" ]; then
        log "member $id was added but never started: joining the running cluster"
    else
        if [ -n "${id:-}" ]; then
            log "member $id ($name) lost its data: removing it to add it back"
            etcdctl --endpoints="$endpoints" member remove "$id"
        fi
        etcdctl --endpoints="$endpoints" member add "$NODE_NAME" --peer-urls="$PEER_URL" --learner
        log "added $NODE_NAME as a learner"
    fi
    echo "VENT_ETCD_CLUSTER_STATE=existing" >"$JOIN_ENV"
}

promote() {
    [ -f "$JOIN_ENV" ] || return 0
    local attempt id role
    for attempt in $(seq 1 120); do
        read -r id _ role < <(etcdctl --endpoints="$(peers)" member list -w json | find_member) || true
        if [ "${role:-}" = voter ]; then
            log "$NODE_NAME is a voting member"
            return 0
        fi
        if [ -n "${id:-}" ] && etcdctl --endpoints="$(peers)" member promote "$id" >/dev/null 2>&1; then
            log "promoted $NODE_NAME ($id) to a voting member"
            return 0
        fi
        [ $((attempt % 12)) -eq 0 ] && log "learner $NODE_NAME is still catching up"
        sleep 5
    done
    log "learner $NODE_NAME was not promoted in 10 minutes; it keeps trying on its next start"
}

case ${1:-} in
prepare) prepare ;;
promote) promote ;;
*)
    echo "usage: etcd-join prepare|promote" >&2
    exit 2
    ;;
esac
