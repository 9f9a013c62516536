#!/bin/sh
# The coordinator image's entrypoint (also what tests/e2e/test_deployment.py runs on loopback).
#   coordinator.sh superlink                 the SuperLink: TLS, registered site keys only
#   coordinator.sh add-site NAME             make NAME's key bundle in $RETINA_PKI/sites/NAME and register it
#   coordinator.sh run [HYDRA OVERRIDES]     launch a federated run (configs from $RETINA_CONFIG_DIR)
#   coordinator.sh resume RUN_DIR [OVERRIDES]  continue a run from its last complete round
#   coordinator.sh status [--run-dir DIR]    sites online, runs, a run's last round
#   coordinator.sh pki-init HOST [HOST ...]  the federation's CA and the SuperLink's certificate
#   coordinator.sh report RUN_DIR | export RUN_DIR --out DIR
set -eu
RETINA_PKI=${RETINA_PKI:-/pki}
RETINA_STATE=${RETINA_STATE:-/state}
RETINA_HOST=${RETINA_HOST:-0.0.0.0}
RETINA_PORT=${RETINA_PORT:-9092}
RETINA_SUPERLINK=${RETINA_SUPERLINK:-localhost:$RETINA_PORT}
RETINA_CONFIG_DIR=${RETINA_CONFIG_DIR:-/config}
RETINA_RUNS=${RETINA_RUNS:-/runs}

command=${1:-superlink}
[ $# -gt 0 ] && shift
case "$command" in
  superlink)
    exec retina-server superlink --state-dir "$RETINA_STATE" --host "$RETINA_HOST" --port "$RETINA_PORT" \
      --certs-dir "$RETINA_PKI" ;;
  pki-init)
    hosts=""
    for host in "$@"; do hosts="$hosts --host $host"; done
    # shellcheck disable=SC2086 # one --host per word
    exec retina-server pki init --dir "$RETINA_PKI" $hosts ;;
  add-site)
    exec retina-server pki add-site "$1" --dir "$RETINA_PKI" --superlink "$RETINA_SUPERLINK" ;;
  run)
    exec retina-server run --superlink "$RETINA_SUPERLINK" --root-certificates "$RETINA_PKI/ca.crt" \
      --config-dir "$RETINA_CONFIG_DIR" "run_dir=$RETINA_RUNS/${RETINA_RUN_NAME:-run}" "$@" ;;
  resume)
    run_dir=$1
    shift
    exec retina-server run --superlink "$RETINA_SUPERLINK" --root-certificates "$RETINA_PKI/ca.crt" \
      --resume "$run_dir" "$@" ;;
  status)
    exec retina-server status --superlink "$RETINA_SUPERLINK" --root-certificates "$RETINA_PKI/ca.crt" "$@" ;;
  report)
    exec retina-report "$@" ;;
  export)
    exec retina-export "$@" ;;
  *)
    echo "coordinator.sh: unknown command '$command' (superlink, pki-init, add-site, run, resume, status, report, export)" >&2
    exit 2 ;;
esac
