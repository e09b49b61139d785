#!/usr/bin/env bash
# Pipeline step: move a service to the freshly deployed idle pool, watch it, fail the pipeline
# if the daemon had to roll back. Used as is by the README's GitHub Actions and GitLab CI
# examples and by the end-to-end test `ci_step_script_*`.
#
# Environment:
#   NEW_POOL      pool that was just deployed (required), e.g. pool-b
#   CURRENT_POOL  pool expected to be live now (required): the switch is a compare-and-swap,
#                 so two pipelines cannot both switch
#   SERVICE       service name (optional when the daemon has one service)
#   WATCH         how long the daemon watches the new pool and rolls back by itself if it turns
#                 unhealthy (default 60s)
#   WAIT          how long to wait for the first new flows on the new pool (default 30s)
#   LBCTL         lbctl binary (default: lbctl on PATH); LB_SOCKET selects the daemon's socket
#
# Exit status is lbctl's: 0 switched and healthy for the whole window; 5 refused (new pool
# unhealthy); 6 someone else switched first; 8 no traffic reached the new pool; 9 the daemon
# rolled back automatically during the watch; 3 daemon unreachable.
set -uo pipefail
: "${NEW_POOL:?set NEW_POOL to the pool to switch to}"
: "${CURRENT_POOL:?set CURRENT_POOL to the pool expected to be active}"
LBCTL="${LBCTL:-lbctl}"
args=()
if [ -n "${SERVICE:-}" ]; then args+=(--service "$SERVICE"); fi

echo "ci-switch: ${CURRENT_POOL} -> ${NEW_POOL} (watch ${WATCH:-60s})"
"$LBCTL" "${args[@]}" switch "$NEW_POOL" --expect-active "$CURRENT_POOL" \
    --watch "${WATCH:-60s}" --wait "${WAIT:-30s}"
status=$?
case $status in
    0) echo "ci-switch: ${NEW_POOL} is live and stayed healthy" ;;
    9) echo "ci-switch: ${NEW_POOL} turned unhealthy; the balancer rolled back to ${CURRENT_POOL}" >&2 ;;
    6) echo "ci-switch: another pipeline switched first; nothing changed" >&2 ;;
    5) echo "ci-switch: switch refused (see above); nothing changed" >&2 ;;
    *) echo "ci-switch: lbctl failed with status ${status}" >&2 ;;
esac
exit $status
