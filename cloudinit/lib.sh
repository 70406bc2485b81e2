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

# download_verified LABEL URL ALGORITHM DIGEST OUT: OUT appears only once its content matches
# the pinned digest; a failure or mismatch is retried with backoff, then returns 1.
download_verified() {
    local label=$1 url=$2 algorithm=$3 digest=$4 out=$5 actual attempt
    for attempt in $(seq 1 "$ATTEMPTS"); do
        if curl -fsSL --connect-timeout 20 --max-time 900 -o "$out.part" "$url"; then
            actual=$("${algorithm}sum" "$out.part" | cut -d' ' -f1)
            if [ "$actual" = "$digest" ]; then
                mv "$out.part" "$out"
                return 0
            fi
            log "$label from $url does not match its pinned digest: expected $algorithm $digest, got $actual (attempt $attempt of $ATTEMPTS)"
        else
            log "$label from $url failed (attempt $attempt of $ATTEMPTS)"
        fi
        rm -f "$out.part"
        [ "$attempt" -lt "$ATTEMPTS" ] && sleep $((BACKOFF ** attempt))
    done
    return 1
}

# install_packages LABEL PACKAGE...: from the OS's own repositories, retried with backoff.
install_packages() {
    local label=$1 attempt
    shift
    for attempt in $(seq 1 "$ATTEMPTS"); do
        if apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"; then
            return 0
        fi
        log "$label: installing $* failed (attempt $attempt of $ATTEMPTS)"
        [ "$attempt" -lt "$ATTEMPTS" ] && sleep $((BACKOFF ** attempt))
    done
    fail "$label: could not install $*"
}
