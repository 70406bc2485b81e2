# shellcheck shell=bash
# Shared by the vent scripts, each sourcing it with its tag (`. lib.sh vent-boot`): logging,
# and the one way anything is downloaded. VENT_LOG, VENT_CONSOLE, VENT_ATTEMPTS and
# VENT_BACKOFF can be moved or shortened for tests.
LOG_TAG=$1
LOG=${VENT_LOG:-/var/log/vent-boot.log}
ATTEMPTS=${VENT_ATTEMPTS:-5}
BACKOFF=${VENT_BACKOFF:-2}

# One timestamped line to the log file, stderr, the console and the journal.
log() {
    local line
    line="$(date -u +%Y-%m-%dT%H:%M:%SZ) $LOG_TAG: $*"
    echo "$line" >>"$LOG"
    echo "$line" >&2
    { echo "$line" >"${VENT_CONSOLE:-/dev/console}"; } 2>/dev/null || true
    logger -t "$LOG_TAG" -- "$*" 2>/dev/null || true
}

fail() {
    log "FAILED: $*"
    exit 1
}

# A command that stops a script under `set -e` says so, where an operator will look. (In a
# subshell, the script that waits for it reports.)
on_error() {
    local status=$?
    [ "$BASH_SUBSHELL" -gt 0 ] || fail "line ${BASH_LINENO[0]}: \`$BASH_COMMAND\` exited $status"
}
set -o errtrace
trap on_error ERR

# retry WHAT COMMAND...: COMMAND until it succeeds, ATTEMPTS times, backing off in between.
retry() {
    local what=$1 attempt
    shift
    for attempt in $(seq 1 "$ATTEMPTS"); do
        "$@" && return 0
        log "$what failed (attempt $attempt of $ATTEMPTS)"
        [ "$attempt" -lt "$ATTEMPTS" ] && sleep $((BACKOFF ** attempt))
    done
    return 1
}

# verified FILE ALGORITHM DIGEST: is FILE there, with that digest?
verified() {
    [ -f "$1" ] && [ "$("${2}sum" "$1" | cut -d' ' -f1)" = "$3" ]
}

# download_verified LABEL URL ALGORITHM DIGEST OUT: OUT appears only once its content matches
# the pinned digest; a failed download or a mismatch is retried, then returns 1.
download_verified() {
    retry "$1 from $2" _download "$@"
}

_download() {
    local label=$1 url=$2 algorithm=$3 digest=$4 out=$5 actual
    curl -fsSL --connect-timeout 20 --max-time 900 -o "$out.part" "$url" || return 1
    actual=$("${algorithm}sum" "$out.part" | cut -d' ' -f1)
    if [ "$actual" != "$digest" ]; then
        rm -f "$out.part"
        log "$label from $url does not match its pinned digest: expected $algorithm $digest, got $actual"
        return 1
    fi
    mv "$out.part" "$out"
    log "$label verified ($algorithm $digest)"
}

# download_all WHAT: every "LABEL URL ALGORITHM DIGEST OUT" line on stdin (tab-separated) to
# OUT, all at once, each kept only once it verifies (one already there with its digest is
# kept as it is). If any cannot be verified the script stops, naming them: nothing is
# installed before everything has verified.
download_all() {
    local what=$1 label url algorithm digest out pids=() labels=() failed=() i
    while IFS=$'\t' read -r label url algorithm digest out; do
        [ -n "$label" ] || continue
        verified "$out" "$algorithm" "$digest" && continue
        download_verified "$what: $label" "$url" "$algorithm" "$digest" "$out" &
        pids+=($!)
        labels+=("$label")
    done
    for i in "${!pids[@]}"; do
        wait "${pids[$i]}" || failed+=("${labels[$i]}")
    done
    [ ${#failed[@]} -eq 0 ] || fail "$what: ${failed[*]} could not be verified; nothing was installed"
}

# install_packages LABEL PACKAGE...: from the OS's own repositories.
install_packages() {
    local label=$1
    shift
    retry "$label: installing $*" _apt_install "$@" || fail "$label: could not install $*"
}

_apt_install() {
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
}
