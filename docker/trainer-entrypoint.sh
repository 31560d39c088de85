#!/bin/sh
# Create the run directory on first start (`hitl init`), then run the command (`hitl run ...`).
# HITL_RUN_DIR: the run directory (the backend serves it as MODEL_DIR); HITL_INIT_ARGS: options for `hitl init`.
set -eu
if [ ! -f "${HITL_RUN_DIR:?set HITL_RUN_DIR to the run directory}/config.json" ]; then
    # shellcheck disable=SC2086  # HITL_INIT_ARGS is a list of options, split on purpose
    hitl init "$HITL_RUN_DIR" ${HITL_INIT_ARGS:-}
fi
exec "$@"
