#!/bin/bash
# vent-bake fetch: what cloud-init runs first. The userdata carries this node's secrets and its
# network and flannel set-up; every other file it needs (the boot script, units, configs,
# certificates, add-ons) is published with the artifacts under nodes/<host>/. This fetches
# the node's file list and checks it against the sha256 the userdata pins, fetches every file
# on the list and checks each against the list, installs them only once all have verified,
# and then hands over to the boot script. Safe to run again.
#
#   fetch BASE_URL LIST_SHA256      BASE_URL: where artifacts/nodes/<host>/ is published
#
# Paths can be moved for tests: VENT_STATE (default /var/lib/vent), VENT_ROOT (prefix of the
# installed files, default /), and those of lib.sh.
set -euo pipefail

STATE=${VENT_STATE:-/var/lib/vent}
ROOT=${VENT_ROOT:-/}
HERE=$(dirname "$0")

# shellcheck source=/dev/null
. "$HERE/lib.sh" vent-fetch

main() {
    [ $# -eq 2 ] || fail "usage: fetch BASE_URL LIST_SHA256"
    local base=${1%/}/ pin=$2 stage="$STATE/fetch" digest mode path i=0
    mkdir -p "$(dirname "$LOG")"
    rm -rf "$stage"
    mkdir -p "$stage"
    command -v curl >/dev/null || install_packages fetch curl ca-certificates

    log "fetch: this node's files from $base; none is installed before all of them verify"
    download_verified "fetch: the file list" "${base}fetch.list" sha256 "$pin" "$stage/list" ||
        fail "fetch: no file list with the sha256 this userdata pins ($pin) at ${base}fetch.list; publish the rendered artifacts/ there. Nothing was installed"
    download_all fetch < <(
        while read -r digest mode path; do
            printf '%s\t%s\t%s\t%s\t%s\n' "$path" "${base}files$path" sha256 "$digest" "$stage/$i"
            i=$((i + 1))
        done <"$stage/list"
    )

    i=0
    while read -r digest mode path; do
        install -D -m "$mode" "$stage/$i" "${ROOT%/}$path"
        i=$((i + 1))
    done <"$stage/list"
    rm -rf "$stage"
    log "fetch: $i files verified and installed"
    exec "$HERE/boot"
}

main "$@"
