# shellcheck shell=bash
# Logging for the vent scripts, sourced by each with its tag (`. log.sh vent-boot`): one
# timestamped line to the log file, stderr, the console and the journal. VENT_LOG and
# VENT_CONSOLE can be moved for tests.
LOG_TAG=$1
LOG=${VENT_LOG:-/var/log/vent-boot.log}

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
