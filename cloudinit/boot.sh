#!/bin/bash
# vent-bake boot script: turns a freshly installed Debian 12 or Ubuntu 22.04/24.04 server into
# the cluster node that cloud-init wrote the files of. Run by cloud-init at first boot, and safe
# to run again. Each step logs with a timestamp to the console, the journal and
# /var/log/vent-boot.log.
#
#   boot              every step, in order
#   boot STEP...      only these steps (prep, download, install, start)
#
# Paths can be moved for tests: VENT_ETC (default /etc/vent), VENT_STATE (/var/lib/vent),
# VENT_ROOT (prefix for installed binaries, default /), VENT_LOG, VENT_CONSOLE, VENT_ATTEMPTS,
# VENT_BACKOFF.
set -euo pipefail

ETC=${VENT_ETC:-/etc/vent}
STATE=${VENT_STATE:-/var/lib/vent}
ROOT=${VENT_ROOT:-/}

# shellcheck source=/dev/null
. "$(dirname "$0")/lib.sh" vent-boot

# --- 1. node prep ---------------------------------------------------------------------------

step_prep() {
    log "prep: cgroup v2, kernel modules, sysctls, swap off, OS packages"
    # shellcheck source=/dev/null
    . "$ETC/boot.env"
    if [ "$(stat -fc %T /sys/fs/cgroup)" != cgroup2fs ] && [ "$ALLOW_CGROUP_V1" != true ]; then
        fail "prep: this machine runs cgroup v1, which Kubernetes 1.35+ refuses: boot it with systemd.unified_cgroup_hierarchy=1 (or set host.allow_cgroup_v1 in the cluster file)"
    fi
    systemctl restart systemd-modules-load.service
    sysctl --quiet --load /etc/sysctl.d/90-vent.conf
    swapoff -a
    sed -i -E '/^[^#].*[[:space:]]swap[[:space:]]/ s/^/#/' /etc/fstab
    local package missing=()
    # shellcheck disable=SC2013 # one package name per line
    for package in $(cat "$ETC/os-packages"); do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' || missing+=("$package")
    done
    if [ ${#missing[@]} -eq 0 ]; then
        log "prep: every OS package already installed; nothing to install"
    else
        install_packages "prep" "${missing[@]}"
    fi
    # The distro's haproxy unit would bind its own config; ours is api-balancer.service.
    systemctl disable --now haproxy.service 2>/dev/null || true
}

# --- 2. networking is vent-network.service, started below and at every boot ------------------

# --- 3. download and verify ------------------------------------------------------------------

# installed NAME ALGORITHM DIGEST: is NAME installed from the file of that digest, every file it
# put in place still as it was (a baked image, or an earlier boot)? Its receipt says.
installed() {
    local receipt="$STATE/installed/$1" sum dest
    [ -f "$receipt" ] && [ "$(head -n 1 "$receipt")" = "$2 $3" ] || return 1
    while read -r sum dest; do
        [ "$(sha256sum "$ROOT$dest" 2>/dev/null | cut -d' ' -f1)" = "$sum" ] || return 1
    done < <(tail -n +2 "$receipt")
}

step_download() {
    log "download: every binary not yet installed, in parallel; nothing is installed before all of them verify"
    mkdir -p "$STATE/downloads"
    local name url algorithm digest installs
    download_all download < <(
        while IFS=$'\t' read -r name url algorithm digest installs; do
            [ -n "$name" ] || continue
            if installed "$name" "$algorithm" "$digest"; then
                log "download: $name already installed from its pinned $algorithm $digest; not fetched"
                continue
            fi
            printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$url" "$algorithm" "$digest" "$STATE/downloads/$name"
        done <"$ETC/downloads.tsv"
    )
}

# --- install: only verified files, from the staging area --------------------------------------

step_install() {
    log "install: verified binaries"
    local name url algorithm digest installs file pair dest member work="$STATE/extract" receipt
    mkdir -p "$STATE/installed"
    while IFS=$'\t' read -r name url algorithm digest installs; do
        [ -n "$name" ] || continue
        if installed "$name" "$algorithm" "$digest"; then
            log "install: $name already in place"
            continue
        fi
        file="$STATE/downloads/$name"
        verified "$file" "$algorithm" "$digest" || fail "install: $name was not verified; run the download step first"
        receipt="$algorithm $digest"
        if [[ $installs == *=* ]]; then
            rm -rf "$work" # what an interrupted run left
            mkdir -p "$work"
            IFS=, read -ra pairs <<<"$installs"
            for pair in "${pairs[@]}"; do
                member=${pair#*=}
                tar -xzf "$file" -C "$work" "$member"
                dest="$ROOT${pair%%=*}"
                install -D -m 0755 "$work/$member" "$dest"
                receipt+=$'\n'"$(sha256sum "$dest" | cut -d' ' -f1) ${pair%%=*}"
            done
            rm -rf "$work"
        else
            install -D -m 0755 "$file" "$ROOT$installs"
            receipt+=$'\n'"$(sha256sum "$ROOT$installs" | cut -d' ' -f1) $installs"
        fi
        echo "$receipt" >"$STATE/installed/$name"
        log "install: $name ($installs)"
    done <"$ETC/downloads.tsv"
}

# --- 4. start ---------------------------------------------------------------------------------

step_start() {
    log "start: enabling and starting $(tr '\n' ' ' <"$ETC/units")"
    install -d -m 0700 /var/lib/etcd 2>/dev/null || true
    install -d /var/log/kubernetes /etc/cni/net.d /run/flannel
    systemctl daemon-reload
    # shellcheck disable=SC2046 # one unit name per line
    systemctl enable $(cat "$ETC/units")
    # Not blocking: etcd waits for its peers, and the peers boot at their own pace.
    # shellcheck disable=SC2046
    systemctl start --no-block $(cat "$ETC/units")
    log "start: done; units report in the journal (journalctl -u UNIT)"
}

main() {
    mkdir -p "$(dirname "$LOG")" "$STATE"
    local steps=("$@")
    [ ${#steps[@]} -gt 0 ] || steps=(prep download install start)
    for step in "${steps[@]}"; do
        case $step in
        prep | download | install | start) "step_$step" ;;
        *) fail "unknown step $step (prep, download, install, start)" ;;
        esac
    done
    log "boot: ${steps[*]} complete"
}

main "$@"
